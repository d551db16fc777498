//! The budgeted read loop of the backends that read for themselves once the kernel says data is
//! there (poll: readiness; IOCP: a zero-byte `WSARecv` completed): one scratch buffer shared by
//! every connection of a port, each read lent to the callback, and a budget per connection and
//! wait, so that a fast sender cannot starve the others. A connection that spent its budget is
//! listed and read again by the next wait (no new edge or packet will say it has more).

use std::io;

use super::Completion;
use crate::config::Config;
use crate::token::Token;

/// The scratch receive buffer is at least this large, whatever `recv_buffer_size` says.
pub(crate) const MIN_SCRATCH: usize = 64 * 1024;
/// Bytes one connection may read in one wait before the others get their turn.
pub(crate) const READ_BUDGET: usize = 256 * 1024;
/// Reads one connection may do in one wait before the others get their turn.
pub(crate) const READS_PER_WAIT: u32 = 8;

/// How a read loop stopped.
pub(crate) enum ReadEnd {
    /// The socket has nothing more (`EWOULDBLOCK`).
    Drained,
    /// A read returned less than the buffer holds (only when asked to stop there).
    Short,
    /// The connection spent its budget for this wait: read it again in the next one.
    Budget,
    /// The receive is over: end of stream (`Ok`) or an error. Its final completion is the
    /// caller's to deliver ([`final_completion`]).
    Over(io::Result<()>),
}

/// The scratch buffer and the lists of connections (`T` names one) to read again.
pub(crate) struct Reader<T> {
    scratch: Box<[u8]>,
    /// Connections to read in the next wait without waiting for the kernel.
    readable: Vec<T>,
    /// The list being worked through by the current wait (kept to reuse its allocation).
    reading: Vec<T>,
}

impl<T> Reader<T> {
    pub(crate) fn new(config: &Config) -> Reader<T> {
        let len = (config.recv_buffer_size as usize).max(MIN_SCRATCH);
        Reader {
            scratch: vec![0; len].into_boxed_slice(),
            readable: Vec::new(),
            reading: Vec::new(),
        }
    }

    /// Lists a connection to read in the next wait.
    pub(crate) fn read_next_wait(&mut self, conn: T) {
        self.readable.push(conn);
    }

    /// Lists a connection to read in this wait, after the kernel's news.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn read_this_wait(&mut self, conn: T) {
        self.reading.push(conn);
    }

    /// Whether connections are listed for the next wait (which must then not block).
    pub(crate) fn has_readable(&self) -> bool {
        !self.readable.is_empty()
    }

    /// A wait begins: the connections listed for it become this wait's list.
    pub(crate) fn begin_wait(&mut self) {
        std::mem::swap(&mut self.readable, &mut self.reading);
    }

    /// This wait's list, to work through (hand it back with [`Reader::end_wait`]).
    pub(crate) fn take_this_wait(&mut self) -> Vec<T> {
        std::mem::take(&mut self.reading)
    }

    /// Hands back the (emptied) list taken by [`Reader::take_this_wait`].
    pub(crate) fn end_wait(&mut self, list: Vec<T>) {
        debug_assert!(list.is_empty());
        self.reading = list;
    }

    /// Reads with `recv` until the socket has nothing more, a short read (with `stop_at_short`),
    /// the end of stream, an error, or the budget; each read is lent to `sink` as
    /// `Recv { more: true }` for `token`.
    pub(crate) fn read(
        &mut self,
        token: Token,
        stop_at_short: bool,
        mut recv: impl FnMut(&mut [u8]) -> io::Result<usize>,
        sink: &mut dyn FnMut(Completion<'_>),
    ) -> ReadEnd {
        let mut budget = READ_BUDGET;
        let mut reads = 0;
        loop {
            if reads == READS_PER_WAIT || budget == 0 {
                return ReadEnd::Budget;
            }
            match recv(&mut self.scratch) {
                Ok(0) => return ReadEnd::Over(Ok(())),
                Ok(n) => {
                    reads += 1;
                    budget = budget.saturating_sub(n);
                    sink(Completion::Recv {
                        token,
                        result: Ok(&self.scratch[..n]),
                        more: true,
                    });
                    if stop_at_short && n < self.scratch.len() {
                        return ReadEnd::Short;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ReadEnd::Over(Err(e)),
            }
        }
    }
}

/// The final completion of a receive that is over: end of stream (`Ok`, no data) or an error.
pub(crate) fn final_completion(token: Token, result: io::Result<()>) -> Completion<'static> {
    Completion::Recv {
        token,
        result: result.map(|()| &[][..]),
        more: false,
    }
}
