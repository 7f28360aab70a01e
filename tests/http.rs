//! The HTTP server against hostile clients (issue 23), in process: the real server on a
//! `127.0.0.1:0` listener bound here and handed over, spoken to over raw TCP so that
//! each test controls every byte and its timing. Time limits run in virtual time
//! (`tokio::time::pause`: the server's watchdog uses tokio's clock); the connection
//! cap runs in real time, with limits far longer than the test.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeostat::agent::{self, Agent};
use homeostat::config::{ApiConfig, ApiToken, Config, TlsFiles};
use homeostat::metrics::Metrics;
use homeostat::server::{self, AppState};
use homeostat::spool::Spool;
use proptest::prelude::*;

mod common;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const TOKEN: &str = "7f3c9a1e5b2d4f60a8c7e9b1d3f5a7c9";

/// A firing alert in Alertmanager's webhook JSON (version 4).
fn alert_body(extra_annotation: &str) -> String {
    serde_json::json!({
        "version": "4", "status": "firing", "receiver": "homeostat", "groupKey": "{}:{}",
        "alerts": [{"status": "firing", "labels": {"alertname": "InstanceDown", "instance": "vm-1"},
            "annotations": {"note": extra_annotation}, "startsAt": "2026-12-07T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "f1"}]
    })
    .to_string()
}

/// `server::serve` on a loopback listener, its alerts spooled in a temporary directory.
struct Server {
    addr: SocketAddr,
    _spool: tempfile::TempDir,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    async fn start(settings: ApiConfig) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new(Duration::from_secs(3600)));
        let spool_dir = tempfile::tempdir().unwrap();
        let (alerts, _) = Spool::open(&spool_dir.path().join("alerts.spool"), 10_000).unwrap();
        let alerts = Arc::new(alerts);
        let (stop, stopped) = oneshot::channel::<()>();
        let state = AppState {
            metrics: metrics.clone(),
            alerts,
            control: None,
        };
        let task = tokio::spawn(server::serve(listener, state, settings, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            _spool: spool_dir,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    /// A count or gauge from `/metrics`, as encoded (0 when absent).
    fn metric(&self, series: &str) -> f64 {
        let text = self.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.parse().unwrap())
    }

    async fn stop(mut self) -> io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap()
    }
}

fn with_token() -> ApiConfig {
    ApiConfig {
        token: Some(ApiToken::new(TOKEN).unwrap()),
        ..ApiConfig::default()
    }
}

/// One response read off a connection: status, head (lowercased), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Reads one response (sized by Content-Length) off `s`; `None` when the connection
/// closed (or was reset) first.
async fn read_answer(s: &mut TcpStream) -> Option<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return Some(Answer {
                    status: head[9..12].parse().unwrap(),
                    body: String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned(),
                    head,
                });
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends one request on a new connection (`Connection: close`) and reads the answer.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // The server may answer (413, 401) before reading the whole body and close.
    let _ = s.write_all(body).await;
    read_answer(&mut s).await.expect("an answer")
}

/// Posts `body` to the webhook as JSON, with `token` as the bearer token.
async fn post_hook(addr: SocketAddr, token: Option<&str>, body: &str) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    send(
        addr,
        "POST",
        "/api/v1/alertmanager",
        &headers,
        body.as_bytes(),
    )
    .await
}

/// Waits (virtual or real time) until the peer closes `s`; returns when, or `None` if it
/// did not within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Instant> {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(Instant::now()),
                Ok(_) => continue,
            },
            _ = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

