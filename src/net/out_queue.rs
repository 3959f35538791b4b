//! A connection's outgoing bytes: shared pre-encoded frames, written with one
//! `writev` per batch. Empty (no allocation) while the connection is idle.
//!
//! One frame at a time may be queued as an *exempt* reply (a reply larger
//! than the high-water mark, e.g. a big history page): it is sent whole and
//! does not count as backlog; only what else piles up behind or before it does.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use crate::outbox::SharedFrame;

/// How many frames one `writev` call gathers.
const MAX_IOVECS: usize = 64;

/// Frames waiting to be written, oldest first.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<SharedFrame>,
    /// Bytes of the front frame already written (u32 keeps idle connections
    /// small; no frame comes near 4 GiB: replies are bounded by their pages).
    written: u32,
    /// Bytes still to write, across all frames.
    pending: usize,
    /// Unwritten bytes of the one exempt frame in the queue (0: none).
    /// u32 keeps idle connections small; a larger frame is never exempt.
    exempt: u32,
    /// Frames ahead of the exempt frame (it is at the front when 0).
    exempt_ahead: u32,
}

impl OutQueue {
    /// Appends a frame (shared, not copied).
    pub fn push(&mut self, frame: SharedFrame) {
        self.pending += frame.len();
        self.frames.push_back(frame);
    }

    /// Appends a frame that does not count as backlog while it is written
    /// (one at a time: returns false, queueing nothing, if one is already queued).
    pub fn push_exempt(&mut self, frame: SharedFrame) -> bool {
        if self.exempt > 0
            || frame.is_empty()
            || frame.len() > u32::MAX as usize
            || self.frames.len() > u32::MAX as usize
        {
            return false;
        }
        self.exempt = frame.len() as u32;
        self.exempt_ahead = self.frames.len() as u32;
        self.push(frame);
        true
    }

    /// Whether an exempt frame is still (partly) unwritten.
    #[cfg(test)]
    pub fn has_exempt(&self) -> bool {
        self.exempt > 0
    }

    /// Bytes still to write.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Bytes still to write, not counting the exempt frame: what the peer is
    /// failing to read, compared with the high-water mark.
    pub fn backlog(&self) -> usize {
        self.pending - self.exempt as usize
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
                slices[i] = IoSlice::new(if i == 0 { &frame[self.written as usize..] } else { frame });
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
            let left = self.frames[0].len() - self.written as usize;
            let front_exempt = self.exempt > 0 && self.exempt_ahead == 0;
            if n < left {
                self.written += n as u32;
                if front_exempt {
                    self.exempt -= n as u32;
                }
                return;
            }
            n -= left;
            self.written = 0;
            self.frames.pop_front();
            if front_exempt {
                self.exempt = 0;
            } else if self.exempt > 0 {
                self.exempt_ahead -= 1;
            }
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

    #[test]
    fn exempt_frame_is_not_backlog_until_written() {
        let mut q = OutQueue::default();
        q.push(Rc::from(&b"ab"[..]));
        assert!(q.push_exempt(Rc::from(&[7u8; 10][..])));
        assert!(!q.push_exempt(Rc::from(&[8u8; 10][..])), "one exempt frame at a time");
        q.push(Rc::from(&b"cde"[..]));
        assert_eq!((q.pending(), q.backlog()), (15, 5));
        let mut sink = Trickle { got: Vec::new(), budget: 4, block_next: false };
        q.flush(&mut sink).unwrap(); // "ab" (one slice per write here)
        assert_eq!((q.pending(), q.backlog()), (13, 3));
        q.flush(&mut sink).unwrap(); // 4 bytes of the exempt frame
        assert_eq!((q.pending(), q.backlog()), (9, 3));
        while !q.is_empty() {
            q.flush(&mut sink).unwrap();
            assert_eq!(q.backlog(), q.pending().min(3));
        }
        assert!(!q.has_exempt());
        assert!(q.push_exempt(Rc::from(&b"again"[..])), "the next exempt frame is allowed once it is out");
        assert_eq!(q.backlog(), 0);
    }
}
