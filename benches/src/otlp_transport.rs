//! OTLP/HTTP vs OTLP/gRPC (issue 14): records/s through the real OTLP sink (encode, gzip,
//! send, acknowledgement) to an in-process loopback receiver per protocol. Both receivers do
//! the same work per request (gunzip, protobuf decode, count the log records) and run on one
//! tokio thread each; the sink runs its own worker thread as in production. Plain TCP (no TLS),
//! so the number compares the transports, not the ciphers.
//!
//! `flowlens-bench otlp-transport` runs only this section (no root needed) and merges its
//! numbers into an existing `summary.json`; the full run includes it.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::Read,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use flowlens_schema::record::FlowRecord;
use flowlens_sinks::{
    Sink,
    otlp::{DEFAULT_BATCH_RECORDS, OtlpOptions, OtlpProtocol, OtlpSink},
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
    logs_service_server::{LogsService, LogsServiceServer},
};
use prost::Message;

fn count(req: &ExportLogsServiceRequest) -> u64 {
    req.resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len() as u64)
        .sum()
}

#[derive(Clone)]
struct GrpcReceiver(Arc<AtomicU64>);

#[tonic::async_trait]
impl LogsService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.fetch_add(count(request.get_ref()), Relaxed);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Starts a receiver in its own thread (lives until the process ends); returns its address
/// and its record counter.
pub(crate) fn start(protocol: OtlpProtocol) -> Result<(SocketAddr, Arc<AtomicU64>)> {
    let counter = Arc::new(AtomicU64::new(0));
    let c = counter.clone();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                return;
            };
            match protocol {
                OtlpProtocol::Grpc => {
                    let incoming = tokio_stream_of(listener);
                    let _ = tonic::transport::Server::builder()
                        .add_service(
                            LogsServiceServer::new(GrpcReceiver(c))
                                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                                .max_decoding_message_size(64 << 20),
                        )
                        .serve_with_incoming(incoming)
                        .await;
                }
                OtlpProtocol::HttpProtobuf => loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let c = c.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let c = c.clone();
                            async move { http_export(c, req).await }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                            .await;
                    });
                },
            }
        });
    });
    Ok((addr, counter))
}

fn tokio_stream_of(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
}

async fn http_export(
    c: Arc<AtomicU64>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let gz = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut body = Vec::new();
    let status = match flate2::read::GzDecoder::new(gz.as_ref()).read_to_end(&mut body) {
        Ok(_) => match ExportLogsServiceRequest::decode(body.as_slice()) {
            Ok(r) => {
                c.fetch_add(count(&r), Relaxed);
                200
            }
            Err(_) => 400,
        },
        Err(_) => 400,
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::from(
        ExportLogsServiceResponse::default().encode_to_vec(),
    )));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    Ok(resp)
}

/// Records/s of one run: `records` written in chunks of 1024, timed until every one is
/// acknowledged (and counted by the receiver).
fn one_run(protocol: OtlpProtocol, records: &[FlowRecord]) -> Result<f64> {
    let (addr, received) = start(protocol)?;
    let mut o = OtlpOptions::new(format!("http://{addr}"), "bench-host".into());
    o.protocol = protocol;
    o.batch_records = DEFAULT_BATCH_RECORDS;
    o.queue_records = records.len();
    o.request_timeout = Duration::from_secs(30);
    let mut sink = OtlpSink::new(o)?;
    let n = records.len() as u64;
    let t = Instant::now();
    for c in records.chunks(1024) {
        sink.write(c)?;
    }
    while sink.metrics().acknowledged < n {
        ensure!(
            t.elapsed() < Duration::from_secs(300),
            "{protocol}: {:?} after 300 s",
            sink.metrics()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = t.elapsed().as_secs_f64();
    sink.close()?;
    ensure!(
        received.load(Relaxed) == n,
        "{protocol}: receiver counted {} of {n}",
        received.load(Relaxed)
    );
    Ok(n as f64 / secs)
}

/// Compressed bytes per record of one default-size request at gzip level `level` (tonic's
/// gzip is fixed at 6; the OTLP/HTTP transport uses 1, `flate2::Compression::fast`).
fn gzip_bytes_per_record(records: &[FlowRecord], level: u32) -> f64 {
    use std::io::Write;
    let batch = &records[..records.len().min(DEFAULT_BATCH_RECORDS)];
    let req = flowlens_sinks::otlp::encode::logs_request(
        &flowlens_sinks::otlp::encode::resource("bench-host"),
        batch,
        1,
    );
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    let _ = e.write_all(&req.encode_to_vec());
    e.finish().map(|v| v.len()).unwrap_or(0) as f64 / batch.len() as f64
}

/// `rounds` runs per protocol, alternating; min, median and max records/s of each.
pub fn run(
    records: &[FlowRecord],
    rounds: usize,
    summary: &mut BTreeMap<String, f64>,
) -> Result<()> {
    for (name, level) in [("http", 1), ("grpc", 6)] {
        let b = gzip_bytes_per_record(records, level);
        println!("otlp {name}: gzip level {level}: {b:.1} bytes/record on the wire");
        summary.insert(format!("otlp_{name}_gzip_bytes_per_record"), b);
    }
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..rounds {
        for (name, p) in [
            ("grpc", OtlpProtocol::Grpc),
            ("http", OtlpProtocol::HttpProtobuf),
        ] {
            rates.entry(name).or_default().push(one_run(p, records)?);
        }
    }
    for (name, mut v) in rates {
        v.sort_by(f64::total_cmp);
        println!(
            "otlp {name}: {:.0} records/s median (min {:.0}, max {:.0}, {} runs of {} records)",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1],
            v.len(),
            records.len()
        );
        summary.insert(format!("otlp_{name}_send_records_per_sec"), v[v.len() / 2]);
        summary.insert(format!("otlp_{name}_send_records_per_sec_min"), v[0]);
        summary.insert(
            format!("otlp_{name}_send_records_per_sec_max"),
            v[v.len() - 1],
        );
    }
    Ok(())
}
