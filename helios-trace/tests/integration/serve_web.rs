//! Kernel tests of `helios-trace serve`'s HTTP side under a hostile network: a real Prometheus
//! keeps scraping while other clients hold hundreds of idle and trickling connections.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::net::{TcpSocket, TcpStream};

use crate::{serve::Prometheus, support::*};

/// Clients that hold connections to `target` from 127.0.0.`first`.. (one address per client),
/// `per_address` each, half idle (connected, silent) and half trickling a request line a byte
/// every 500 ms; each reconnects at once when the server closes it. Stopped on drop.
struct Hogs {
    held: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Hogs {
    fn start(target: SocketAddr, addresses: std::ops::RangeInclusive<u8>, per_address: usize) -> Hogs {
        // Its own worker thread runs the clients while the test polls.
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let held = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        for last in addresses {
            for n in 0..per_address {
                let (held, stop) = (held.clone(), stop.clone());
                let trickle = n % 2 == 1;
                runtime.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let socket = TcpSocket::new_v4().unwrap();
                        socket.bind(SocketAddr::from(([127, 0, 0, last], 0))).unwrap();
                        let Ok(stream) = socket.connect(target).await else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        held.fetch_add(1, Ordering::Relaxed);
                        if trickle {
                            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
                                if !send_byte(&stream, *byte).await {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        } else {
                            // Until the server closes it (EOF or reset).
                            wait_closed(&stream).await;
                        }
                        held.fetch_sub(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                });
            }
        }
        Hogs { held, stop, runtime: Some(runtime) }
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Whether one byte could be written (the connection is still open).
async fn send_byte(stream: &TcpStream, byte: u8) -> bool {
    loop {
        if stream.writable().await.is_err() {
            return false;
        }
        match stream.try_write(&[byte]) {
            Ok(_) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return false,
        }
    }
}

/// Until the server closes the connection (EOF or reset).
async fn wait_closed(stream: &TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn scrapes_go_on_while_other_clients_hold_hundreds_of_idle_and_trickling_connections() {
    if !require_bpf() {
        return;
    }
    // Traces one quiet process: this test is about the HTTP side.
    let workload = Workload::spawn();
    let serve = Serve::start(&["--pid", &workload.pid.to_string()]);
    let address: SocketAddr = serve.base.trim_start_matches("http://").parse().unwrap();
    let prometheus = Prometheus::start(&address.to_string());
    prometheus.wait_for_one(r#"up{job="helios-trace"}"#, 1.0);
    // 40 addresses × 20: more than the 16 each may hold, and 640 held would be more than the
    // 512 in all: every slot is taken and some are always waiting to take one.
    let hogs = Hogs::start(address, 2..=41, 20);
    wait_for("the clients to hold 500 connections", Duration::from_secs(20), || {
        (hogs.held() >= 500).then_some(())
    });
    let started = unix_now();
    const WINDOW: u64 = 15;
    std::thread::sleep(Duration::from_secs(WINDOW));
    let held = hogs.held();
    let ended = unix_now();
    let range = format!(r#"up{{job="helios-trace"}}[{WINDOW}s]"#);
    let scrapes = prometheus.query_at(&format!("count_over_time({range})"), Some(ended));
    let lowest = prometheus.query_at(&format!("min_over_time({range})"), Some(ended));
    let samples = prometheus.query_at(
        &format!(r#"min_over_time(scrape_samples_scraped{{job="helios-trace"}}[{WINDOW}s])"#),
        Some(ended),
    );
    // One scrape a second, every one of them up and with the exporter's series.
    assert!(
        matches!(scrapes.as_slice(), [(_, n)] if *n >= (WINDOW - 1) as f64),
        "scrapes in {WINDOW}s: {scrapes:?}"
    );
    assert_eq!(lowest.first().map(|(_, v)| *v), Some(1.0), "up over the window: {lowest:?}");
    assert!(samples.first().is_some_and(|(_, v)| *v > 10.0), "samples scraped: {samples:?}");
    // The clients really held the server: over their limits, and idle ones cut for others.
    let metrics = serve.metrics();
    let closed = exposition_series(&metrics, "helios_trace_http_connections_closed_total");
    let count = |reason: &str| closed.get(&format!(r#"{{reason="{reason}"}}"#)).copied().unwrap_or(0.0);
    assert!(held >= 500, "the clients held {held} connections at the end");
    // Every slot was taken: clients were refused, and idle connections cut for new ones.
    assert!(count("client_limit") > 0.0 && count("total_limit") > 0.0, "{closed:?}");
    assert!(count("cut_for_new") >= (WINDOW - 1) as f64, "{closed:?}");
    eprintln!(
        "{WINDOW}s: {scrapes:?} scrapes while {held} connections were held; closed: {closed:?} (started {started:.0})"
    );
}
