//! The OTLP sink over TLS, mTLS and OTLP/HTTP (issue 14) against in-test servers: a tonic
//! OTLP/gRPC server with TLS (rustls), and a hyper OTLP/HTTP server (plain or TLS via
//! tokio-rustls), with certificates the test generates with the `openssl` CLI (installed by
//! `cargo xtask setup`; hence the `peer-tests` tier).
//!
//! What is checked: every record arrives exactly once, headers arrive on every request, the
//! OTLP/HTTP retry rules (429/502/503/504, Retry-After, partial success) and the spool behave
//! as for gRPC, and a certificate or name mismatch is a one-line error at start that never
//! shows a header value.

mod pki;

use pki::Pki;
use std::{
    convert::Infallible,
    io::Read,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use flowlens_schema::{
    flow::{FlowKey, IPPROTO_TCP, OBS_XDP},
    record::{EndReason, FlowRecord},
};
use flowlens_sinks::{
    Sink,
    otlp::{Headers, OtlpOptions, OtlpProtocol, OtlpSink, TlsFiles, service::RetryPolicy},
    spool::{SpoolOptions, SpooledSink},
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
};
use prost::Message;
use tonic::{
    Request, Response, Status,
    codec::CompressionEncoding,
    transport::{Certificate, Identity, ServerTlsConfig},
};

const SECRET: &str = "Bearer s3cr3t-t0ken-never-printed";
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- records

fn record(i: u32) -> FlowRecord {
    let mut key = FlowKey::ZERO;
    key.ip_version = 4;
    key.src_addr[10..].copy_from_slice(&[0xff, 0xff, 10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    key.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 192, 0, 2, 1]);
    key.protocol = IPPROTO_TCP;
    key.src_port = 10_000 + (i % 50_000) as u16;
    key.dst_port = 443;
    key.observation_point = OBS_XDP;
    key.ifindex = 2;
    FlowRecord {
        flow_start_us: 1_790_000_000_000_000 + i as i64,
        flow_end_us: 1_790_000_000_000_000 + 1_000_000 + i as i64,
        key,
        interface_name: "eth0".into(),
        packets: 1 + i as u64 % 7,
        bytes: 60 + i as u64,
        tcp_flags: 0x1b,
        dscp: 0,
        end_reason: EndReason::IdleTimeout,
        host: "testhost".into(),
        community_id: format!("1:rec{i}"),
        ends: Default::default(),
    }
}

fn records(range: std::ops::Range<u32>) -> Vec<FlowRecord> {
    range.map(record).collect()
}

/// The `community_id` attribute of every log record of the accepted requests, in order.
fn ids(reqs: &[ExportLogsServiceRequest]) -> Vec<u32> {
    reqs.iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
        .map(|l| {
            let cid = l
                .attributes
                .iter()
                .find(|a| a.key == "flow.community_id")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => Some(s.clone()),
                    _ => None,
                })
                .expect("community_id attribute");
            cid.trim_start_matches("1:rec").parse().unwrap()
        })
        .collect()
}

fn options(endpoint: String, protocol: OtlpProtocol) -> OtlpOptions {
    let mut o = OtlpOptions::new(endpoint, "testhost".into());
    o.protocol = protocol;
    o.batch_records = 300;
    o.request_timeout = Duration::from_secs(5);
    o.close_timeout = Duration::from_secs(20);
    o.headers = Headers(vec![("authorization".into(), SECRET.into())]);
    o.retry = RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(30),
    };
    o
}

