//! Handing freed heap memory back to the operating system. glibc's malloc
//! keeps freed pages of its arenas for reuse, so after a burst (thousands of
//! channels created and freed) the process's RSS would stay at its peak;
//! `malloc_trim` releases them. A no-op elsewhere.

/// Releases free heap pages to the OS (glibc); costs a walk of the free lists,
/// so callers do it rarely, after large frees.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only inspects and releases the allocator's own
        // free memory; it takes no pointers and is thread-safe in glibc.
        unsafe {
            malloc_trim(0);
        }
    }
}
