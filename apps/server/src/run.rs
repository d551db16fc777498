//! What every server subcommand does while it runs: watch for signals, print statistics.

use std::time::Duration;

use iocp_server::ServerHandle;

/// Prints the statistics every `interval` seconds (with `extra`'s line, if any) until shutdown
/// starts; with `interval` 0, only waits for shutdown.
pub(crate) fn report_stats(
    handle: &ServerHandle,
    interval: u64,
    mut extra: impl FnMut() -> Option<String>,
) {
    if interval == 0 {
        while !handle.wait_for_shutdown(Duration::from_secs(3600)) {}
        return;
    }
    let mut last = handle.stats();
    while !handle.wait_for_shutdown(Duration::from_secs(interval)) {
        let now = handle.stats();
        let rate = (now.receives - last.receives) / interval;
        tracing::info!("{now} | {rate} reads/s in");
        if let Some(line) = extra() {
            tracing::info!("{line}");
        }
        last = now;
    }
}

/// SIGINT, SIGTERM and SIGHUP (Ctrl+C, Ctrl+Break and closing the console on Windows), caught
/// from the moment [`catch_signals`] returns (before the server starts, so that a signal that
/// comes early is not lost), until [`Signals::shut_down_with`] hands them to a server.
///
/// The first one starts a graceful shutdown; a second one ends the process at once, with the
/// shell's status for that signal (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP; 130 on
/// Windows). SIGHUP shuts down like SIGTERM: the server has no configuration to reload, and a
/// server whose terminal went away should stop cleanly rather than die.
pub(crate) struct Signals {
    #[cfg(unix)]
    signals: signal_hook::iterator::Signals,
    #[cfg(windows)]
    events: std::sync::mpsc::Receiver<()>,
}

/// Starts catching the signals.
#[cfg(unix)]
pub(crate) fn catch_signals() -> std::io::Result<Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    Ok(Signals {
        signals: signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?,
    })
}

/// Starts catching the console's control events (Ctrl+C, Ctrl+Break, closing the console,
/// logoff, system shutdown).
#[cfg(windows)]
pub(crate) fn catch_signals() -> std::io::Result<Signals> {
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .map_err(std::io::Error::other)?;
    Ok(Signals { events: rx })
}

#[cfg(not(any(unix, windows)))]
pub(crate) fn catch_signals() -> std::io::Result<Signals> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "no signal handling on this platform",
    ))
}

impl Signals {
    /// From now on, the first signal starts a graceful shutdown of `handle`'s server; a second
    /// one ends the process at once.
    #[cfg(unix)]
    pub(crate) fn shut_down_with(mut self, handle: ServerHandle) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut seen = false;
                for signal in self.signals.forever() {
                    let name = signal_hook::low_level::signal_name(signal).unwrap_or("signal");
                    if seen {
                        tracing::warn!("second signal ({name}): exiting now");
                        std::process::exit(128 + signal);
                    }
                    seen = true;
                    tracing::info!(
                        "{name}: shutting down (flushing for up to the linger time; a second \
                         signal exits at once)"
                    );
                    handle.shutdown();
                }
            })?;
        Ok(())
    }

    #[cfg(windows)]
    pub(crate) fn shut_down_with(self, handle: ServerHandle) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                // One Ctrl+C can arrive as two events at once (Wine delivers SIGINT both to the
                // process and through its console): a second one counts only once the first is
                // half a second old.
                let mut first: Option<std::time::Instant> = None;
                while self.events.recv().is_ok() {
                    if let Some(at) = first {
                        if at.elapsed() < std::time::Duration::from_millis(500) {
                            tracing::debug!("console event repeated: ignored");
                            continue;
                        }
                        tracing::warn!("second console event: exiting now");
                        std::process::exit(130);
                    }
                    first = Some(std::time::Instant::now());
                    tracing::info!(
                        "console event (Ctrl+C, Ctrl+Break or close): shutting down (flushing \
                         for up to the linger time; a second one exits at once)"
                    );
                    handle.shutdown();
                }
            })?;
        Ok(())
    }

    #[cfg(not(any(unix, windows)))]
    pub(crate) fn shut_down_with(self, _handle: ServerHandle) -> std::io::Result<()> {
        Ok(())
    }
}

/// Hands the caught signals to `handle`'s server, or says why there are none.
pub(crate) fn watch_signals(signals: std::io::Result<Signals>, handle: ServerHandle) {
    if let Err(e) = signals.and_then(|s| s.shut_down_with(handle)) {
        tracing::warn!("signals are not handled (shut down with the API only): {e}");
    }
}
