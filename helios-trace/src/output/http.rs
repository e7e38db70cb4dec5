//! The exporter's HTTP side (ARCHITECTURE.md, "Contracts: HTTP"): `GET /metrics`, `/healthz`,
//! `/sites` and `/flamegraph.svg`, nothing else, and no attack surface: at most
//! [`ServerLimits::max_connections`] connections at a time (more are closed at once), one
//! request per connection, request headers bounded in size and in the time they may take to
//! arrive, every connection cut after [`ServerLimits::connection_timeout`] (a client that does
//! not read its response cannot hold one), and requests with a body refused.
//!
//! Handlers never touch the tracer: the tracing loop publishes a [`Snapshot`] once a second
//! and a request reads the last one, rendering it on first use. A scrape therefore never
//! blocks event processing, and concurrent scrapes of one snapshot render it once.
use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use log::{debug, warn};
use tokio::{net::TcpListener, sync::Semaphore, sync::watch};

use crate::output::{
    flamegraph,
    metrics::{
        aggregate::{Exported, SiteFrames},
        exposition::{self, SelfMetrics},
    },
};

#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerLimits {
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub(crate) max_connections: usize,
    /// Request line and headers must arrive within this.
    pub(crate) header_read_timeout: Duration,
    /// Request line and headers may not exceed this (hyper answers 431 beyond it).
    pub(crate) max_header_bytes: usize,
    /// A connection is closed after this, whatever it is doing.
    pub(crate) connection_timeout: Duration,
    /// /healthz fails when the tracing loop has published nothing for this long.
    pub(crate) stale_after: Duration,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            max_connections: 16,
            header_read_timeout: Duration::from_secs(5),
            // The smallest buffer hyper accepts; a scrape request is a few hundred bytes.
            max_header_bytes: 8192,
            connection_timeout: Duration::from_secs(30),
            stale_after: Duration::from_secs(30),
        }
    }
}

/// One published state of the exporter.
#[derive(Debug)]
pub(crate) struct Snapshot {
    exported: Exported,
    own: SelfMetrics,
    taken: Instant,
    metrics_text: OnceLock<Result<Bytes, String>>,
    sites_json: OnceLock<Bytes>,
    flamegraph_svg: OnceLock<Result<Bytes, String>>,
}

impl Snapshot {
    pub(crate) fn new(exported: Exported, own: SelfMetrics, taken: Instant) -> Snapshot {
        Snapshot {
            exported,
            own,
            taken,
            metrics_text: OnceLock::new(),
            sites_json: OnceLock::new(),
            flamegraph_svg: OnceLock::new(),
        }
    }

    /// The text exposition of this snapshot, rendered once.
    pub(crate) fn metrics_text(&self) -> Result<Bytes, String> {
        self.metrics_text
            .get_or_init(|| {
                let registry = exposition::registry(&self.exported, &self.own).map_err(|e| e.to_string())?;
                exposition::render(&registry).map(Bytes::from).map_err(|e| e.to_string())
            })
            .clone()
    }

    /// `{"sites": [{"site", "frame", "frames": [...]}, ...]}`: every exported site.
    pub(crate) fn sites_json(&self) -> Bytes {
        #[derive(serde::Serialize)]
        struct Sites<'a> {
            sites: Vec<&'a SiteFrames>,
        }
        self.sites_json
            .get_or_init(|| {
                let sites = Sites { sites: self.exported.sites.values().collect() };
                Bytes::from(serde_json::to_vec(&sites).expect("sites serialize"))
            })
            .clone()
    }
}

impl Snapshot {
    /// A flame graph of what is open now, by the stack that opened it, drawn once.
    pub(crate) fn flamegraph_svg(&self) -> Result<Bytes, String> {
        self.flamegraph_svg
            .get_or_init(|| {
                flamegraph::draw(flamegraph::collapsed_exported(&self.exported))
                    .map(Bytes::from)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }
}

/// Where handlers find the last snapshot: `None` until the tracer is attached.
pub(crate) type Snapshots = watch::Receiver<Option<Arc<Snapshot>>>;

#[derive(Clone)]
struct AppState {
    snapshots: Snapshots,
    limits: ServerLimits,
}

impl AppState {
    fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.borrow().clone()
    }
}

pub(crate) fn router(snapshots: Snapshots, limits: ServerLimits) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/sites", get(sites))
        .route("/flamegraph.svg", get(flamegraph_svg))
        .layer(middleware::from_fn(refuse_bodies))
        .with_state(AppState { snapshots, limits })
}

/// Accept connections until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, snapshots: Snapshots, limits: ServerLimits) {
    let app = router(snapshots, limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("{peer}: {} connections already, closing", limits.max_connections);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_timeout, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("{peer}: {e}"),
                Err(_) => debug!("{peer}: closed after {:?}", limits.connection_timeout),
            }
        });
    }
}

/// Nothing here takes a body: refuse one rather than leave it unread.
async fn refuse_bodies(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) != Some(0));
    if declared || headers.contains_key(header::TRANSFER_ENCODING) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "requests here take no body\n").into_response();
    }
    next.run(request).await
}

fn not_ready() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "starting: not attached yet\n").into_response()
}

fn with_type(body: Bytes, content_type: &'static str) -> Response {
    let mut response = Body::from(body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    let Some(snapshot) = state.current() else { return not_ready() };
    match snapshot.metrics_text() {
        Ok(text) => with_type(text, "text/plain; version=0.0.4; charset=utf-8"),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render metrics: {e}\n")).into_response()
        }
    }
}

async fn sites(State(state): State<AppState>) -> Response {
    let Some(snapshot) = state.current() else { return not_ready() };
    with_type(snapshot.sites_json(), "application/json")
}

async fn flamegraph_svg(State(state): State<AppState>) -> Response {
    let Some(snapshot) = state.current() else { return not_ready() };
    match snapshot.flamegraph_svg() {
        Ok(svg) => with_type(svg, "image/svg+xml"),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot draw the flame graph: {e}\n")).into_response()
        }
    }
}

/// Ready once attached; failing again if the tracing loop stops publishing (stuck), so that
/// a liveness probe restarts it.
async fn healthz(State(state): State<AppState>) -> Response {
    let Some(snapshot) = state.current() else { return not_ready() };
    let age = snapshot.taken.elapsed();
    if age > state.limits.stale_after {
        let message = format!("stalled: no snapshot for {}s\n", age.as_secs());
        return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

#[cfg(test)]
mod tests;
