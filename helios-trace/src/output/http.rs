//! The exporter's HTTP side (ARCHITECTURE.md, "Contracts: HTTP"): `GET /metrics`, `/healthz`,
//! `/sites` and `/flamegraph.svg`, nothing else, and no attack surface: connections bounded per
//! client address and in total, an idle or trickling one cut for a new one when the total is
//! reached (`admission.rs`), so that clients holding connections cannot keep a scraper out;
//! requests handled at once bounded apart from that ([`ServerLimits::max_requests`], as
//! node_exporter's `--web.max-requests`); one request per connection, request headers bounded in
//! size and in the time they may take to arrive, every connection cut after
//! [`ServerLimits::connection_timeout`] (a client that does not read its response cannot hold
//! one), and requests with a body refused. What was refused or cut is counted
//! (`helios_trace_http_*_total`).
//!
//! Handlers never touch the tracer: the tracing loop publishes a [`Snapshot`] once a second
//! and a request reads the last one, rendering it on first use. A scrape therefore never
//! blocks event processing, and concurrent scrapes of one snapshot render it once.
use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
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
use base64::Engine as _;
use bytes::Bytes;
use hyper::{server::conn::http1, service::Service as _};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use log::{debug, info, warn};
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, oneshot, watch},
};

use self::{
    admission::{Admission, Admitted, Refusal},
    web_config::{Fingerprint, WebConfig},
};

use crate::output::{
    flamegraph,
    metrics::{
        aggregate::{Exported, SiteFrames},
        exposition::{self, SelfMetrics},
    },
};

#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerLimits {
    /// Connections open at once, all clients together; when reached, a new connection cuts an
    /// idle one (admission.rs), or is closed at once when none is idle.
    pub(crate) max_connections: usize,
    /// Connections open at once from one client address; one more is closed at once.
    pub(crate) max_connections_per_client: usize,
    /// Requests handled at once; one more is answered 503 (node_exporter's `--web.max-requests`).
    pub(crate) max_requests: usize,
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
            // Far above what one client may hold: with the per-client limit, 32 addresses must
            // hold every connection before a new one has to cut an idle one, which it then does.
            max_connections: 512,
            // A scraper holds one per scrape; a few Prometheus replicas behind one address fit.
            max_connections_per_client: 16,
            // node_exporter's default for --web.max-requests.
            max_requests: 40,
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

/// What the server refused or cut, exported with the snapshot's series.
#[derive(Debug)]
pub(crate) struct HttpStats {
    registry: Registry,
    connections_closed: IntCounterVec,
    requests_refused: IntCounterVec,
    web_config_reloads: IntCounterVec,
}

impl HttpStats {
    pub(crate) fn new() -> HttpStats {
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "helios_trace_http_connections_closed_total",
                "Connections the exporter closed before answering, by reason: client_limit, total_limit, cut_for_new (an idle one cut for a new connection), header_timeout, connection_timeout, tls_handshake (failed or overdue: plain HTTP, an untrusted client certificate).",
            ),
            &["reason"],
        )
        .expect("a valid metric");
        let requests_refused = IntCounterVec::new(
            Opts::new(
                "helios_trace_http_requests_refused_total",
                "Requests the exporter refused, by reason: max_requests (503), unauthorized (401: no or wrong basic auth credentials).",
            ),
            &["reason"],
        )
        .expect("a valid metric");
        let web_config_reloads = IntCounterVec::new(
            Opts::new(
                "helios_trace_web_config_reloads_total",
                "Times --web-config-file changed and was read again, by result: success, failure (the previous configuration kept).",
            ),
            &["result"],
        )
        .expect("a valid metric");
        let registry = Registry::new();
        for counter in [&connections_closed, &requests_refused, &web_config_reloads] {
            registry.register(Box::new(counter.clone())).expect("registered once");
        }
        HttpStats { registry, connections_closed, requests_refused, web_config_reloads }
    }

    fn closed(&self, reason: &str) {
        self.connections_closed.with_label_values(&[reason]).inc();
    }

    fn refused(&self, reason: &str) {
        self.requests_refused.with_label_values(&[reason]).inc();
    }

    fn render(&self) -> Result<String, String> {
        exposition::render(&self.registry).map_err(|e| e.to_string())
    }
}

#[derive(Clone)]
struct AppState {
    snapshots: Snapshots,
    limits: ServerLimits,
    stats: Arc<HttpStats>,
}

impl AppState {
    fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.borrow().clone()
    }
}

