//! The bytes a connection still has to send, in order, owned until the kernel is done with them.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

/// At most this many queued messages are gathered into one send.
pub(crate) const MAX_IOVECS: usize = 64;

/// A send completion reported more bytes than the connection had queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Overrun {
    pub(crate) sent: usize,
    pub(crate) queued: usize,
}

impl std::fmt::Display for Overrun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a send completed {} bytes with {} queued",
            self.sent, self.queued
        )
    }
}

/// A connection's outgoing messages.
///
/// The front message may be partly sent (`head` bytes of it). While a send is in flight the
/// kernel reads the first messages in place: they are only dropped by [`SendQueue::advance`], which
/// the driver calls from that send's completion.
#[derive(Default)]
pub(crate) struct SendQueue {
    chunks: VecDeque<Bytes>,
    head: usize,
    queued: usize,
}

impl SendQueue {
    /// Bytes not yet sent, the part in flight included.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.queued
    }

    /// Messages not yet sent completely.
    #[inline]
    pub(crate) fn messages(&self) -> usize {
        self.chunks.len()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.queued == 0
    }

    #[inline]
    pub(crate) fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.queued += bytes.len();
            self.chunks.push_back(bytes);
        }
    }

    /// The unsent bytes as up to [`MAX_IOVECS`] slices, the front one starting where the last send
    /// stopped.
    pub(crate) fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
            let start = if i == 0 { self.head } else { 0 };
            out[i] = IoSlice::new(&chunk[start..]);
            n += 1;
        }
        n
    }

    /// Drops what the kernel has sent: `n` bytes from the front.
    ///
    /// A count larger than what is queued cannot come from a send of this queue's slices: it
    /// means a completion was matched to the wrong connection. That is checked in every build
    /// and reported, with the queue left as it was, so that the caller can close the connection
    /// rather than go on sending the wrong bytes.
    pub(crate) fn advance(&mut self, mut n: usize) -> Result<(), Overrun> {
        if n > self.queued {
            return Err(Overrun {
                sent: n,
                queued: self.queued,
            });
        }
        self.queued -= n;
        while n > 0 {
            // `queued` is the sum of the chunks past `head`, so a chunk is left while `n > 0`.
            let Some(front) = self.chunks.front() else {
                let queued = std::mem::take(&mut self.queued);
                return Err(Overrun { sent: n, queued });
            };
            let left = front.len() - self.head;
            if n < left {
                self.head += n;
                return Ok(());
            }
            n -= left;
            self.head = 0;
            self.chunks.pop_front();
        }
        Ok(())
    }

    /// Drops everything. Only when no send is in flight.
    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.head = 0;
        self.queued = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered(q: &SendQueue) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let n = q.slices(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn partial_sends_resume_where_they_stopped() {
        let mut q = SendQueue::default();
        q.push(Bytes::from_static(b"hello "));
        q.push(Bytes::new());
        q.push(Bytes::from_static(b"world"));
        assert_eq!(q.len(), 11);
        assert_eq!(gathered(&q), b"hello world");
        q.advance(3).unwrap();
        assert_eq!(gathered(&q), b"lo world");
        q.advance(3).unwrap();
        assert_eq!(gathered(&q), b"world");
        q.advance(5).unwrap();
        assert!(q.is_empty());
        assert_eq!(gathered(&q), b"");
    }

    #[test]
    fn gathers_at_most_max_iovecs() {
        let mut q = SendQueue::default();
        for i in 0..(MAX_IOVECS + 10) {
            q.push(Bytes::from(vec![i as u8; 2]));
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        assert_eq!(q.slices(&mut slices), MAX_IOVECS);
        q.advance(2 * MAX_IOVECS + 1).unwrap();
        assert_eq!(q.len(), 19);
        assert_eq!(gathered(&q)[0], MAX_IOVECS as u8);
    }

    #[test]
    fn advancing_past_the_end_is_refused_and_changes_nothing() {
        let mut q = SendQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.advance(1).unwrap();
        assert_eq!(q.advance(3), Err(Overrun { sent: 3, queued: 2 }));
        assert_eq!(q.len(), 2);
        assert_eq!(gathered(&q), b"bc");
        q.advance(2).unwrap();
        assert_eq!(q.advance(1), Err(Overrun { sent: 1, queued: 0 }));
    }
}
