//! OTLP sink: flow records as OpenTelemetry log records, optional capacity metrics, over
//! OTLP/gRPC or OTLP/HTTP (binary protobuf), either with TLS (`https://`, optionally mTLS).
//!
//! Layout (as Vector's sinks): [`encode`] builds requests (pure), [`service`] sends them with the
//! OTLP retry rules, [`http`] is the OTLP/HTTP transport, [`tls`] the trust roots, client
//! identity and the handshake check at start, this module owns the queue and the worker.
//!
//! Threading: the [`Sink`] trait is synchronous and the collector calls it from its own loop, so
//! the sink owns one worker thread running a single-threaded tokio runtime with the gRPC client.
//! `write` only moves records into a bounded in-memory queue (it never waits for the network).
//! The worker takes up to `batch_records` records at a time, builds one export request, and sends
//! it with retries; one request is in flight at a time, so records are delivered in order.
//!
//! Accounting (every record ends in exactly one of these): `acknowledged` (the server accepted
//! it), `rejected` (refused for good: counted from `partial_success.rejected_log_records`, or the
//! whole request on a non-retryable error), `lost` (did not fit into the queue, retries ran out,
//! or still unacknowledged when `close` gave up). `queued` is the queue plus the request in flight.

pub mod encode;
pub mod http;
pub mod service;
pub mod tls;

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use flowlens_schema::record::FlowRecord;

use crate::log_limit::SharedRateLimited;
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::logs_service_client::LogsServiceClient,
        metrics::v1::metrics_service_client::MetricsServiceClient,
    },
    resource::v1::Resource,
};
use prost::Message;
use tonic::{
    codec::CompressionEncoding,
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};

use crate::{Result, Sink, SinkError, SinkMetrics};
use encode::MetricsAggregator;
use service::{Delivery, RetryError, RetryPolicy, Verdict, send_with_retry};
pub use tls::{Headers, TlsFiles};

/// The OpenTelemetry default OTLP/gRPC endpoint (used for a bare `--sink otlp` when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is unset).
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4317";
/// The OpenTelemetry default OTLP/HTTP endpoint.
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";

/// The OTLP transport (`--otlp-protocol`, `OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (default port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies (default port 4318).
    HttpProtobuf,
}

impl std::str::FromStr for OtlpProtocol {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            "http/json" => Err("http/json is not supported; use http/protobuf or grpc".into()),
            _ => Err(format!(
                "unknown OTLP protocol {s:?}: expected grpc or http/protobuf"
            )),
        }
    }
}

impl std::fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        })
    }
}

/// Default records per export request (about 0.5-1 MB uncompressed, well under the 4 MiB gRPC
/// default message limit of receivers).
pub const DEFAULT_BATCH_RECORDS: usize = 2048;
/// Default bound of the in-memory queue, in records (a few hundred bytes each): 32 requests of
/// the default batch size. Past it records go to the on-disk spool, so a larger queue buys no
/// delivery, only memory (it comes off `--max-memory`'s flow table share, twice under a spool:
/// issue 17).
pub const DEFAULT_QUEUE_RECORDS: usize = 65_536;

/// Options of the OTLP sink.
#[derive(Clone, Debug)]
pub struct OtlpOptions {
    /// `http://HOST:PORT` or `https://HOST:PORT` of an OTLP receiver (for OTLP/HTTP the base
    /// URL: `/v1/logs` and `/v1/metrics` are appended).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// CA and client identity of an `https://` endpoint (ignored for `http://`).
    pub tls: TlsFiles,
    /// Extra headers of every request (values are secrets: never logged).
    pub headers: Headers,
    pub host: Arc<str>,
    /// Records per export request.
    pub batch_records: usize,
    /// Records waiting in memory at most; past this, records are counted as lost.
    pub queue_records: usize,
    /// Timeout of one export attempt.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// `close` waits this long for the queue to drain; the rest is reported lost.
    pub close_timeout: Duration,
    /// Export byte/packet counters (`--otlp-metrics`) every `metrics_interval` and at close.
    pub metrics: bool,
    pub metrics_interval: Duration,
    /// Most workload series of the `--otlp-metrics` workload counters
    /// ([`encode::MAX_WORKLOAD_SERIES`]; tests set fewer).
    pub workload_series_cap: usize,
}

