//! The exporter's HTTP server on a real loopback socket, without the kernel: what it answers,
//! and that misbehaving clients (slow, oversized, too many, wrong method) cannot hold it.
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{ServerLimits, Snapshot, serve};
use crate::output::metrics::{aggregate::Exported, exposition::SelfMetrics};

/// GET `url` with the query pairs: (status, body); an error only when no answer came.
fn http_get(url: &str, query: &[(&str, &str)]) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.get(url);
    for (key, value) in query {
        request = request.query(*key, *value);
    }
    let mut response = request.call().map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// Short limits, so the test sees them act within seconds.
const LIMITS: ServerLimits = ServerLimits {
    max_connections: 6,
    max_connections_per_client: 4,
    max_requests: 2,
    header_read_timeout: Duration::from_millis(800),
    max_header_bytes: 8192,
    connection_timeout: Duration::from_secs(3),
    stale_after: Duration::from_secs(30),
};

struct Server {
    address: SocketAddr,
    publish: watch::Sender<Option<Arc<Snapshot>>>,
    /// Runs the server; dropping it stops the server.
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Server {
        Server::start_with(LIMITS)
    }

    fn start_with(limits: ServerLimits) -> Server {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap();
        let (publish, snapshots) = watch::channel(None);
        runtime.spawn(serve(listener, snapshots, limits, None));
        Server { address, publish, _runtime: runtime }
    }

    /// A connection from the loopback address 127.0.0.`last` (all of 127/8 is the loopback).
    fn connect_from(&self, last: u8) -> TcpStream {
        self._runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::from(([127, 0, 0, last], 0))).unwrap();
            let stream = socket.connect(self.address).await.unwrap().into_std().unwrap();
            stream.set_nonblocking(false).unwrap();
            stream
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn publish(&self, taken: Instant) {
        let own = SelfMetrics { events_by_type: vec![("open", 3)], events_lost: 2, ..SelfMetrics::default() };
        self.publish.send_replace(Some(Arc::new(Snapshot::new(Exported::default(), own, taken))));
    }

    /// Send `bytes` raw; what the server answers before it closes (or `limit` passes).
    fn raw(&self, bytes: &[u8], limit: Duration) -> (String, Duration) {
        let started = Instant::now();
        let mut stream = TcpStream::connect(self.address).unwrap();
        stream.set_read_timeout(Some(limit)).unwrap();
        stream.write_all(bytes).unwrap();
        (read_until_closed(&mut stream), started.elapsed())
    }
}

/// Everything until EOF (or an error such as a reset, or the read timeout).
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn serves_the_four_paths_and_nothing_else() {
    let server = Server::start();
    assert_eq!(http_get(&server.url("/healthz"), &[]).unwrap().0, 503, "not ready before the first snapshot");
    assert_eq!(http_get(&server.url("/metrics"), &[]).unwrap().0, 503);
    server.publish(Instant::now());
    assert_eq!(http_get(&server.url("/healthz"), &[]).unwrap(), (200, "ok\n".to_string()));
    let (status, body) = http_get(&server.url("/metrics"), &[]).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("helios_trace_events_total{event=\"open\"} 3\n"), "{body}");
    assert!(body.contains("helios_trace_events_lost_total 2\n"), "{body}");
    let (status, body) = http_get(&server.url("/sites"), &[]).unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"sites":[]}"#));
    let (status, body) = http_get(&server.url("/flamegraph.svg"), &[]).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("<svg") && body.contains("nothing open"), "{body}");
    assert_eq!(http_get(&server.url("/"), &[]).unwrap().0, 404);
    assert_eq!(http_get(&server.url("/metrics/x"), &[]).unwrap().0, 404);

    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let (answer, _) = server
            .raw(format!("{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(), Duration::from_secs(5));
        assert!(answer.starts_with("HTTP/1.1 405"), "{method}: {answer:?}");
    }
    let (answer, _) = server
        .raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 413"), "a body is refused: {answer:?}");
    let (answer, _) = server.raw(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    // One request per connection: a second one on the same connection is not answered.
    let (answer, _) = server.raw(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 1, "{answer:?}");
}

#[test]
fn a_stale_snapshot_fails_the_health_check() {
    let server = Server::start();
    server.publish(Instant::now() - Duration::from_secs(31));
    let (status, body) = http_get(&server.url("/healthz"), &[]).unwrap();
    assert_eq!(status, 503);
    assert!(body.starts_with("stalled: no snapshot for 31s"), "{body}");
}

/// README: request line and headers "at most 8 KiB (431)". Just under it is served; just over
/// it is refused (431, or the connection closed: hyper closes once it answered, and the reset of
/// the unread rest may overtake the answer).
#[test]
fn headers_of_up_to_8_kib_are_served_and_more_refused() {
    let server = Server::start();
    server.publish(Instant::now());
    let request = |padding: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Padding: {}\r\n\r\n",
            "a".repeat(padding)
        )
    };
    let under = request(8 * 1024 - 200);
    assert!(under.len() < 8 * 1024);
    let (answer, _) = server.raw(under.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let over = request(8 * 1024 + 200);
    let (answer, _) = server.raw(over.as_bytes(), Duration::from_secs(5));
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer:?}");
}

