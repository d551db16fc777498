//! The readiness backend: `epoll` (Linux) or `kqueue` (macOS, the BSDs) through `mio`, turned into
//! the completions of the contract.
//!
//! A readiness API says "you may now read"; a completion port says "here is what was read". This
//! backend does the I/O itself when the poller reports readiness, and hands back the results:
//!
//! - **accept**: the listener is registered for reading; on each edge (and at once when armed, as
//!   a connection may already be waiting) `accept4` runs until `EAGAIN`, at most
//!   [`ACCEPTS_PER_WAIT`] per wait. `EMFILE`, `ENFILE`, `ENOBUFS` and `ENOMEM` end the accept
//!   (`more == false`) so that the owner backs off.
//! - **receive**: the socket is registered for reading; on each edge `recv` runs into one scratch
//!   buffer shared by every connection, so an idle connection holds no buffer. Each read is
//!   lent to the callback as `Recv { more: true }`; end of stream and errors end the receive. A
//!   connection reads at most `READ_BUDGET` bytes per wait, then waits its turn (the loop is
//!   shared with the IOCP backend: `sys/reader.rs`).
//! - **send**: `sendmsg` runs at once, in [`Port::send`](super::Port::send); its result is queued
//!   and delivered by the next wait. When the socket takes nothing, the socket is watched for
//!   writing and the send completes with 0 bytes when it is writable; the owner sends again.
//! - **cancel**: stops watching, and completes the operation with `ECANCELED`.
//!
//! The poller is edge-triggered, as `mio` is: readiness is reported once per change, so a
//! connection that stopped reading before `EAGAIN` (its budget ran out) is kept in a list and
//! read again by the next wait, which then does not block.

mod net;
mod slot;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Registry};

use super::reader::{ReadEnd, Reader, final_completion};
use super::{Completion, Raw, WakeInner, Waker};
use crate::config::Config;
use crate::token::{Op, Token};
use slot::{LISTENER, SendState, Slot, WAKER};

/// Connections accepted in one wait before the connections already open get their turn.
const ACCEPTS_PER_WAIT: u32 = 128;
/// Readiness events taken from the poller in one wait.
const EVENTS: usize = 1024;

/// The readiness port of one worker thread.
pub(crate) struct Port {
    poll: mio::Poll,
    events: Events,
    waker: Arc<PollWaker>,
    state: State,
}

/// Everything but the poller, so that it can be borrowed while the poller's events are read.
struct State {
    slots: Box<[Slot]>,
    /// The receive buffer of every connection, and the receives to read again without waiting
    /// for an edge (just armed, or stopped by the budget).
    /// Completions produced outside a wait (by `send` and `cancel`), delivered by the next one.
    ready: VecDeque<Completion<'static>>,
    reader: Reader<Token>,
    listener: Listener,
}

/// The accept.
struct Listener {
    fd: Raw,
    /// An accept is armed: its final completion has not been produced.
    armed: bool,
    /// The listener is registered with the poller.
    registered: bool,
    /// Connections may be waiting: accept without waiting for an edge.
    ready: bool,
}

impl Port {
    /// Creates the poller, its waker and the slot table of `config.capacity` connections.
    pub(crate) fn new(config: &Config) -> io::Result<Port> {
        let poll = mio::Poll::new()?;
        let waker = Arc::new(PollWaker(mio::Waker::new(poll.registry(), WAKER)?));
        Ok(Port {
            poll,
            events: Events::with_capacity(EVENTS),
            waker,
            state: State {
                slots: (0..config.capacity).map(|_| Slot::default()).collect(),
                reader: Reader::new(config),
                ready: VecDeque::new(),
                listener: Listener {
                    fd: -1,
                    armed: false,
                    registered: false,
                    ready: false,
                },
            },
        })
    }
}

// SAFETY: see the module documentation and the comments at each operation: every operation
// completes once through `wait`, sends read the caller's bytes only until their completion, and
// receive buffers are kept (or leaked) while the kernel may write them.
unsafe impl super::Port for Port {
    fn accept(&mut self, listener: &socket2::Socket) {
        let listener = super::raw(listener);
        let registry = self.poll.registry();
        let l = &mut self.state.listener;
        if l.registered && l.fd != listener {
            deregister(registry, l.fd);
            l.registered = false;
        }
        l.fd = listener;
        if !l.registered {
            let registered = net::set_nonblocking(listener).and_then(|()| {
                registry.register(&mut SourceFd(&listener), LISTENER, Interest::READABLE)
            });
            if let Err(e) = registered {
                self.state.ready.push_back(Completion::Accept {
                    result: Err(e),
                    more: false,
                });
                return;
            }
            l.registered = true;
        }
        l.armed = true;
        // A connection may be waiting already, and its edge came before the registration (or
        // while accepting was paused).
        l.ready = true;
    }