impl OtlpOptions {
    pub fn new(endpoint: impl Into<String>, host: Arc<str>) -> Self {
        OtlpOptions {
            endpoint: endpoint.into(),
            protocol: OtlpProtocol::default(),
            tls: TlsFiles::default(),
            headers: Headers::default(),
            host,
            batch_records: DEFAULT_BATCH_RECORDS,
            queue_records: DEFAULT_QUEUE_RECORDS,
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            close_timeout: Duration::from_secs(30),
            metrics: false,
            metrics_interval: Duration::from_secs(10),
            workload_series_cap: encode::MAX_WORKLOAD_SERIES,
        }
    }
}

/// Validates an OTLP endpoint (`http://HOST:PORT` or `https://HOST:PORT`); returns it
/// normalised.
pub fn parse_endpoint(s: &str) -> std::result::Result<String, String> {
    if !s.starts_with("http://") && !s.starts_with("https://") {
        return Err(
            "expected an http://HOST:PORT or https://HOST:PORT endpoint, as in OTEL_EXPORTER_OTLP_ENDPOINT"
                .into(),
        );
    }
    Endpoint::from_shared(s.to_string()).map_err(|e| format!("bad endpoint URL: {e}"))?;
    Ok(s.trim_end_matches('/').to_string())
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acknowledged: AtomicU64,
    retried: AtomicU64,
    rejected: AtomicU64,
    lost: AtomicU64,
    in_flight: AtomicU64,
    /// Records with a final outcome, in queue order (one request in flight: FIFO).
    settled: AtomicU64,
    /// Metric exports that failed for good (cumulative sums: the next one makes up for it).
    metric_exports_failed: AtomicU64,
}

struct Shared {
    queue: Mutex<VecDeque<FlowRecord>>,
    wake: tokio::sync::Notify,
    closing: AtomicBool,
    /// Set by `close`: the worker stops retrying at this instant.
    deadline: Mutex<Option<Instant>>,
    counters: Counters,
    metrics: Mutex<MetricsAggregator>,
    /// Repeating warnings and errors are logged at most once per interval (see `log_limit`).
    log: LogLimits,
}

#[derive(Default)]
struct LogLimits {
    queue_full: SharedRateLimited,
    partial: SharedRateLimited,
    refused: SharedRateLimited,
    gave_up: SharedRateLimited,
    metrics_failed: SharedRateLimited,
}

impl Shared {
    fn deadline(&self) -> Option<Instant> {
        self.deadline.lock().map(|d| *d).unwrap_or(None)
    }
}

/// The OTLP sink (see the module documentation).
pub struct OtlpSink {
    name: String,
    opts: OtlpOptions,
    shared: Arc<Shared>,
    worker: Option<std::thread::JoinHandle<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl OtlpSink {
    /// Validates the options and starts the worker (the connection itself is made lazily, so a
    /// receiver that is down at start is retried like any other outage).
    pub fn new(opts: OtlpOptions) -> Result<Self> {
        let name = format!("otlp:{}", opts.endpoint);
        let bad = |reason: String| SinkError::Spec {
            spec: name.clone(),
            reason,
        };
        let endpoint = parse_endpoint(&opts.endpoint).map_err(bad)?;
        if opts.batch_records == 0 || opts.queue_records == 0 {
            return Err(bad("batch and queue sizes must be at least 1".into()));
        }
        opts.headers.validate().map_err(bad)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SinkError::io("starting the OTLP runtime", e))?;
        let transport = rt
            .block_on(Transport::new(&endpoint, &opts))
            .map_err(SinkError::Otlp)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            deadline: Mutex::new(None),
            counters: Counters::default(),
            metrics: Mutex::new(MetricsAggregator::with_workload_cap(
                opts.workload_series_cap,
            )),
            log: LogLimits::default(),
        });
        let (done_tx, done) = std::sync::mpsc::channel();
        let w = Worker {
            opts: opts.clone(),
            shared: shared.clone(),
            resource: encode::resource(&opts.host),
            start_ns: now_ns(),
        };
        let worker = std::thread::Builder::new()
            .name("flowlens-otlp".into())
            .spawn(move || {
                rt.block_on(w.run(transport));
                let _ = done_tx.send(());
            })
            .map_err(|e| SinkError::io("starting the OTLP worker thread", e))?;
        Ok(OtlpSink {
            name,
            opts,
            shared,
            worker: Some(worker),
            done,
        })
    }

    fn queued(&self) -> u64 {
        let q = self.shared.queue.lock().map(|q| q.len()).unwrap_or(0) as u64;
        q + self.shared.counters.in_flight.load(Relaxed)
    }
}

