//! Kernel tests of `helios-trace serve`'s HTTP side under a hostile network: a real Prometheus
//! keeps scraping while other clients hold hundreds of idle and trickling connections; it
//! scrapes over TLS with a client certificate and basic authentication (`--web-config-file`,
//! certificates and hashes made here) while plain HTTP, wrong credentials and untrusted
//! certificates are refused; the file is followed as it changes.
use std::{
    fs,
    net::SocketAddr,
    path::Path,
    process::Command,
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
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
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

/// A test CA, the certificates it signs (PEM files in `dir`).
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str, dir: &Path) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        fs::write(dir.join(format!("{name}.crt")), issuer.pem()).unwrap();
        Ca { issuer }
    }

    /// `name`.crt and `name`.key in `dir`, for `names` (DNS names or IP addresses).
    fn sign(&self, name: &str, names: &[&str], usage: rcgen::ExtendedKeyUsagePurpose, dir: &Path) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// `curl` of `url` with `args`: (HTTP status, 0 when none came; body; curl's exit code).
fn curl<S: AsRef<std::ffi::OsStr>>(url: &str, args: &[S]) -> (u16, String, i32) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs (cargo xtask setup --tests installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string(), output.status.code().unwrap_or(-1))
}

fn web_config(dir: &Path, user: &str, password: &str) -> String {
    // bcrypt's default cost, as htpasswd -B makes them.
    let hash = bcrypt::hash(password, bcrypt::DEFAULT_COST).unwrap();
    format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\nbasic_auth_users:\n  {user}: {hash}\n",
        dir.join("ca.crt").display()
    )
}

/// Write `text` to `path` as editors and Kubernetes' secret volumes do: a new file renamed over.
fn replace_file(path: &Path, text: &str) {
    let new = path.with_extension("new");
    fs::write(&new, text).unwrap();
    fs::rename(&new, path).unwrap();
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn prometheus_scrapes_over_tls_with_basic_auth_and_the_rest_are_refused() {
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("ca", d);
    ca.sign("server", &["127.0.0.1", "localhost"], rcgen::ExtendedKeyUsagePurpose::ServerAuth, d);
    ca.sign("client", &["prometheus"], rcgen::ExtendedKeyUsagePurpose::ClientAuth, d);
    // A certificate of the same name from a CA the server does not trust.
    let other = Ca::new("other-ca", d);
    other.sign("stranger", &["prometheus"], rcgen::ExtendedKeyUsagePurpose::ClientAuth, d);
    let config = d.join("web.yml");
    fs::write(&config, web_config(d, "prometheus", "s3cret")).unwrap();

    let workload = Workload::spawn();
    let serve =
        Serve::start(&["--pid", &workload.pid.to_string(), "--web-config-file", config.to_str().unwrap()]);
    assert!(serve.base.starts_with("https://127.0.0.1:"), "{}", serve.base);
    let target = serve.base.trim_start_matches("https://").to_string();
    let path = |name: &str| d.join(name).display().to_string();
    let prometheus = Prometheus::start_with(
        &target,
        &format!(
            "    scheme: https\n    tls_config:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n    basic_auth:\n      username: prometheus\n      password: s3cret\n",
            path("ca.crt"),
            path("client.crt"),
            path("client.key")
        ),
    );
    prometheus.wait_for_one(r#"up{job="helios-trace"}"#, 1.0);
    prometheus.wait_for_one(&format!(r#"helios_trace_tracked_processes{{instance="{target}"}}"#), 1.0);

    let url = format!("{}/metrics", serve.base);
    let (ca_file, cert, key) = (path("ca.crt"), path("client.crt"), path("client.key"));
    let trusted = ["--cacert", &ca_file, "--cert", &cert, "--key", &key];
    let with =
        |extra: &[&str]| -> Vec<String> { trusted.iter().chain(extra).map(|s| s.to_string()).collect() };
    let (status, body, _) = curl(&url, &with(&["-u", "prometheus:s3cret"]));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("helios_trace_events_total"), "{body}");
    // Wrong password, unknown user, none: 401, and nothing of the metrics.
    for credentials in [&["-u", "prometheus:wrong"][..], &["-u", "someone:s3cret"], &[]] {
        let (status, body, _) = curl(&url, &with(credentials));
        assert_eq!(status, 401, "{credentials:?}: {body}");
        assert!(!body.contains("helios_trace"), "{body}");
    }
    // Plain HTTP to the TLS port: no answer at all.
    let (status, body, code) = curl(&format!("http://{target}/metrics"), &["-u", "prometheus:s3cret"]);
    assert_eq!(status, 0, "plain HTTP answered: {body}");
    assert_ne!(code, 0);
    // No client certificate, or one from a CA not trusted: the handshake fails.
    let (stranger_cert, stranger_key) = (path("stranger.crt"), path("stranger.key"));
    for certificate in [&[][..], &["--cert", &stranger_cert, "--key", &stranger_key]] {
        let args = [&["--cacert", &ca_file, "-u", "prometheus:s3cret"][..], certificate].concat();
        let (status, body, code) = curl(&url, &args);
        assert_eq!(status, 0, "{certificate:?}: {body}");
        assert!(!body.contains("helios_trace") && code != 0, "{certificate:?}: curl exited {code}");
    }
    let counted_as = |password: &str, metric: &str, label: &str| {
        let (_, body, _) = curl(&url, &with(&["-u", &format!("prometheus:{password}")]));
        exposition_series(&body, metric).get(&format!("{{{label}}}")).copied().unwrap_or(0.0)
    };
    let counted = |metric: &str, label: &str| counted_as("s3cret", metric, label);
    assert!(counted("helios_trace_http_requests_refused_total", r#"reason="unauthorized""#) >= 3.0);
    assert!(counted("helios_trace_http_connections_closed_total", r#"reason="tls_handshake""#) >= 3.0);

    // A bad new version is refused and counted; the old one goes on serving.
    replace_file(&config, "tls_server_config:\n  cert_file: server.crt\n  key_fil: server.key\n");
    wait_for("the bad version to be counted", Duration::from_secs(10), || {
        (counted("helios_trace_web_config_reloads_total", r#"result="failure""#) == 1.0).then_some(())
    });
    assert_eq!(curl(&url, &with(&["-u", "prometheus:s3cret"])).0, 200);
    // A good one is taken: another password, the old refused.
    replace_file(&config, &web_config(d, "prometheus", "n3w-secret"));
    wait_for("the new password to be taken", Duration::from_secs(10), || {
        (curl(&url, &with(&["-u", "prometheus:n3w-secret"])).0 == 200).then_some(())
    });
    assert_eq!(curl(&url, &with(&["-u", "prometheus:s3cret"])).0, 401);
    assert_eq!(counted_as("n3w-secret", "helios_trace_web_config_reloads_total", r#"result="success""#), 1.0);
}

#[test]
fn a_bad_web_config_file_is_one_line_and_exit_2_before_tracing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("web.yml");
    for (text, says) in [
        ("basic_auth_users:\n  prometheus: plaintext\n", "not a bcrypt hash"),
        ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "missing.crt"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n", "cipher_suites"),
    ] {
        fs::write(&config, text).unwrap();
        let output = Command::new(helios_trace_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--web-config-file"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--web-config-file") && stderr.contains(says), "{stderr}");
    }
}