#[test]
fn oversized_requests_are_refused() {
    let server = Server::start();
    server.publish(Instant::now());
    let huge = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n", "a".repeat(64 * 1024));
    let mut stream = TcpStream::connect(server.address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may close while we still write: that is a refusal too.
    let _ = stream.write_all(huge.as_bytes());
    let answer = read_until_closed(&mut stream);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(!answer.contains("helios_trace"), "no metrics for an oversized request");
    let long_uri = format!("GET /metrics?{} HTTP/1.1\r\nHost: x\r\n\r\n", "q".repeat(16 * 1024));
    let mut stream = TcpStream::connect(server.address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.write_all(long_uri.as_bytes());
    let answer = read_until_closed(&mut stream);
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(http_get(&server.url("/healthz"), &[]).unwrap().0, 200, "still serving");
}

#[test]
fn slow_clients_time_out() {
    let server = Server::start();
    server.publish(Instant::now());
    // Silent after connecting: closed once the headers are overdue.
    let (answer, took) = server.raw(b"", Duration::from_secs(10));
    assert!(!answer.contains("200 OK"), "{answer:?}");
    assert!(took >= LIMITS.header_read_timeout, "closed after {took:?}");
    assert!(took < LIMITS.connection_timeout + Duration::from_secs(2), "closed after {took:?}");
    // Trickling the request a byte at a time does not reset the clock.
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.address).unwrap();
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut closed = false;
    for byte in request {
        if stream.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let answer = read_until_closed(&mut stream);
    assert!(closed || !answer.contains("200 OK"), "a trickled request was served: {answer:?}");
    assert!(
        started.elapsed() < LIMITS.connection_timeout + Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn connections_beyond_a_clients_limit_are_closed_and_the_server_recovers() {
    let server = Server::start();
    server.publish(Instant::now());
    let idle: Vec<TcpStream> =
        (0..LIMITS.max_connections_per_client).map(|_| TcpStream::connect(server.address).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let (answer, took) = server.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(10));
    assert_eq!(answer, "", "over the client's limit: closed unanswered");
    assert!(took < LIMITS.header_read_timeout, "closed at once, not timed out: {took:?}");
    // Another address is not held to this one's limit.
    let mut other = server.connect_from(2);
    other.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    other.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(read_until_closed(&mut other).starts_with("HTTP/1.1 200"));
    // The idle ones time out and free their slots.
    std::thread::sleep(LIMITS.header_read_timeout + Duration::from_millis(500));
    assert_eq!(http_get(&server.url("/healthz"), &[]).unwrap().0, 200);
    let (_, metrics) = http_get(&server.url("/metrics"), &[]).unwrap();
    let closed = crate::output::metrics::exposition::tests::series(
        &metrics,
        "helios_trace_http_connections_closed_total",
    );
    assert_eq!(closed.get(r#"{reason="client_limit"}"#), Some(&1.0), "{metrics}");
    assert_eq!(
        closed.get(r#"{reason="header_timeout"}"#),
        Some(&(LIMITS.max_connections_per_client as f64)),
        "{metrics}"
    );
    drop(idle);
}

#[test]
fn idle_connections_from_many_addresses_cannot_keep_a_scraper_out() {
    // Long timeouts: every connection closed here is closed for another.
    let server = Server::start_with(ServerLimits {
        header_read_timeout: Duration::from_secs(20),
        connection_timeout: Duration::from_secs(20),
        ..LIMITS
    });
    server.publish(Instant::now());
    // Every slot held by idle connections, and twice as many trying: three addresses at their limit.
    let mut idle: Vec<TcpStream> = Vec::new();
    for last in 2..=4 {
        idle.extend((0..LIMITS.max_connections_per_client).map(|_| server.connect_from(last)));
    }
    std::thread::sleep(Duration::from_millis(200));
    // A scraper gets in at once, each time: an idle connection is cut for it.
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = http_get(&server.url("/metrics"), &[]).unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(started.elapsed() < LIMITS.header_read_timeout, "{:?}", started.elapsed());
    }
    let (_, metrics) = http_get(&server.url("/metrics"), &[]).unwrap();
    let closed = crate::output::metrics::exposition::tests::series(
        &metrics,
        "helios_trace_http_connections_closed_total",
    );
    // 12 idle ones for 6 slots: 4 from .2 and 2 from .3 fill them; the third of .3 cuts one
    // of .2's, .4's first two cut one each of .2's and .3's, and the rest are refused, the
    // clients even (2 each). Then the first scrape cuts one, whose slot the next ones find free.
    assert_eq!(closed.get(r#"{reason="cut_for_new"}"#), Some(&4.0), "{metrics}");
    assert_eq!(closed.get(r#"{reason="total_limit"}"#), Some(&3.0), "{metrics}");
    // The cut and the refused ones are closed by the server, the others are not.
    let mut cut = 0;
    for stream in &mut idle {
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        if matches!(stream.read(&mut [0u8; 16]), Ok(0)) {
            cut += 1;
        }
    }
    assert_eq!(cut, 7, "of {} idle connections", idle.len());
}

#[test]
fn requests_beyond_max_requests_are_answered_503_and_counted() {
    // No request slot at all: every request is one too many.
    let server = Server::start_with(ServerLimits { max_requests: 0, ..LIMITS });
    server.publish(Instant::now());
    let (status, body) = http_get(&server.url("/metrics"), &[]).unwrap();
    assert_eq!((status, body.as_str()), (503, "too many requests in flight\n"));
}