impl Sink for OtlpSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.opts.metrics
            && let Ok(mut m) = self.shared.metrics.lock()
            && m.add(records)
        {
            tracing::warn!(
                cap = m.workload_cap,
                "OTLP workload metrics reached their series cap: records of further workload pairs are counted in the overflow series (flowlens.overflow=true) and in {}",
                encode::METRIC_WORKLOAD_OVERFLOW
            );
        }
        let dropped = {
            let mut q = self
                .shared
                .queue
                .lock()
                .map_err(|_| SinkError::Otlp("queue lock poisoned".into()))?;
            let room = self.opts.queue_records.saturating_sub(q.len());
            let take = room.min(records.len());
            q.extend(records[..take].iter().cloned());
            (records.len() - take) as u64
        };
        self.shared.counters.settled.fetch_add(dropped, Relaxed);
        self.shared.wake.notify_one();
        if dropped > 0 {
            self.shared.counters.lost.fetch_add(dropped, Relaxed);
        }
        if dropped > 0
            && let Some(suppressed) = self.shared.log.queue_full.check()
        {
            tracing::warn!(
                sink = %self.name,
                dropped,
                suppressed,
                bound = self.opts.queue_records,
                "OTLP queue full (receiver slow or down); records past the bound are lost"
            );
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        let Some(worker) = self.worker.take() else {
            return Ok(());
        };
        if let Ok(mut d) = self.shared.deadline.lock() {
            *d = Some(Instant::now() + self.opts.close_timeout);
        }
        self.shared.closing.store(true, Relaxed);
        self.shared.wake.notify_one();
        // The worker stops retrying at the deadline; an attempt in flight is cut there too.
        let finished = self
            .done
            .recv_timeout(self.opts.close_timeout + Duration::from_secs(2))
            .is_ok();
        if finished {
            let _ = worker.join();
        }
        let c = &self.shared.counters;
        let unresolved = if finished {
            0
        } else {
            // Detached worker: whatever it still holds is lost for our accounting.
            self.queued()
        };
        if unresolved > 0 {
            c.lost.fetch_add(unresolved, Relaxed);
        }
        let m = self.metrics();
        if m.lost > 0 || m.rejected > 0 {
            return Err(SinkError::Otlp(format!(
                "{} records not delivered ({} lost, {} rejected by the receiver)",
                m.lost + m.rejected,
                m.lost,
                m.rejected
            )));
        }
        Ok(())
    }

    fn records_lost(&self) -> u64 {
        self.shared.counters.lost.load(Relaxed)
    }

    fn room(&self) -> u64 {
        let q = self
            .shared
            .queue
            .lock()
            .map(|q| q.len())
            .unwrap_or(usize::MAX);
        self.opts.queue_records.saturating_sub(q) as u64
    }

    fn settled(&self) -> Option<u64> {
        Some(self.shared.counters.settled.load(Relaxed))
    }

    fn metrics(&self) -> SinkMetrics {
        let c = &self.shared.counters;
        SinkMetrics {
            sent: c.sent.load(Relaxed),
            acknowledged: c.acknowledged.load(Relaxed),
            retried: c.retried.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            queued: if self.worker.is_some() {
                self.queued()
            } else {
                0
            },
            lost: c.lost.load(Relaxed),
            ..SinkMetrics::default()
        }
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        if self.worker.is_some()
            && let Err(e) = self.close()
        {
            tracing::error!(sink = %self.name, error = %e, "closing OTLP sink on drop");
        }
    }
}

struct Worker {
    opts: OtlpOptions,
    shared: Arc<Shared>,
    resource: Resource,
    start_ns: u64,
}