fn wait_for<S: Sink>(sink: &mut S, what: &str, f: impl Fn(&flowlens_sinks::SinkMetrics) -> bool) {
    let t0 = Instant::now();
    loop {
        sink.tick().unwrap();
        let m = sink.metrics();
        if f(&m) {
            return;
        }
        assert!(
            t0.elapsed() < TIMEOUT,
            "{what}: still {m:?} after {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A start-up error must be one line, say what failed, and never show the header value.
fn assert_start_error(e: &str, contains: &str) {
    eprintln!("start error: {e}");
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(
        !e.contains(SECRET) && !e.contains("s3cr3t"),
        "secret in: {e}"
    );
    assert!(e.contains(contains), "{contains:?} not in: {e}");
}

// ---------------------------------------------------------------- OTLP/gRPC server with TLS

#[derive(Default)]
struct GrpcState {
    logs: Vec<ExportLogsServiceRequest>,
    metrics: usize,
    /// The `authorization` metadata of every request.
    auth: Vec<String>,
}

#[derive(Clone, Default)]
struct Grpc(Arc<Mutex<GrpcState>>);

fn auth_of<T>(r: &Request<T>) -> String {
    r.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let mut st = self.0.lock().unwrap();
        st.auth.push(auth_of(&request));
        st.logs.push(request.into_inner());
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut st = self.0.lock().unwrap();
        st.auth.push(auth_of(&request));
        st.metrics += 1;
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A TLS OTLP/gRPC server with `cert` (and, with `client_ca`, client certificates required).
fn start_grpc(pki: &Pki, cert: &str, client_ca: Option<&str>) -> (SocketAddr, Grpc) {
    let server = Grpc::default();
    let s = server.clone();
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        pki.read(&format!("{cert}.pem")),
        pki.read(&format!("{cert}.key")),
    ));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(pki.read(ca)));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
                    .unwrap();
            tx.send(incoming.local_addr().unwrap()).unwrap();
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(
                    LogsServiceServer::new(s.clone()).accept_compressed(CompressionEncoding::Gzip),
                )
                .add_service(
                    MetricsServiceServer::new(s).accept_compressed(CompressionEncoding::Gzip),
                )
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
    });
    (rx.recv().unwrap(), server)
}

fn tls_files(pki: &Pki, ca: &str, client: bool) -> TlsFiles {
    TlsFiles {
        ca: Some(pki.path(ca)),
        client_cert: client.then(|| pki.path("client.pem")),
        client_key: client.then(|| pki.path("client.key")),
    }
}

#[test]
fn grpc_over_tls_and_mtls_delivers_every_record_once_with_headers() {
    let pki = Pki::new("grpc");
    for mtls in [false, true] {
        let (addr, server) = start_grpc(&pki, "server", mtls.then_some("ca.pem"));
        let mut o = options(
            format!("https://localhost:{}", addr.port()),
            OtlpProtocol::Grpc,
        );
        o.tls = tls_files(&pki, "ca.pem", mtls);
        o.metrics = true;
        let mut sink = OtlpSink::new(o).unwrap();
        let n = 2000;
        for c in records(0..n).chunks(250) {
            sink.write(c).unwrap();
        }
        wait_for(&mut sink, "all acknowledged", |m| {
            m.acknowledged == n as u64
        });
        sink.close().unwrap();
        let st = server.0.lock().unwrap();
        let mut got = ids(&st.logs);
        assert_eq!(got.len(), n as usize, "mtls={mtls}: exactly once");
        got.sort();
        assert_eq!(got, (0..n).collect::<Vec<_>>(), "mtls={mtls}");
        assert!(st.metrics >= 1, "metrics exported over TLS too");
        assert!(!st.auth.is_empty());
        assert!(
            st.auth.iter().all(|a| a == SECRET),
            "header on every request: {:?}",
            st.auth.len()
        );
    }
}

