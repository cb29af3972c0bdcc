//! Process signals: the one way every long-running command learns that it should stop.

/// Resolves when the process is asked to stop: SIGTERM (what Kubernetes sends) or Ctrl-C.
/// Where SIGTERM cannot be watched (or off unix), Ctrl-C alone.
pub async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