fn router(
    snapshots: Snapshots,
    limits: ServerLimits,
    stats: Arc<HttpStats>,
    web: watch::Receiver<Arc<WebConfig>>,
) -> Router {
    let in_flight = InFlight { slots: Arc::new(Semaphore::new(limits.max_requests)), stats: stats.clone() };
    let auth = Auth {
        web,
        stats: stats.clone(),
        verified: Arc::new(Mutex::new(lru::LruCache::new(NonZeroUsize::new(64).expect("not zero")))),
    };
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/sites", get(sites))
        .route("/flamegraph.svg", get(flamegraph_svg))
        .layer(middleware::from_fn(refuse_bodies))
        .layer(middleware::from_fn_with_state(auth, authenticate))
        // Outermost: a password check is a request in flight too.
        .layer(middleware::from_fn_with_state(in_flight, limit_requests))
        .with_state(AppState { snapshots, limits, stats })
}

/// Where the basic authentication middleware finds the users.
#[derive(Clone)]
struct Auth {
    web: watch::Receiver<Arc<WebConfig>>,
    stats: Arc<HttpStats>,
    /// (user, hash, password) checked right lately: bcrypt is slow on purpose, and a scraper
    /// sends the same credentials every few seconds (exporter-toolkit keeps such a cache too).
    verified: Arc<Mutex<lru::LruCache<Credentials, ()>>>,
}

/// (user, the hash configured for it, password).
type Credentials = (String, String, String);

/// With `basic_auth_users`, every path but /healthz (which says only "ok", for the kubelet's
/// probe) needs one of them: 401 otherwise, counted.
async fn authenticate(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let web = auth.web.borrow().clone();
    if web.users.is_empty() || request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let credentials = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v.trim()).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.split_once(':').map(|(user, password)| (user.to_string(), password.to_string())));
    let allowed = match credentials {
        None => false,
        Some((user, password)) => {
            let key = (user.clone(), web.users.get(&user).cloned().unwrap_or_default(), password.clone());
            if auth.verified.lock().expect("cache lock").get(&key).is_some() {
                true
            } else {
                let users = web.users.clone();
                let ok = tokio::task::spawn_blocking(move || web_config::verify(&users, &user, &password))
                    .await
                    .unwrap_or(false);
                if ok {
                    auth.verified.lock().expect("cache lock").put(key, ());
                }
                ok
            }
        }
    };
    if !allowed {
        auth.stats.refused("unauthorized");
        let mut response = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        return response;
    }
    next.run(request).await
}

#[derive(Clone)]
struct InFlight {
    slots: Arc<Semaphore>,
    stats: Arc<HttpStats>,
}

/// At most `max_requests` handled at once; one more is answered 503 at once, as
/// client_golang's promhttp does for `MaxRequestsInFlight` (node_exporter's --web.max-requests).
async fn limit_requests(State(in_flight): State<InFlight>, request: Request, next: Next) -> Response {
    let Ok(_slot) = in_flight.slots.try_acquire() else {
        in_flight.stats.refused("max_requests");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many requests in flight\n").into_response();
    };
    next.run(request).await
}

/// `--web-config-file`: the file, and the configuration read from it at start.
#[derive(Debug)]
pub(crate) struct WebConfigFile {
    pub(crate) path: PathBuf,
    pub(crate) config: WebConfig,
    pub(crate) fingerprint: Fingerprint,
}

impl WebConfigFile {
    /// Read and check `path`: an error is one line saying what is wrong.
    pub(crate) fn load(path: PathBuf) -> Result<WebConfigFile, String> {
        let (config, fingerprint) = web_config::load(&path)?;
        Ok(WebConfigFile { path, config, fingerprint })
    }
}

/// Read the web configuration again whenever its file or a file it names changes; a bad
/// version is logged and counted, and the one before kept.
async fn follow_web_config(
    file: WebConfigFile,
    publish: watch::Sender<Arc<WebConfig>>,
    stats: Arc<HttpStats>,
) {
    let WebConfigFile { path, mut fingerprint, .. } = file;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = fingerprint.now();
        if now == fingerprint {
            continue;
        }
        match web_config::load(&path) {
            Ok((config, read)) => {
                info!("{}: read again", path.display());
                publish.send_replace(Arc::new(config));
                fingerprint = read;
                stats.web_config_reloads.with_label_values(&["success"]).inc();
            }
            Err(e) => {
                warn!("--web-config-file {e}; keeping the previous configuration");
                fingerprint = now;
                stats.web_config_reloads.with_label_values(&["failure"]).inc();
            }
        }
    }
}