#[test]
fn grpc_certificate_problems_fail_at_start_in_one_line() {
    let pki = Pki::new("grpc-bad");
    // Untrusted: the server's certificate is from another CA.
    let (addr, _s) = start_grpc(&pki, "other-server", None);
    let mut o = options(
        format!("https://localhost:{}", addr.port()),
        OtlpProtocol::Grpc,
    );
    o.tls = tls_files(&pki, "ca.pem", false);
    let e = OtlpSink::new(o.clone())
        .err()
        .expect("untrusted CA fails")
        .to_string();
    assert_start_error(&e, "TLS handshake with localhost");
    assert!(e.contains("certificate"), "{e}");
    // The system roots (no --otlp-ca) do not trust the test CA either.
    o.tls = TlsFiles::default();
    let e = OtlpSink::new(o)
        .err()
        .expect("system roots fail")
        .to_string();
    assert_start_error(&e, "TLS handshake");
    // Trusted CA, wrong name.
    let (addr, _s) = start_grpc(&pki, "wrong-name", None);
    let mut o = options(
        format!("https://localhost:{}", addr.port()),
        OtlpProtocol::Grpc,
    );
    o.tls = tls_files(&pki, "ca.pem", false);
    let e = OtlpSink::new(o)
        .err()
        .expect("name mismatch fails")
        .to_string();
    assert_start_error(&e, "TLS handshake");
    assert!(e.to_lowercase().contains("name"), "{e}");
    // mTLS server, no client certificate.
    let (addr, _s) = start_grpc(&pki, "server", Some("ca.pem"));
    let mut o = options(
        format!("https://localhost:{}", addr.port()),
        OtlpProtocol::Grpc,
    );
    o.tls = tls_files(&pki, "ca.pem", false);
    let e = OtlpSink::new(o)
        .err()
        .expect("missing client certificate fails")
        .to_string();
    assert_start_error(&e, "TLS handshake");
    // Bad files: one line naming the file.
    let mut o = options("https://localhost:1".into(), OtlpProtocol::Grpc);
    o.tls = TlsFiles {
        ca: Some(pki.path("client.key")),
        ..Default::default()
    };
    let e = OtlpSink::new(o).err().expect("a key is no CA").to_string();
    assert_start_error(&e, "CA file");
    // Debug output of the options never shows the header value.
    let o = options("https://localhost:1".into(), OtlpProtocol::Grpc);
    let dbg = format!("{o:?}");
    assert!(
        !dbg.contains("s3cr3t") && dbg.contains("authorization"),
        "{dbg}"
    );
    // A receiver that is not listening is an outage, not an error: records queue.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut o = options(format!("https://localhost:{port}"), OtlpProtocol::Grpc);
    o.tls = tls_files(&pki, "ca.pem", false);
    o.close_timeout = Duration::from_millis(200);
    let mut sink = OtlpSink::new(o).expect("receiver down at start is retried later");
    sink.write(&records(0..3)).unwrap();
    assert!(sink.close().is_err(), "nothing delivered: counted lost");
    assert_eq!(sink.metrics().lost, 3);
}

// ---------------------------------------------------------------- OTLP/HTTP server

/// One scripted answer of the OTLP/HTTP server.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// 200 with a partial success rejecting this many (0: none).
    Ok(i64),
    /// This status, with a `Retry-After` of this many seconds.
    Status(u16, Option<u64>),
}

#[derive(Default)]
struct HttpState {
    /// Answers for the next log requests, in order; then `Ok(0)`.
    script: Vec<Answer>,
    attempts: usize,
    /// Accepted (200) log requests.
    logs: Vec<ExportLogsServiceRequest>,
    metrics: usize,
    /// (path, authorization, content-type, content-encoding) of every request.
    seen: Vec<(String, String, String, String)>,
    attempt_times: Vec<Instant>,
}

#[derive(Clone, Default)]
struct HttpServer(Arc<Mutex<HttpState>>);

