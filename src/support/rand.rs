//! The one source of randomness: the operating system's CSPRNG (through
//! `getrandom`). Socket ids, event `mid`s, login tokens, app secrets and VAPID
//! keys all come from here, so none of them can be predicted from another.
//! There is no fallback: [`check`] fails start-up when the OS has no CSPRNG.

use std::cell::RefCell;

/// Bytes drawn from the OS at once for the small values (socket ids, mids),
/// so the hot path makes one system call per 512 values, not one per value.
const POOL: usize = 4096;

thread_local! {
    static BUFFER: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

/// Fails when the OS cannot give random bytes (start-up refuses to run).
pub fn check() -> Result<(), String> {
    let mut probe = [0u8; 16];
    getrandom::fill(&mut probe).map_err(|e| format!("the operating system has no usable random source: {e}"))
}

/// `n` random bytes straight from the OS (secrets and tokens).
pub fn bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // check() ran at start-up; a failure now is a broken kernel, not a state to run on.
    getrandom::fill(&mut buf).expect("the OS random source failed");
    buf
}

/// A random u64 from a per-thread buffer refilled from the OS.
pub fn u64() -> u64 {
    BUFFER.with(|b| {
        let (buf, used) = &mut *b.borrow_mut();
        if buf.len() != POOL || *used + 8 > POOL {
            buf.resize(POOL, 0);
            getrandom::fill(buf).expect("the OS random source failed");
            *used = 0;
        }
        let v = u64::from_le_bytes(buf[*used..*used + 8].try_into().expect("8 bytes"));
        // Each value is handed out once: wipe it from the buffer.
        buf[*used..*used + 8].fill(0);
        *used += 8;
        v
    })
}

/// Lower-case hex of `n` random bytes (tokens, secrets).
pub fn hex_token(n: usize) -> String {
    bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// A version-4 UUID in its text form (Pushi's event `mid`).
pub fn uuid4() -> String {
    let (a, b) = (u64(), u64());
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&a.to_le_bytes());
    raw[8..].copy_from_slice(&b.to_le_bytes());
    raw[6] = (raw[6] & 0x0f) | 0x40;
    raw[8] = (raw[8] & 0x3f) | 0x80;
    let h: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_differ_and_uuids_are_version_4() {
        check().unwrap();
        let many: std::collections::HashSet<u64> = (0..2000).map(|_| u64()).collect();
        assert_eq!(many.len(), 2000);
        let id = uuid4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(bytes(32), bytes(32));
        assert_eq!(hex_token(10).len(), 20);
    }
}