    fn cancel_accept(&mut self) {
        let l = &mut self.state.listener;
        if !l.armed {
            return;
        }
        l.disarm(self.poll.registry());
        self.state.ready.push_back(Completion::Accept {
            result: canceled(),
            more: false,
        });
    }

    fn recv(&mut self, fd: Raw, token: Token) {
        let index = token.conn().index as usize;
        let slot = &mut self.state.slots[index];
        slot.open(fd, token.conn().generation);
        debug_assert!(!slot.recv, "receive armed twice");
        slot.recv = true;
        if let Err(e) = slot.sync(self.poll.registry(), index) {
            slot.recv = false;
            self.state.ready.push_back(Completion::Recv {
                token,
                result: Err(e),
                more: false,
            });
            return;
        }
        // Data may have arrived before the registration: its edge is gone, so read at once.
        slot.drain = true;
        if !slot.listed {
            slot.listed = true;
            self.state.reader.read_next_wait(token);
        }
    }

    unsafe fn send(&mut self, fd: Raw, token: Token, bufs: &[IoSlice<'_>]) {
        let index = token.conn().index as usize;
        let slot = &mut self.state.slots[index];
        slot.open(fd, token.conn().generation);
        debug_assert_eq!(slot.send, SendState::Idle, "two sends at once");
        // The slices are used during this call only: the completion reports a count, and a send
        // that has to wait for room completes with 0 so that the owner submits again.
        let result = if slot.no_sigpipe {
            Ok(())
        } else {
            net::no_sigpipe(fd).map(|()| slot.no_sigpipe = true)
        }
        .and_then(|()| {
            loop {
                match net::send(fd, bufs) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            }
        });
        match result {
            Ok(0) => {}
            Err(ref e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(_) | Err(_) => {
                slot.send = SendState::Queued;
                self.state
                    .ready
                    .push_back(Completion::Send { token, result });
                return;
            }
        }
        #[cfg(test)]
        tests::count_send_would_block();
        // The socket is full: watch it for writing.
        slot.send = SendState::Waiting;
        if let Err(e) = slot.sync(self.poll.registry(), index) {
            slot.send = SendState::Queued;
            self.state.ready.push_back(Completion::Send {
                token,
                result: Err(e),
            });
        }
    }

    fn cancel(&mut self, fd: Raw, token: Token) {
        let index = token.conn().index as usize;
        let Some(slot) = self.state.slots.get_mut(index) else {
            return;
        };
        if !slot.is(fd, token) {
            return;
        }
        let completion = match token.op() {
            Some(Op::Recv) if slot.recv => {
                slot.recv = false;
                Completion::Recv {
                    token,
                    result: canceled(),
                    more: false,
                }
            }
            Some(Op::Send) if slot.send == SendState::Waiting => {
                slot.send = SendState::Queued;
                Completion::Send {
                    token,
                    result: canceled(),
                }
            }
            // Already complete: its completion is queued or delivered.
            _ => return,
        };
        if let Err(e) = slot.sync(self.poll.registry(), index) {
            tracing::debug!(fd, error = %e, "poll: cannot stop watching a cancelled operation");
        }
        self.state.ready.push_back(completion);
    }

    fn leak_buffers(&mut self) {
        // Nothing to leak: the kernel never holds a buffer of this backend between calls (reads
        // and writes happen inside `wait` and `send`, into memory borrowed for the call).
    }

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        sink: &mut dyn FnMut(Completion<'_>),
    ) -> io::Result<()> {
        let Port {
            poll,
            events,
            state,
            ..
        } = self;
        let delivered = state.deliver_ready(sink);
        let busy = delivered
            || state.reader.has_readable()
            || (state.listener.armed && state.listener.ready);
        let timeout = if busy { Some(Duration::ZERO) } else { timeout };
        match poll.poll(events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(),
            Err(e) => return Err(e),
        }
        let registry = poll.registry();
        // Connections left over from the last wait are read after the new events, in one pass
        // each; those that run out of budget again go back to `readable`.
        state.reader.begin_wait();
        for event in events.iter() {
            match event.token() {
                WAKER => sink(Completion::Wake),
                LISTENER => state.listener.ready = true,
                token => state.on_event(registry, token, event, sink),
            }
        }
        if state.listener.armed && state.listener.ready {
            state.accept(registry, sink);
        }
        let mut reading = state.reader.take_this_wait();
        for token in reading.drain(..) {
            let index = token.conn().index as usize;
            let slot = &mut state.slots[index];
            if slot.generation != token.conn().generation || !slot.listed {
                continue;
            }
            slot.listed = false;
            if slot.recv {
                state.read(registry, index, sink);
            }
        }
        state.reader.end_wait(reading);
        Ok(())
    }

    fn waker(&self) -> Waker {
        Waker::new(self.waker.clone())
    }
}

impl State {
    /// Hands over the completions queued by `send` and `cancel`. Returns whether there were any.
    fn deliver_ready(&mut self, sink: &mut dyn FnMut(Completion<'_>)) -> bool {
        let any = !self.ready.is_empty();
        while let Some(completion) = self.ready.pop_front() {
            if let Completion::Send { token, .. } = &completion {
                let id = token.conn();
                let slot = &mut self.slots[id.index as usize];
                if slot.generation == id.generation && slot.send == SendState::Queued {
                    slot.send = SendState::Idle;
                }
            }
            sink(completion);
        }
        any
    }

    /// Turns one readiness event of a connection into reads and send completions.
    fn on_event(
        &mut self,
        registry: &Registry,
        token: mio::Token,
        event: &mio::event::Event,
        sink: &mut dyn FnMut(Completion<'_>),
    ) {
        let index = slot::token_index(token);
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if slot::conn_token(index, slot.generation) != token || slot.interest.is_none() {
            // The connection it was for is gone.
            return;
        }
        let failed = event.is_error();
        if slot.recv && (event.is_readable() || event.is_read_closed() || failed) {
            if event.is_read_closed() || failed {
                slot.drain = true;
            }
            // A listed slot is read later in this wait, once.
            if !slot.listed {
                self.read(registry, index, sink);
            }
        }
        let slot = &mut self.slots[index];
        if slot.send == SendState::Waiting
            && (event.is_writable() || event.is_write_closed() || failed)
        {
            // Room again (or an error, which the next send reports).
            slot.send = SendState::Idle;
            if let Err(e) = slot.sync(registry, index) {
                tracing::debug!(fd = slot.fd, error = %e, "poll: cannot stop watching for writing");
            }
            sink(Completion::Send {
                token: slot.token(Op::Send, index),
                result: Ok(0),
            });
        }
    }

    /// Reads connection `index` until `EAGAIN`, the end of stream, an error or its budget.
    fn read(&mut self, registry: &Registry, index: usize, sink: &mut dyn FnMut(Completion<'_>)) {
        let slot = &mut self.slots[index];
        let token = slot.token(Op::Recv, index);
        let fd = slot.fd;
        // A short read emptied the socket: what comes next raises a new edge. Only the end of
        // stream or an error after data would raise none, so read on to `EAGAIN` then.
        let stop_at_short = !slot.drain;
        match self
            .reader
            .read(token, stop_at_short, |buf| net::recv(fd, buf), sink)
        {
            ReadEnd::Short => {}
            ReadEnd::Drained => slot.drain = false,
            ReadEnd::Budget => {
                // More may be waiting, and no new edge will say so: come back next wait.
                #[cfg(test)]
                tests::count_read_budget_spent();
                slot.listed = true;
                self.reader.read_next_wait(token);
            }
            ReadEnd::Over(result) => {
                // Stop watching before the owner, told so, may close the socket.
                slot.recv = false;
                slot.drain = false;
                if let Err(e) = slot.sync(registry, index) {
                    tracing::debug!(fd, error = %e, "poll: cannot stop watching for reading");
                }
                sink(final_completion(token, result));
            }
        }
    }

    /// Accepts waiting connections until `EAGAIN`, a shortage or the budget.
    fn accept(&mut self, registry: &Registry, sink: &mut dyn FnMut(Completion<'_>)) {
        for _ in 0..ACCEPTS_PER_WAIT {
            match net::accept(self.listener.fd) {
                Ok(socket) => sink(Completion::Accept {
                    result: Ok(socket),
                    more: true,
                }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener.ready = false;
                    return;
                }
                Err(e) => match e.raw_os_error() {
                    // The connection went away before we took it, or a signal came: next one.
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM) => {}
                    // Out of descriptors or memory: end the accept, the owner backs off and
                    // arms it again.
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        self.listener.disarm(registry);
                        sink(Completion::Accept {
                            result: Err(e),
                            more: false,
                        });
                        return;
                    }
                    // Anything else is reported, and accepting goes on at the next edge rather
                    // than spinning on the error.
                    _ => {
                        self.listener.ready = false;
                        sink(Completion::Accept {
                            result: Err(e),
                            more: true,
                        });
                        return;
                    }
                },
            }
        }
        // Budget spent with connections maybe still waiting: `ready` stays set, and the next wait
        // accepts again without blocking.
    }
}

impl Listener {
    /// Ends the accept: the listener is no longer watched (the owner may close it after the
    /// final completion).
    fn disarm(&mut self, registry: &Registry) {
        if self.registered {
            deregister(registry, self.fd);
            self.registered = false;
        }
        self.armed = false;
        self.ready = false;
    }
}

/// The result of a cancelled operation.
fn canceled<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::ECANCELED))
}

/// Stops watching `fd`; failures are logged only (the descriptor is about to be closed, which
/// also removes it from the poller).
fn deregister(registry: &Registry, fd: Raw) {
    if let Err(e) = registry.deregister(&mut SourceFd(&fd)) {
        tracing::debug!(fd, error = %e, "poll: deregister failed");
    }
}

/// [`Waker`] of the readiness backend.
struct PollWaker(mio::Waker);

impl WakeInner for PollWaker {
    fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}