fn header(r: &hyper::Request<hyper::body::Incoming>, h: &str) -> String {
    r.headers()
        .get(h)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn handle(
    st: HttpServer,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let seen = (
        path.clone(),
        header(&req, "authorization"),
        header(&req, "content-type"),
        header(&req, "content-encoding"),
    );
    let gz = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut body = Vec::new();
    let decoded = flate2::read::GzDecoder::new(gz.as_ref()).read_to_end(&mut body);
    let mut st = st.0.lock().unwrap();
    st.seen.push(seen);
    let reply = |status: u16, body: Vec<u8>| {
        Ok(hyper::Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    };
    if decoded.is_err() {
        return reply(400, Vec::new());
    }
    match path.as_str() {
        "/v1/logs" => {
            st.attempts += 1;
            st.attempt_times.push(Instant::now());
            let answer = if st.script.is_empty() {
                Answer::Ok(0)
            } else {
                st.script.remove(0)
            };
            match answer {
                Answer::Ok(rejected) => {
                    st.logs
                        .push(ExportLogsServiceRequest::decode(body.as_slice()).unwrap());
                    let resp = ExportLogsServiceResponse {
                        partial_success: (rejected > 0).then(|| ExportLogsPartialSuccess {
                            rejected_log_records: rejected,
                            error_message: "some are bad".into(),
                        }),
                    };
                    reply(200, resp.encode_to_vec())
                }
                Answer::Status(code, retry_after) => {
                    let mut r = hyper::Response::builder().status(code);
                    if let Some(s) = retry_after {
                        r = r.header("retry-after", s.to_string());
                    }
                    Ok(r.body(Full::new(Bytes::new())).unwrap())
                }
            }
        }
        "/v1/metrics" => {
            ExportMetricsServiceRequest::decode(body.as_slice()).unwrap();
            st.metrics += 1;
            reply(200, ExportMetricsServiceResponse::default().encode_to_vec())
        }
        _ => reply(404, Vec::new()),
    }
}

/// TLS of the HTTP server: its certificate and, for mTLS, the CA of client certificates.
fn server_tls(pki: &Pki, cert: &str, client_ca: Option<&str>) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pki.path(&format!("{cert}.pem")))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{cert}.key"))).unwrap();
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(pki.path(ca)).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
        None => b.with_no_client_auth(),
    };
    let mut cfg = b.with_single_cert(chain, key).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Starts the OTLP/HTTP server on `addr` (port 0: any) in its own thread.
fn start_http(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    script: Vec<Answer>,
) -> (SocketAddr, HttpServer) {
    let server = HttpServer(Arc::new(Mutex::new(HttpState {
        script,
        ..Default::default()
    })));
    let s = server.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(addr).await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                let s = s.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |r| handle(s.clone(), r));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(a) => {
                            if let Ok(t) = a.accept(tcp).await {
                                let _ = http
                                    .serve_connection(hyper_util::rt::TokioIo::new(t), svc)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                                .await;
                        }
                    }
                });
            }
        });
    });
    (rx.recv().unwrap(), server)
}

#[test]
fn http_plain_follows_the_retry_rules_and_counts_partial_success() {
    // Batch 1: 503 with Retry-After 1 s, then 429 (backoff), then accepted with 5 rejected.
    // Batch 2: 400, permanent: rejected, not retried. Batch 3: 502, then accepted.
    let script = vec![
        Answer::Status(503, Some(1)),
        Answer::Status(429, None),
        Answer::Ok(5),
        Answer::Status(400, None),
        Answer::Status(502, None),
        Answer::Ok(0),
    ];
    let (addr, server) = start_http("127.0.0.1:0".parse().unwrap(), None, script);
    let mut o = options(format!("http://{addr}"), OtlpProtocol::HttpProtobuf);
    o.batch_records = 300;
    let mut sink = OtlpSink::new(o).unwrap();
    // One batch at a time, so that each meets its scripted answers.
    for (i, c) in records(0..900).chunks(300).enumerate() {
        sink.write(c).unwrap();
        wait_for(&mut sink, "batch settled", |m| {
            m.acknowledged + m.rejected == 300 * (i as u64 + 1)
        });
    }
    let m = sink.metrics();
    assert_eq!(
        (m.acknowledged, m.rejected, m.lost, m.retried),
        (295 + 300, 5 + 300, 0, 2 * 300 + 300),
        "{m:?}"
    );
    let e = sink
        .close()
        .expect_err("rejected records make close report them")
        .to_string();
    assert!(e.contains("305 rejected"), "{e}");
    let st = server.0.lock().unwrap();
    assert_eq!(st.attempts, 6);
    // Retry-After: 1 was honoured (the backoff alone would have been ~20 ms).
    let waited = st.attempt_times[1] - st.attempt_times[0];
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    // Accepted requests hold batches 1 and 3, each record once.
    assert_eq!(ids(&st.logs), (0..300).chain(600..900).collect::<Vec<_>>());
    for (path, auth, ctype, enc) in &st.seen {
        assert_eq!(path, "/v1/logs");
        assert_eq!(auth, SECRET);
        assert_eq!(ctype, "application/x-protobuf");
        assert_eq!(enc, "gzip");
    }
}