impl Worker {
    async fn run(self, transport: Transport) {
        let metrics = &transport;
        let c = &self.shared.counters;
        let mut last_metrics = Instant::now();
        let mut batch: Vec<FlowRecord> = Vec::with_capacity(self.opts.batch_records);
        loop {
            batch.clear();
            if let Ok(mut q) = self.shared.queue.lock() {
                let n = q.len().min(self.opts.batch_records);
                batch.extend(q.drain(..n));
                c.in_flight.store(n as u64, Relaxed);
            }
            if batch.is_empty() {
                if self.shared.closing.load(Relaxed) {
                    break;
                }
                if self.opts.metrics && last_metrics.elapsed() >= self.opts.metrics_interval {
                    self.export_metrics(metrics).await;
                    last_metrics = Instant::now();
                }
                let wait = if self.opts.metrics {
                    self.opts.metrics_interval
                } else {
                    Duration::from_secs(3600)
                };
                let _ = tokio::time::timeout(wait, self.shared.wake.notified()).await;
                continue;
            }
            let n = batch.len() as u64;
            if self.shared.deadline().is_some_and(|d| Instant::now() >= d) {
                // Shutdown deadline passed: don't start new requests.
                c.lost.fetch_add(n, Relaxed);
                c.in_flight.store(0, Relaxed);
                c.settled.fetch_add(n, Relaxed);
                continue;
            }
            let req = encode::logs_request(&self.resource, &batch, now_ns());
            c.sent.fetch_add(n, Relaxed);
            let delivery = transport
                .export_logs(&self.opts.retry, || self.shared.deadline(), req)
                .await;
            let retries = match &delivery {
                Delivery::Accepted { retries, .. }
                | Delivery::Refused { retries, .. }
                | Delivery::GaveUp { retries, .. } => *retries as u64,
            };
            c.retried.fetch_add(retries * n, Relaxed);
            match delivery {
                Delivery::Accepted {
                    rejected, message, ..
                } => {
                    let rejected = rejected.min(n);
                    c.acknowledged.fetch_add(n - rejected, Relaxed);
                    if rejected > 0 {
                        c.rejected.fetch_add(rejected, Relaxed);
                    }
                    if rejected > 0
                        && let Some(suppressed) = self.shared.log.partial.check()
                    {
                        tracing::warn!(endpoint = %self.opts.endpoint, rejected, suppressed, message = %message, "OTLP receiver rejected log records (partial success; not retried)");
                    }
                }
                Delivery::Refused { status, .. } => {
                    c.rejected.fetch_add(n, Relaxed);
                    if let Some(suppressed) = self.shared.log.refused.check() {
                        tracing::error!(endpoint = %self.opts.endpoint, records = n, suppressed, status = %status, "OTLP receiver refused the export (not retryable); records rejected");
                    }
                }
                Delivery::GaveUp { status, retries } => {
                    c.lost.fetch_add(n, Relaxed);
                    if self.shared.deadline().is_some() {
                        // Shutdown: the spool (if any) keeps these; `close` reports the outcome.
                        tracing::warn!(endpoint = %self.opts.endpoint, records = n, retries, status = %status, "OTLP export unfinished at the shutdown deadline");
                    } else if let Some(suppressed) = self.shared.log.gave_up.check() {
                        tracing::error!(endpoint = %self.opts.endpoint, records = n, retries, suppressed, status = %status, "OTLP export failed after retries; records lost");
                    }
                }
            }
            c.in_flight.store(0, Relaxed);
            c.settled.fetch_add(n, Relaxed);
            if self.opts.metrics && last_metrics.elapsed() >= self.opts.metrics_interval {
                self.export_metrics(metrics).await;
                last_metrics = Instant::now();
            }
        }
        if self.opts.metrics {
            self.export_metrics(metrics).await;
        }
    }

    async fn export_metrics(&self, transport: &Transport) {
        let req = match self.shared.metrics.lock() {
            Ok(m) if !m.totals.is_empty() => m.request(&self.resource, self.start_ns, now_ns()),
            _ => return,
        };
        let delivery = transport
            .export_metrics(&self.opts.retry, || self.shared.deadline(), req)
            .await;
        match delivery {
            Delivery::Accepted { rejected: 0, .. } => {}
            other => {
                self.shared
                    .counters
                    .metric_exports_failed
                    .fetch_add(1, Relaxed);
                if let Some(suppressed) = self.shared.log.metrics_failed.check() {
                    tracing::warn!(endpoint = %self.opts.endpoint, outcome = ?other, suppressed, "OTLP metrics export not fully accepted (the next cumulative export supersedes it)");
                }
            }
        }
    }
}

