//! A worker's queue of commands from other threads, and the wake-up that goes with it (the
//! seed's `PostQueuedCompletionStatus`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use iocp_driver::Waker;
use socket2::Socket;

use crate::session::{CloseReason, SessionId};

/// Work handed to a worker by another thread.
pub(crate) enum Command {
    Send(SessionId, Bytes),
    Close(SessionId, CloseReason),
    /// A connection accepted by another worker, for a slot of this one.
    Adopt(u32, Socket),
    Broadcast(Bytes),
    Shutdown,
}

/// A worker's queue of [`Command`]s.
pub(crate) struct Inbox {
    queue: Mutex<Vec<Command>>,
    /// A wake-up is pending: later pushes need not wake again.
    notified: AtomicBool,
    waker: OnceLock<Waker>,
}

impl Inbox {
    pub(crate) fn new() -> Inbox {
        Inbox {
            queue: Mutex::new(Vec::new()),
            notified: AtomicBool::new(false),
            waker: OnceLock::new(),
        }
    }

    /// Sets the worker's wake-up, and wakes it once: a command pushed before the waker existed
    /// woke nobody, and the worker must not wait for it.
    pub(crate) fn set_waker(&self, waker: Waker) {
        let _ = self.waker.set(waker);
        self.wake();
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.get() {
            if let Err(e) = waker.wake() {
                tracing::error!("waking a worker failed: {e}");
            }
        }
    }

    pub(crate) fn push(&self, command: Command) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(command);
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.wake();
        }
    }

    /// Moves the queued commands into `out` (which should be empty). Cheap when nothing is queued.
    pub(crate) fn take(&self, out: &mut Vec<Command>) {
        if self.notified.swap(false, Ordering::AcqRel) {
            std::mem::swap(
                &mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()),
                out,
            );
        }
    }
}
