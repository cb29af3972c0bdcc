//! The health and metrics endpoints: `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// Something readiness depends on: why it is not ready, one line per problem.
pub trait Check: Send + Sync {
    /// The problems at `now`; none when all is well.
    fn problems(&self, now: std::time::Instant) -> Vec<String>;
}

/// Shared health: a flag the process sets, and what else it depends on (its watches, its
/// reconciles).
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    checks: Vec<Arc<dyn Check>>,
}

impl Health {
    /// Health that also requires every check to have no problem.
    pub fn checking(checks: Vec<Arc<dyn Check>>) -> Health {
        Health {
            ready: AtomicBool::new(false),
            checks,
        }
    }

    /// Marks the process ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// What the endpoints read.
#[derive(Clone)]
pub struct HttpState {
    /// Health flags.
    pub health: Arc<Health>,
    /// Renders the metrics in Prometheus text format.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

async fn healthz() -> &'static str {
    "ok"
}

/// 200 when the process is ready and every watch flows; otherwise 503 saying why.
async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if !s.health.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready".to_string());
    }
    let now = std::time::Instant::now();
    let problems: Vec<String> = s.health.checks.iter().flat_map(|c| c.problems(now)).collect();
    if problems.is_empty() {
        (StatusCode::OK, "ok".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", problems.join("; ")),
        )
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        (s.metrics)(),
    )
}

/// The router with every endpoint.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/ready", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Binds `addr` and serves until `shutdown` resolves. Returns the bound address (useful with
/// port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((bound, task))
}