/// A failed attempt of either transport.
#[derive(Debug)]
enum ExportError {
    Grpc(tonic::Status),
    Http(http::HttpFailure),
}

impl RetryError for ExportError {
    fn verdict(&self) -> Verdict {
        match self {
            ExportError::Grpc(s) => s.verdict(),
            ExportError::Http(h) => h.verdict(),
        }
    }
    fn text(&self) -> String {
        match self {
            ExportError::Grpc(s) => s.text(),
            ExportError::Http(h) => h.text(),
        }
    }
    fn deadline() -> Self {
        ExportError::Grpc(<tonic::Status as RetryError>::deadline())
    }
}

/// The OTLP client of one sink: gRPC (tonic) or HTTP (reqwest), TLS already checked.
/// One per sink, never moved in a hot path: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Transport {
    Grpc {
        logs: LogsServiceClient<tonic::transport::Channel>,
        metrics: MetricsServiceClient<tonic::transport::Channel>,
        headers: tonic::metadata::MetadataMap,
    },
    Http {
        client: reqwest::Client,
        logs_url: String,
        metrics_url: String,
    },
}

/// `https://`: reads the TLS files and checks one handshake with the receiver (a receiver that
/// does not answer is retried later, like any outage; one whose certificate is not trusted or
/// does not match the name is an error now).
async fn check_tls(
    uri: &tonic::codegen::http::Uri,
    opts: &OtlpOptions,
    alpn: &[&[u8]],
) -> std::result::Result<tls::TlsMaterial, String> {
    let material = tls::load(&opts.tls, alpn)?;
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(443);
    let probe_timeout = opts.request_timeout.min(Duration::from_secs(5));
    match tls::probe(material.config.clone(), host, port, probe_timeout).await? {
        true => tracing::debug!(endpoint = %opts.endpoint, "OTLP TLS handshake checked"),
        false => {
            tracing::warn!(endpoint = %opts.endpoint, "OTLP receiver not reachable yet; its TLS certificate is checked when it answers (records queue meanwhile)")
        }
    }
    Ok(material)
}

impl Transport {
    async fn new(endpoint: &str, opts: &OtlpOptions) -> std::result::Result<Self, String> {
        let uri: tonic::codegen::http::Uri = endpoint
            .parse()
            .map_err(|e| format!("bad endpoint URL: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        if !https && opts.tls != TlsFiles::default() {
            return Err(
                "--otlp-ca/--otlp-client-cert/--otlp-client-key need an https:// endpoint".into(),
            );
        }
        match opts.protocol {
            OtlpProtocol::Grpc => {
                let mut ep = Endpoint::from_shared(endpoint.to_string())
                    .map_err(|e| format!("bad endpoint URL: {e}"))?
                    .timeout(opts.request_timeout)
                    .connect_timeout(opts.request_timeout.min(Duration::from_secs(5)))
                    .tcp_nodelay(true);
                if https {
                    let m = check_tls(&uri, opts, &[b"h2"]).await?;
                    let mut tc = ClientTlsConfig::new();
                    tc = match &m.ca_pem {
                        Some(pem) => tc.ca_certificate(Certificate::from_pem(pem)),
                        None => tc.with_native_roots(),
                    };
                    if let Some((cert, key)) = &m.identity_pem {
                        tc = tc.identity(Identity::from_pem(cert, key));
                    }
                    ep = ep.tls_config(tc).map_err(|e| format!("TLS setup: {e}"))?;
                }
                let mut headers = tonic::metadata::MetadataMap::new();
                for (k, v) in &opts.headers.0 {
                    let key = tonic::metadata::AsciiMetadataKey::from_bytes(
                        k.to_ascii_lowercase().as_bytes(),
                    )
                    .map_err(|_| format!("header {k:?}: not a valid header name"))?;
                    let value: tonic::metadata::AsciiMetadataValue = v.parse().map_err(|_| {
                        format!("header {k:?}: the value has characters a header cannot carry")
                    })?;
                    headers.append(key, value);
                }
                let channel = ep.connect_lazy();
                Ok(Transport::Grpc {
                    logs: LogsServiceClient::new(channel.clone())
                        .send_compressed(CompressionEncoding::Gzip)
                        .accept_compressed(CompressionEncoding::Gzip),
                    metrics: MetricsServiceClient::new(channel)
                        .send_compressed(CompressionEncoding::Gzip)
                        .accept_compressed(CompressionEncoding::Gzip),
                    headers,
                })
            }
            OtlpProtocol::HttpProtobuf => {
                let mut hm = reqwest::header::HeaderMap::new();
                for (k, v) in &opts.headers.0 {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| format!("header {k:?}: not a valid header name"))?;
                    let mut value = reqwest::header::HeaderValue::from_str(v).map_err(|_| {
                        format!("header {k:?}: the value has characters a header cannot carry")
                    })?;
                    value.set_sensitive(true);
                    hm.append(name, value);
                }
                let mut b = reqwest::Client::builder()
                    .default_headers(hm)
                    .timeout(opts.request_timeout)
                    .connect_timeout(opts.request_timeout.min(Duration::from_secs(5)))
                    .tcp_nodelay(true)
                    .user_agent(concat!("flowlens/", env!("CARGO_PKG_VERSION")));
                if https {
                    let m = check_tls(&uri, opts, &[b"h2", b"http/1.1"]).await?;
                    b = b.tls_backend_preconfigured((*m.config).clone());
                }
                let client = b.build().map_err(|e| format!("HTTP client setup: {e}"))?;
                Ok(Transport::Http {
                    client,
                    logs_url: http::signal_url(endpoint, "logs"),
                    metrics_url: http::signal_url(endpoint, "metrics"),
                })
            }
        }
    }

