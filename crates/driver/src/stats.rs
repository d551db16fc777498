//! Counters of what the driver did that its owner does not see in the events: receives re-armed
//! because the buffers ran out, completion-queue overflows, partial sends, accept back-offs, and
//! what the send queues hold.

/// A driver's counters since it started ([`crate::Driver::stats`]). The driver's own thread
/// keeps them in plain integers; its owner copies them out when it likes (once per turn, say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Receives that ended because the backend's receive buffers ran out (io_uring's provided
    /// buffer ring: `ENOBUFS`) and were armed again. Often means the ring is too small for the
    /// connections that receive at once.
    pub recv_out_of_buffers: u64,
    /// Waits that found the kernel's completion queue overflowed (io_uring: the kernel held
    /// completions back, or refused submissions with `EBUSY`, until the queue was drained).
    /// Always 0 on the other backends.
    pub cq_overflows: u64,
    /// Sends the kernel took only part of (fewer bytes than offered; a readiness backend's
    /// "wait for room", which takes none, is not counted): the socket's buffer was full, so the
    /// peer reads slower than the server writes.
    pub partial_sends: u64,
    /// Times accepting paused and backed off after an error (out of descriptors or memory).
    pub accept_backoffs: u64,
    /// Messages (queued buffers) the kernel has taken completely.
    pub messages_sent: u64,
    /// Bytes in the send queues now, the part in flight included.
    pub send_queue_bytes: u64,
}