#[test]
fn http_over_tls_and_mtls_delivers_every_record_once_with_headers() {
    let pki = Pki::new("http");
    for mtls in [false, true] {
        let acceptor = server_tls(&pki, "server", mtls.then_some("ca.pem"));
        let (addr, server) = start_http("127.0.0.1:0".parse().unwrap(), Some(acceptor), vec![]);
        let mut o = options(
            format!("https://localhost:{}", addr.port()),
            OtlpProtocol::HttpProtobuf,
        );
        o.tls = tls_files(&pki, "ca.pem", mtls);
        o.metrics = true;
        let mut sink = OtlpSink::new(o).unwrap();
        let n = 2000;
        for c in records(0..n).chunks(250) {
            sink.write(c).unwrap();
        }
        wait_for(&mut sink, "all acknowledged", |m| {
            m.acknowledged == n as u64
        });
        sink.close().unwrap();
        let st = server.0.lock().unwrap();
        let mut got = ids(&st.logs);
        assert_eq!(got.len(), n as usize, "mtls={mtls}: exactly once");
        got.sort();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
        assert!(st.metrics >= 1, "metrics on /v1/metrics");
        assert!(st.seen.iter().all(|s| s.1 == SECRET));
    }
    // mTLS server without a client certificate; untrusted server; wrong name: errors at start.
    let (addr, _s) = start_http(
        "127.0.0.1:0".parse().unwrap(),
        Some(server_tls(&pki, "server", Some("ca.pem"))),
        vec![],
    );
    let mut o = options(
        format!("https://localhost:{}", addr.port()),
        OtlpProtocol::HttpProtobuf,
    );
    o.tls = tls_files(&pki, "ca.pem", false);
    let e = OtlpSink::new(o)
        .err()
        .expect("no client certificate")
        .to_string();
    assert_start_error(&e, "TLS handshake");
    for cert in ["other-server", "wrong-name"] {
        let (addr, _s) = start_http(
            "127.0.0.1:0".parse().unwrap(),
            Some(server_tls(&pki, cert, None)),
            vec![],
        );
        let mut o = options(
            format!("https://localhost:{}", addr.port()),
            OtlpProtocol::HttpProtobuf,
        );
        o.tls = tls_files(&pki, "ca.pem", false);
        let e = OtlpSink::new(o).err().expect(cert).to_string();
        assert_start_error(&e, "TLS handshake");
    }
}

#[test]
fn http_outage_spills_to_the_spool_and_replays_exactly_once_in_order() {
    let pki = Pki::new("http-spool");
    // Reserve a port, leave it closed: the receiver is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut o = options(
        format!("https://localhost:{port}"),
        OtlpProtocol::HttpProtobuf,
    );
    o.tls = tls_files(&pki, "ca.pem", true);
    o.batch_records = 100;
    o.queue_records = 300;
    o.close_timeout = Duration::from_millis(500);
    o.retry.max_elapsed = Duration::MAX;
    let dir = std::env::temp_dir().join(format!("flowlens-http-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut so = SpoolOptions::new(&dir);
    so.segment_bytes = 64 * 1024;
    so.grace = Duration::from_secs(20);
    so.close_reserve = Duration::from_millis(800);
    so.replay_chunk = 500;
    let mut sink = SpooledSink::new(OtlpSink::new(o).unwrap(), so).unwrap();
    let n = 3000;
    for c in records(0..n).chunks(100) {
        sink.write(c).unwrap();
        sink.tick().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    sink.tick().unwrap();
    let m = sink.metrics();
    assert_eq!((m.acknowledged, m.lost), (0, 0), "{m:?}");
    assert!(m.spooled >= (n - 400) as u64, "most records on disk: {m:?}");
    let (_, server) = start_http(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Some(server_tls(&pki, "server", Some("ca.pem"))),
        vec![],
    );
    wait_for(
        &mut sink,
        "all acknowledged after the receiver came up",
        |m| m.acknowledged == n as u64 && m.spooled == 0,
    );
    sink.close().unwrap();
    let st = server.0.lock().unwrap();
    assert_eq!(
        ids(&st.logs),
        (0..n).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
