//! The process's stop signals: SIGINT, SIGTERM and SIGHUP.
//!
//! [`Signals::install`] replaces their default dispositions first thing, so
//! a signal at any point of a run (a standby's wait, the lookup load, the
//! pipeline itself) takes the graceful path instead of killing the process.
//! Whoever is running at that moment awaits [`Signals::received`].

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// The stop signals of the process: received once, awaited by whoever is
/// running at that moment (the start-up, the standby's wait, the
/// supervisor).
#[derive(Clone, Default)]
pub struct Signals {
    received: CancellationToken,
    name: Arc<OnceLock<&'static str>>,
}

impl Signals {
    /// Installs the handlers now (replacing the default dispositions) and
    /// listens on the current runtime.
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let signals = Signals::default();
        let notify = signals.clone();
        actix_rt::spawn(async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
                _ = hangup.recv() => "SIGHUP",
            };
            let _ = notify.name.set(name);
            notify.received.cancel();
        });
        Ok(signals)
    }

    /// Resolves with the signal's name once one arrived.
    pub async fn received(&self) -> &'static str {
        self.received.cancelled().await;
        self.name.get().copied().unwrap_or("signal")
    }

    pub fn has_arrived(&self) -> bool {
        self.received.is_cancelled()
    }
}
