//! One warning a second for closes caused by bad input: a flood of bad connections must not
//! flood the log (3,000 of them wrote 300 KiB in under a second). The lines in between go to the
//! debug level, and the next warning says how many there were.

use std::fmt::Display;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iocp_server::SessionId;

const INTERVAL: Duration = Duration::from_secs(1);

static START: OnceLock<Instant> = OnceLock::new();
/// When the last warning was written, in ms since `START` (plus one; 0: never).
static LAST: AtomicU64 = AtomicU64::new(0);
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Logs that `session` is closed for `why`: a warning at most once a second, else at debug.
pub(crate) fn closing(session: SessionId, why: &dyn Display) {
    let now = START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
    let last = LAST.load(Ordering::Relaxed);
    let due = last == 0 || now.saturating_sub(last) >= INTERVAL.as_millis() as u64;
    if due
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        match SUPPRESSED.swap(0, Ordering::Relaxed) {
            0 => tracing::warn!("session {session}: {why}: closing it"),
            n => tracing::warn!(
                "session {session}: {why}: closing it ({n} more closed for bad input in the \
                 last second, logged at debug level)"
            ),
        }
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("session {session}: {why}: closing it");
    }
}
