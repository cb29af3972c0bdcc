//! The operator's resident memory. Its heap grows in bursts (a relist, a tag move
//! reconciling every gateway) and glibc keeps what was freed: in one arena per thread
//! that ever allocated (up to eight per core), and at the top of each heap until trimmed.
//! Two arenas and a trim every few seconds while reconciles run keep resident memory near
//! what is live.

use std::time::Duration;

use super::metrics::Metrics;

/// glibc malloc arenas: enough that the runtime's two workers rarely wait for each other.
pub const ARENAS: i32 = 2;
/// How often [`trim_after_work`] looks for finished work.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Caps glibc's malloc arenas at [`ARENAS`]; call at start-up, before other threads exist.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Returns the allocator's free memory to the system.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no inputs.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Releases free memory while reconciles run and after: every [`TRIM_EVERY`] in which a
/// reconcile finished (a long burst, such as a tag move re-targeting 500 gateways, is
/// trimmed as it goes, which keeps the peak down). Runs until dropped.
pub async fn trim_after_work(metrics: Metrics) {
    let mut seen = metrics.reconciles_finished();
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        let now = metrics.reconciles_finished();
        if now != seen {
            seen = now;
            release_free_memory();
        }
    }
}
