//! A connection's outgoing bytes: shared pre-encoded frames, written with one
//! `writev` per batch. Empty (no allocation) while the connection is idle.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use crate::outbox::SharedFrame;

/// How many frames one `writev` call gathers.
const MAX_IOVECS: usize = 64;

/// Frames waiting to be written, oldest first.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<SharedFrame>,
    /// Bytes of the front frame already written.
    written: usize,
    /// Bytes still to write, across all frames.
    pending: usize,
}

impl OutQueue {
    /// Appends a frame (shared, not copied).
    pub fn push(&mut self, frame: SharedFrame) {
        self.pending += frame.len();
        self.frames.push_back(frame);
    }

    /// Bytes still to write.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Drops everything queued and frees the queue's memory.
    pub fn clear(&mut self) {
        *self = OutQueue::default();
    }

    /// Writes until the queue is empty or the socket would block; returns the
    /// bytes written. `WouldBlock` is not an error: the rest waits for WRITABLE.
    pub fn flush(&mut self, sink: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while !self.frames.is_empty() {
            let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, frame) in self.frames.iter().take(MAX_IOVECS).enumerate() {
                slices[i] = IoSlice::new(if i == 0 { &frame[self.written..] } else { frame });
                count += 1;
            }
            let n = match sink.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += n;
            self.advance(n);
        }
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            // Idle connections hold no queue memory.
            self.frames = VecDeque::new();
        }
        Ok(total)
    }

    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            let left = self.frames[0].len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.frames.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// A sink that accepts at most `budget` bytes per call, then would block once.
    struct Trickle {
        got: Vec<u8>,
        budget: usize,
        block_next: bool,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.block_next {
                self.block_next = false;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.block_next = true;
            let n = buf.len().min(self.budget);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = OutQueue::default();
        let shared: SharedFrame = Rc::from(&b"hello "[..]);
        q.push(shared.clone());
        q.push(Rc::from(&b"world"[..]));
        q.push(shared);
        assert_eq!(q.pending(), 17);
        let mut sink = Trickle { got: Vec::new(), budget: 4, block_next: false };
        let mut rounds = 0;
        while !q.is_empty() {
            q.flush(&mut sink).unwrap();
            rounds += 1;
            assert!(rounds < 100);
        }
        assert_eq!(sink.got, b"hello worldhello ");
        assert_eq!(q.frames.capacity(), 0, "empty queue releases its memory");
    }
}