    async fn export_logs(
        &self,
        policy: &RetryPolicy,
        deadline: impl Fn() -> Option<Instant>,
        req: opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
    ) -> Delivery {
        match self {
            Transport::Grpc { logs, headers, .. } => {
                send_with_retry(policy, deadline, || {
                    let mut client = logs.clone();
                    let mut r = tonic::Request::new(req.clone());
                    *r.metadata_mut() = headers.clone();
                    async move {
                        let resp = client.export(r).await.map_err(ExportError::Grpc)?;
                        Ok::<_, ExportError>(
                            resp.into_inner()
                                .partial_success
                                .map(|p| (p.rejected_log_records.max(0) as u64, p.error_message))
                                .unwrap_or_default(),
                        )
                    }
                })
                .await
            }
            Transport::Http {
                client, logs_url, ..
            } => {
                let body = http::gzip(&req.encode_to_vec());
                send_with_retry(policy, deadline, || {
                    let body = body.clone();
                    async move {
                        let resp: opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse =
                            http::post(client, logs_url, body).await.map_err(ExportError::Http)?;
                        Ok::<_, ExportError>(resp
                            .partial_success
                            .map(|p| (p.rejected_log_records.max(0) as u64, p.error_message))
                            .unwrap_or_default())
                    }
                })
                .await
            }
        }
    }

    async fn export_metrics(
        &self,
        policy: &RetryPolicy,
        deadline: impl Fn() -> Option<Instant>,
        req: opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
    ) -> Delivery {
        match self {
            Transport::Grpc {
                metrics, headers, ..
            } => {
                send_with_retry(policy, deadline, || {
                    let mut client = metrics.clone();
                    let mut r = tonic::Request::new(req.clone());
                    *r.metadata_mut() = headers.clone();
                    async move {
                        let resp = client.export(r).await.map_err(ExportError::Grpc)?;
                        Ok::<_, ExportError>(
                            resp.into_inner()
                                .partial_success
                                .map(|p| (p.rejected_data_points.max(0) as u64, p.error_message))
                                .unwrap_or_default(),
                        )
                    }
                })
                .await
            }
            Transport::Http {
                client,
                metrics_url,
                ..
            } => {
                let body = http::gzip(&req.encode_to_vec());
                send_with_retry(policy, deadline, || {
                    let body = body.clone();
                    async move {
                        let resp: opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse =
                            http::post(client, metrics_url, body).await.map_err(ExportError::Http)?;
                        Ok::<_, ExportError>(resp
                            .partial_success
                            .map(|p| (p.rejected_data_points.max(0) as u64, p.error_message))
                            .unwrap_or_default())
                    }
                })
                .await
            }
        }
    }
}