#[tokio::test]
async fn the_webhook_needs_the_bearer_token_and_the_read_endpoints_stay_open() {
    let server = Server::start(with_token()).await;
    let body = alert_body("");

    let missing = post_hook(server.addr, None, &body).await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (401, "no bearer token\n")
    );
    assert!(
        missing
            .head
            .contains("www-authenticate: bearer realm=\"homeostat\""),
        "{missing:?}"
    );
    let wrong = post_hook(server.addr, Some("7f3c9a1e5b2d4f60a8c7e9b1d3f5a7c8"), &body).await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(wrong.head.contains("error=\"invalid_token\""), "{wrong:?}");
    let basic = send(
        server.addr,
        "POST",
        "/api/v1/alertmanager",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Basic {TOKEN}")),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(basic.status, 401, "another scheme: {basic:?}");

    let right = post_hook(server.addr, Some(TOKEN), &body).await;
    assert_eq!(right.status, 202, "{right:?}");

    for path in ["/metrics", "/healthz", "/readyz"] {
        let a = send(server.addr, "GET", path, &[], b"").await;
        assert!(
            a.status == 200 || (path == "/readyz" && a.status == 503),
            "{path}: {a:?}"
        );
    }
    assert_eq!(
        server.metric("homeostat_http_rejected_total{reason=\"unauthorized\"}"),
        3.0
    );
    assert_eq!(
        server.metric("homeostat_webhook_requests_total{result=\"accepted\"}"),
        1.0
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_token_the_webhook_serves_clients_on_this_host_and_says_so_at_start() {
    let (logs, _guard) = capture();
    let server = Server::start(ApiConfig::default()).await;
    let a = post_hook(server.addr, None, &alert_body("")).await;
    assert_eq!(a.status, 202, "{a:?}");
    server.stop().await.unwrap();
    let logs = logs.text();
    assert!(
        logs.contains("WARN") && logs.contains("no API token configured"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_webhook_request_that_is_not_json_is_refused_with_415_before_its_body_is_read() {
    let server = Server::start(with_token()).await;
    let auth = format!("Bearer {TOKEN}");
    let body = alert_body("");
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/jsonx"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(content_type.map(|c| ("content-type", c)));
        let a = send(
            server.addr,
            "POST",
            "/api/v1/alertmanager",
            &headers,
            body.as_bytes(),
        )
        .await;
        assert_eq!(a.status, 415, "{content_type:?}: {a:?}");
    }
    let a = send(
        server.addr,
        "POST",
        "/api/v1/alertmanager",
        &[
            ("authorization", &auth),
            ("content-type", "Application/JSON; charset=utf-8"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(a.status, 202, "{a:?}");
    // Unauthenticated and not JSON: the token is checked first.
    let a = send(
        server.addr,
        "POST",
        "/api/v1/alertmanager",
        &[("content-type", "text/plain")],
        b"x",
    )
    .await;
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(
        server.metric("homeostat_http_rejected_total{reason=\"unsupported_media_type\"}"),
        4.0
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_webhook_body_over_the_cap_is_refused_with_413() {
    let server = Server::start(ApiConfig {
        max_body_bytes: 1024,
        ..with_token()
    })
    .await;
    // Valid JSON, so the old server (which took up to 2 MB) would have accepted it.
    let big = alert_body(&"x".repeat(2000));
    let a = post_hook(server.addr, Some(TOKEN), &big).await;
    assert_eq!(a.status, 413, "{a:?}");
    // Without a Content-Length (chunked), the cap holds while the body streams in.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/alertmanager HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s
        .write_all(format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()).as_bytes())
        .await;
    let a = read_answer(&mut s).await.expect("an answer");
    assert_eq!(a.status, 413, "{a:?}");
    let small = post_hook(server.addr, Some(TOKEN), &alert_body("")).await;
    assert_eq!(small.status, 202, "{small:?}");
    assert_eq!(
        server.metric("homeostat_http_rejected_total{reason=\"too_large\"}"),
        2.0
    );
    server.stop().await.unwrap();
}

// Real time, with a short limit: on a paused clock with real sockets, a loaded machine
// let virtual time run ahead of the server's reads and the cut-off came late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_at_the_header_timeout() {
    let limit = Duration::from_secs(1);
    let server = Server::start(ApiConfig {
        header_timeout: limit,
        ..with_token()
    })
    .await;
    // Timed from before the connect: the server's clock starts at its accept.
    let start = Instant::now();
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let head =
        b"POST /api/v1/alertmanager HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    let mut closed = None;
    // One byte every 100 ms: the whole head would take 8 s.
    for byte in head {
        // A reset shows as a failed write: the server is gone either way.
        if s.write_all(&[*byte]).await.is_err() {
            closed = Some(Instant::now());
            break;
        }
        if let Some(at) = closed_within(&mut s, Duration::from_millis(100)).await {
            closed = Some(at);
            break;
        }
    }
    let after = closed
        .expect("the slow head was never cut off")
        .duration_since(start);
    // Never before the limit; well before the head could have been sent whole.
    assert!(
        after >= limit && after < limit * 4,
        "cut off after {after:?}"
    );
    assert_eq!(
        server.metric("homeostat_http_timeouts_total{limit=\"header\"}"),
        1.0
    );

    // A silent connection (opened, nothing sent) is closed at the same limit.
    let start = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let at = closed_within(&mut silent, Duration::from_secs(30))
        .await
        .expect("closed");
    let after = at.duration_since(start);
    assert!(
        after >= limit && after < limit * 4,
        "closed after {after:?}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start(ApiConfig {
        header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(20),
        ..with_token()
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    s.write_all(get).await.unwrap();
    assert_eq!(read_answer(&mut s).await.expect("an answer").status, 200);
    // Idle for longer than the header limit but within the idle limit: still served.
    assert!(
        closed_within(&mut s, Duration::from_secs(15))
            .await
            .is_none(),
        "closed while idle within the limit"
    );
    s.write_all(get).await.unwrap();
    assert_eq!(read_answer(&mut s).await.expect("kept alive").status, 200);
    let start = Instant::now();
    let at = closed_within(&mut s, Duration::from_secs(60))
        .await
        .expect("closed when idle");
    assert_eq!(
        at.duration_since(start).as_secs(),
        20,
        "closed after {:?}",
        at.duration_since(start)
    );
    assert_eq!(
        server.metric("homeostat_http_timeouts_total{limit=\"idle\"}"),
        1.0
    );
    assert_eq!(server.metric("homeostat_http_connections"), 0.0);
    server.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_is_answered_408_at_the_request_timeout() {
    let server = Server::start(ApiConfig {
        request_timeout: Duration::from_secs(7),
        ..with_token()
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/alertmanager HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"version\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let a = tokio::time::timeout(Duration::from_secs(60), read_answer(&mut s))
        .await
        .expect("answered within a minute")
        .expect("an answer");
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(start.elapsed().as_secs(), 7);
    assert!(
        closed_within(&mut s, Duration::from_secs(1))
            .await
            .is_some(),
        "closed after a 408"
    );
    assert_eq!(
        server.metric("homeostat_http_timeouts_total{limit=\"request\"}"),
        1.0
    );
    server.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_a_request_in_flight_finish_and_closes_idle_connections_at_once() {
    let server = Server::start(with_token()).await;
    let body = alert_body("");
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let mut busy = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/alertmanager HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    busy.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let Server { stop, task, .. } = server;
    let _ = stop.unwrap().send(());
    let at = closed_within(&mut idle, Duration::from_secs(1)).await;
    assert!(at.is_some(), "an idle connection is closed at once");
    assert!(
        !task.is_finished(),
        "the server waits for the request in flight"
    );
    busy.write_all(&body.as_bytes()[10..]).await.unwrap();
    let a = read_answer(&mut busy)
        .await
        .expect("the request in flight is answered");
    assert_eq!(a.status, 202, "{a:?}");
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the server stops once the request is done")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once_and_healthz_answers_once_they_go() {
    let server = Server::start(ApiConfig {
        max_connections: 3,
        ..with_token()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let real = std::time::Instant::now();
    while server.metric("homeostat_http_connections") < 3.0 {
        assert!(
            real.elapsed() < Duration::from_secs(5),
            "the server never took the 3 connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..2 {
        let mut extra = TcpStream::connect(server.addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut extra))
            .await
            .expect("closed at once, not left waiting");
        assert!(
            answer.is_none(),
            "a connection beyond the cap was served: {answer:?}"
        );
    }
    assert_eq!(
        server.metric("homeostat_http_connections_refused_total"),
        2.0
    );
    drop(held);
    loop {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        if let Some(a) = read_answer(&mut s).await {
            assert_eq!(a.status, 200, "{a:?}");
            break;
        }
        assert!(
            real.elapsed() < Duration::from_secs(10),
            "/healthz never answered again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.unwrap();
}

/// The test certificates: a CA, and two server certificates it signed for 127.0.0.1
/// and localhost (EC P-256, valid until 2126).
fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// A TLS client that trusts the test CA, speaking to 127.0.0.1.
#[allow(deprecated)] // ring's provider: see src/server/tls.rs
fn tls_client() -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// GET /healthz over TLS; the status and the DER of the certificate the server showed.
async fn https_healthz(addr: SocketAddr) -> (u16, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tls_client().connect(name, tcp).await.expect("handshake");
    let cert = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    (text[9..12].parse().unwrap(), cert)
}

fn der(name: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject as _, CertificateDer};
    CertificateDer::from_pem_file(fixture(name))
        .unwrap()
        .to_vec()
}

#[tokio::test(start_paused = true)]
async fn https_serves_the_configured_certificate_and_the_renewed_one_once_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let install = |c: &str, k: &str| {
        std::fs::copy(fixture(c), &cert).unwrap();
        std::fs::copy(fixture(k), &key).unwrap();
    };
    install("a.pem", "a-key.pem");
    let server = Server::start(ApiConfig {
        tls: Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        ..with_token()
    })
    .await;
    assert_eq!(https_healthz(server.addr).await, (200, der("a.pem")));

    install("b.pem", "b-key.pem");
    tokio::time::sleep(server::tls::RELOAD_EVERY * 2).await;
    assert_eq!(
        https_healthz(server.addr).await,
        (200, der("b.pem")),
        "the renewed certificate is served"
    );

    // A pair that does not match (a key from another certificate) is not taken.
    install("a.pem", "b-key.pem");
    tokio::time::sleep(server::tls::RELOAD_EVERY * 2).await;
    assert_eq!(https_healthz(server.addr).await, (200, der("b.pem")));

    // The webhook takes its token over TLS as over plain HTTP.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tls_client().connect(name, tcp).await.unwrap();
    let body = alert_body("");
    let req = format!(
        "POST /api/v1/alertmanager HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 202"), "{out}");
    server.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn https_refuses_plain_http_and_cuts_a_slow_handshake_or_head_at_the_header_timeout() {
    let server = Server::start(ApiConfig {
        header_timeout: Duration::from_secs(5),
        tls: Some(TlsFiles {
            cert: fixture("a.pem"),
            key: fixture("a-key.pem"),
        }),
        ..with_token()
    })
    .await;
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), plain.read_to_end(&mut out)).await;
    assert!(
        !String::from_utf8_lossy(&out).contains("HTTP/1.1 200"),
        "plain HTTP was served over the TLS port"
    );

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let start = Instant::now();
    let at = closed_within(&mut silent, Duration::from_secs(30))
        .await
        .expect("closed");
    assert_eq!(at.duration_since(start).as_secs(), 5);

    // Handshake done, then a slow head: the same clock, from the connection's opening.
    let start = Instant::now();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tls_client().connect(name, tcp).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    assert_eq!(start.elapsed().as_secs(), 5);
    assert_eq!(
        server.metric("homeostat_http_timeouts_total{limit=\"header\"}"),
        2.0
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_sends_the_token_from_its_credentials_file() {
    let server = Server::start(with_token()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("homeostat-token"), format!("{TOKEN}\n")).unwrap();
    // The receiver as docs/operations.md shows it.
    let config = format!(
        "route:\n  receiver: homeostat\n  group_by: ['...']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
         receivers:\n  - name: homeostat\n    webhook_configs:\n      - url: http://{}/api/v1/alertmanager\n\
         \x20       http_config:\n          authorization:\n            type: Bearer\n            credentials_file: {}\n\
         \x20       max_alerts: 200\n",
        server.addr,
        dir.path().join("homeostat-token").display()
    );
    std::fs::write(dir.path().join("alertmanager.yml"), config).unwrap();
    let mut child = std::process::Command::new(common::tool("prometheus-alertmanager"))
        .arg(format!(
            "--config.file={}",
            dir.path().join("alertmanager.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("am.log")).unwrap())
        .spawn()
        .expect("starts alertmanager");
    let port = common::listening_port("alertmanager", &mut child, &dir.path().join("am.log")).await;
    let url = format!("http://127.0.0.1:{port}");
    let real = std::time::Instant::now();
    let log = || std::fs::read_to_string(dir.path().join("am.log")).unwrap_or_default();
    while !matches!(
        common::http_get(&format!("{url}/-/ready")).await,
        Some((200, _))
    ) {
        assert!(
            real.elapsed() < Duration::from_secs(30),
            "alertmanager not ready:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let alert =
        serde_json::json!([{ "labels": {"alertname": "InstanceDown", "instance": "vm-1"} }]);
    let resp = reqwest::Client::new()
        .post(format!("{url}/api/v2/alerts"))
        .json(&alert)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    while server.metric("homeostat_webhook_requests_total{result=\"accepted\"}") < 1.0 {
        assert!(
            real.elapsed() < Duration::from_secs(60),
            "no webhook accepted:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        server.metric("homeostat_http_rejected_total{reason=\"unauthorized\"}"),
        0.0
    );
    let _ = child.kill();
    let _ = child.wait();
    server.stop().await.unwrap();
}

/// What tracing wrote on one test's thread, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

thread_local! {
    /// Where this thread's log lines go while a test captures them.
    static CAPTURING: std::cell::RefCell<Option<Captured>> = const { std::cell::RefCell::new(None) };
}

/// Writes a line into the capture of the thread that logs it, if any.
struct ThreadWriter;

impl io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        CAPTURING.with(|c| {
            if let Some(logs) = &*c.borrow() {
                logs.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stops capturing when dropped.
struct Capture;

impl Drop for Capture {
    fn drop(&mut self) {
        CAPTURING.with(|c| c.borrow_mut().take());
    }
}

/// Captures this thread's log lines (a current-thread runtime runs every task of the
/// test on it) until the guard drops. One global subscriber, set once: scoped ones
/// (`set_default`) race with other threads registering the same call sites, which can
/// leave a call site disabled for them.
fn capture() -> (Captured, Capture) {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| ThreadWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    let logs = Captured::default();
    CAPTURING.with(|c| *c.borrow_mut() = Some(logs.clone()));
    (logs, Capture)
}

fn agent_config(dir: &Path) -> Config {
    std::fs::write(dir.join("api-token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        dir.join("page.rhai"),
        r#"
const PLAYBOOK = #{ name: "page", trigger: #{ alertname: "InstanceDown" },
    allowed: #{ kinds: ["notify.alertmanager"] } };
fn plan(alert) { [#{ kind: "notify.alertmanager", params: #{ summary: "down" } }] }
"#,
    )
    .unwrap();
    let text = r#"
playbooks = ["page.rhai"]
[prometheus]
url = "http://127.0.0.1:9"
[agent]
interval = "1s"
audit_log = "audit.jsonl"
models_dir = "models"
[api]
token_file = "api-token"
[[signals]]
name = "latency"
query = 'max(latency)'
"#;
    Config::parse_with_env(text, dir, &|_| None).unwrap_or_else(|e| panic!("{e:#?}"))
}

#[tokio::test(start_paused = true)]
async fn the_token_never_reaches_a_log_line_or_the_audit_log() {
    let (logs, _guard) = capture();
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path());
    let shown = format!("{config:?} {:?}", config.api);
    let (playbooks, rejected) =
        homeostat::load_playbooks(&config, &homeostat::playbook::Limits::default());
    assert!(rejected.is_empty(), "{rejected:?}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new(agent::liveness_window(&config)));
    let audit_log = config.agent.audit_log.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent::run(
        Agent {
            config,
            playbooks,
            rejected,
            source: Arc::new(common::Empty),
            metrics: metrics.clone(),
            effectors: Default::default(),
        },
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    while !metrics.is_ready() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wrong = "0000000000000000-another-guess";
    assert_eq!(
        post_hook(addr, Some(wrong), &alert_body("")).await.status,
        401
    );
    assert_eq!(post_hook(addr, None, &alert_body("")).await.status, 401);
    assert_eq!(
        post_hook(addr, Some(TOKEN), &alert_body("")).await.status,
        202
    );
    let audit = |kind: &str| {
        std::fs::read_to_string(&audit_log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&format!("\"kind\":\"{kind}\"")))
    };
    while !audit("plan") {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    let logs = logs.text();
    let audit_text = std::fs::read_to_string(&audit_log).unwrap();
    assert!(
        logs.contains("request refused: 401"),
        "logs were captured:\n{logs}"
    );
    assert!(logs.contains("alert received"), "{logs}");
    for (what, text) in [
        ("logs", &logs),
        ("audit log", &audit_text),
        ("Debug of the config", &shown),
    ] {
        assert!(!text.contains(TOKEN), "the token is in the {what}:\n{text}");
        assert!(
            !text.contains(wrong),
            "a presented token is in the {what}:\n{text}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever the body and content type, the webhook answers a status (never a panic,
    /// which would drop the connection without one).
    #[test]
    fn arbitrary_webhook_bodies_get_a_status_never_a_panic(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..1600),
            // Well-formed webhooks with arbitrary label values.
            (any::<String>(), any::<String>()).prop_map(|(k, v)| serde_json::json!({
                "version": "4", "status": "firing",
                "alerts": [{"status": "firing", "labels": {"alertname": k, "x": v}, "startsAt": ""}]
            }).to_string().into_bytes()),
        ],
        content_type in prop_oneof![
            Just("application/json".to_string()),
            Just("application/json; charset=utf-8".to_string()),
            "[ -~]{0,24}",
        ],
    ) {
        let runtime = SERVER.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let addr = rt.block_on(async {
                let s = Server::start(ApiConfig { max_body_bytes: 1024, ..with_token() }).await;
                let addr = s.addr;
                std::mem::forget(s);
                addr
            });
            (rt, addr)
        });
        let (rt, addr) = runtime;
        let auth = format!("Bearer {TOKEN}");
        let a = rt.block_on(send(
            *addr,
            "POST",
            "/api/v1/alertmanager",
            &[("authorization", &auth), ("content-type", &content_type)],
            &body,
        ));
        prop_assert!([202, 400, 413, 415].contains(&a.status), "{a:?}");
        let json = content_type.split(';').next().unwrap().trim().eq_ignore_ascii_case("application/json");
        if !json {
            prop_assert_eq!(a.status, 415);
        } else if body.len() > 1024 {
            prop_assert_eq!(a.status, 413);
        }
    }
}

/// The proptest's server and the runtime it runs on, started once.
static SERVER: std::sync::OnceLock<(tokio::runtime::Runtime, SocketAddr)> =
    std::sync::OnceLock::new();