/// Accept connections until the task is dropped; with TLS and basic authentication as
/// `web` says (plain HTTP, no authentication without it).
pub(crate) async fn serve(
    listener: TcpListener,
    snapshots: Snapshots,
    limits: ServerLimits,
    web: Option<WebConfigFile>,
) {
    let stats = Arc::new(HttpStats::new());
    let (publish_web, current_web) =
        watch::channel(Arc::new(web.as_ref().map(|w| w.config.clone()).unwrap_or_default()));
    let _follower =
        web.map(|web| DropAbort(tokio::spawn(follow_web_config(web, publish_web, stats.clone()))));
    let app = router(snapshots, limits, stats.clone(), current_web.clone());
    let admission =
        Arc::new(Mutex::new(Admission::new(limits.max_connections, limits.max_connections_per_client)));
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
        let (cut, cut_signal) = oneshot::channel();
        let admitted = admission.lock().expect("admission lock").admit(peer.ip(), cut);
        let id = match admitted {
            Ok(Admitted { id, cut }) => {
                if let Some(cut) = cut {
                    // The cut connection's task may have ended meanwhile: nothing to do then.
                    let _ = cut.send(());
                    stats.closed("cut_for_new");
                }
                id
            }
            Err(refusal) => {
                let reason = match refusal {
                    Refusal::ClientLimit => "client_limit",
                    Refusal::TotalLimit => "total_limit",
                };
                debug!("{peer}: closed at once ({reason})");
                stats.closed(reason);
                continue;
            }
        };
        let connection = Connection { id, peer, admission: admission.clone(), stats: stats.clone(), limits };
        let tls = current_web.borrow().tls.clone();
        tokio::spawn(connection.serve(stream, tls, app.clone(), cut_signal));
    }
}

/// A task that ends with its owner.
struct DropAbort(tokio::task::JoinHandle<()>);

impl Drop for DropAbort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One admitted connection; leaving the admission when it ends, however it ends.
struct Connection {
    id: u64,
    peer: SocketAddr,
    admission: Arc<Mutex<Admission<oneshot::Sender<()>>>>,
    stats: Arc<HttpStats>,
    limits: ServerLimits,
}

impl Connection {
    async fn serve(
        self,
        stream: TcpStream,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
        app: Router,
        cut: oneshot::Receiver<()>,
    ) {
        let (peer, limits) = (self.peer, self.limits);
        let work = async {
            let Some(tls) = tls else { return self.http(stream, app).await };
            // The handshake is part of what must arrive within the header timeout.
            let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
            match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                Ok(Ok(stream)) => self.http(stream, app).await,
                Ok(Err(e)) => {
                    self.stats.closed("tls_handshake");
                    debug!("{peer}: TLS handshake: {e}");
                }
                Err(_) => {
                    self.stats.closed("tls_handshake");
                    debug!("{peer}: TLS handshake overdue");
                }
            }
        };
        tokio::select! {
            served = tokio::time::timeout(limits.connection_timeout, work) => if served.is_err() {
                self.stats.closed("connection_timeout");
                debug!("{peer}: closed after {:?}", limits.connection_timeout);
            },
            // Only a send resolves it: the sender is kept in the admission until this ends.
            Ok(()) = cut => debug!("{peer}: idle, cut for a new connection"),
        }
    }

    /// One request over `io`, plain or TLS.
    async fn http<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(&self, io: I, app: Router) {
        let id = self.id;
        let inner = TowerToHyperService::new(app);
        let admission = self.admission.clone();
        // Called once the request line and headers are in: from then on it is served, not idle.
        let service = hyper::service::service_fn(move |request| {
            admission.lock().expect("admission lock").requested(id);
            inner.call(request)
        });
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.max_header_bytes)
            .keep_alive(false)
            .serve_connection(TokioIo::new(io), service)
            .await;
        if let Err(e) = served {
            if e.is_timeout() {
                self.stats.closed("header_timeout");
            }
            debug!("{}: {e}", self.peer);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Ok(mut admission) = self.admission.lock() {
            admission.closed(self.id);
        }
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
    // The snapshot's text, rendered once, then the server's own counters as they are now.
    match snapshot
        .metrics_text()
        .and_then(|text| Ok([text.as_ref(), state.stats.render()?.as_bytes()].concat()))
    {
        Ok(text) => with_type(Bytes::from(text), "text/plain; version=0.0.4; charset=utf-8"),
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

mod admission;
mod web_config;

#[cfg(test)]
mod tests;
