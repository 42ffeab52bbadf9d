//! Where flow records go. Every sink implements [`Sink`]; [`SinkSpec`] parses the user-facing
//! `--sink KIND:TARGET` strings.
//!
//! Sinks are called from the collector's export step with each batch of ended flows, in order.
//! A sink that fails returns an error; the collector counts and logs it (the records of that
//! batch are reported as lost, never silently).
//!
//! Modules:
//! * [`build`]: specs + [`build::BuildOptions`] → `Vec<Box<dyn Sink>>`, with each sink's
//!   delivery policy (which sinks get a spool or a journal, retry and close timeouts under a
//!   spool, Kafka's `message.timeout.ms`, acknowledgement latency). The collector calls only
//!   this.
//! * One module per destination: [`parquet`] (local files: `parquet::writer` for one file,
//!   `parquet::journal` for its write-ahead journal), [`s3`] (Parquet files uploaded to
//!   object storage), [`kafka`], [`otlp`], [`stdout`].
//! * [`spool`]: the on-disk spool ([`spool::SpooledSink`] wraps a network sink; its store is
//!   also the Parquet journal's format). [`log_limit`]: rate-limited log lines.
//!
//! The directory and file-name layout of Parquet output is `flowlens_schema::layout`, shared
//! with the report.

pub mod build;
pub mod ipfix;
pub mod kafka;
pub mod log_limit;
pub mod otlp;
pub mod parquet;
pub mod s3;
pub mod spool;
pub mod stdout;
pub mod worker;

use std::path::PathBuf;

use flowlens_schema::record::FlowRecord;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The I/O error is part of the message, not a `source`, so a one-line `{:#}` report does
    /// not repeat it.
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
    #[error("parquet: {0}")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// Displayed as the context alone; the librdkafka error is the `source` (anyhow's `{:#}`
    /// prints both once).
    #[error("{context}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("{sink}: {records} records were not delivered (counted as lost or rejected)")]
    Lost { sink: String, records: u64 },
    #[error("otlp: {0}")]
    Otlp(String),
    #[error("upload: {0}")]
    Upload(String),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("invalid sink {spec:?}: {reason}")]
    Spec { spec: String, reason: String },
    /// Building a sink failed ([`build::build`]): `sink parquet:/x: spool: …`, one line with
    /// every cause (a Kafka client error included).
    #[error("sink {sink}: {stage}{}", with_causes(error))]
    Build {
        sink: String,
        /// What failed beyond the sink itself (`"spool: "`), or empty.
        stage: &'static str,
        error: Box<SinkError>,
    },
}

impl SinkError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SinkError::Io {
            context: context.into(),
            error: source,
        }
    }
}

pub type Result<T, E = SinkError> = std::result::Result<T, E>;

/// `error: cause: cause…` in one line.
fn with_causes(e: &SinkError) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// A destination for flow records.
pub trait Sink: Send {
    /// Short name for logs (`parquet:/var/lib/flows`).
    fn name(&self) -> &str;
    /// Accepts a batch of records. The sink may buffer them. On `Err` the sink keeps none of
    /// the batch (all or nothing), so a [`spool::SpooledSink`] can spool it instead.
    fn write(&mut self, records: &[FlowRecord]) -> Result<()>;
    /// [`Sink::write`] of a batch shared with other sinks: [`worker::ThreadedSink`] keeps the
    /// batch (no copy) for its thread. The default writes it at once.
    fn write_shared(&mut self, batch: &worker::Batch) -> Result<()> {
        self.write(batch)
    }
    /// Puts a batch aside without delivering it now, because the sink is behind the record
    /// rate ([`worker::ThreadedSink`] calls it): a spooled sink appends it to its on-disk spool,
    /// replayed in order later. `None`: this sink has nowhere to put it (the caller writes it).
    fn spill(&mut self, records: &[FlowRecord]) -> Option<Result<()>> {
        let _ = records;
        None
    }
    /// Called on every collector tick (also with no records): time-based rotation and flushing.
    fn tick(&mut self) -> Result<()> {
        Ok(())
    }
    /// Flushes everything and releases resources. Records written before a successful `close`
    /// are durable at the destination.
    fn close(&mut self) -> Result<()>;
    /// Records this sink accepted (`write` returned `Ok`) but could not deliver afterwards,
    /// e.g. rows of a file that could not be completed. Reported, never silent.
    fn records_lost(&self) -> u64 {
        0
    }
    /// Records `write` can take right now without dropping any (room in its memory queue).
    /// The default: no bound.
    fn room(&self) -> u64 {
        u64::MAX
    }
    /// How many of the records passed to `write` so far (counted in order since the sink was
    /// created) are settled - acknowledged, rejected or counted lost - with every record before
    /// them settled too (a FIFO watermark; exact as long as `write` never had to drop records
    /// for lack of [`Sink::room`]). `None`: records are settled when `write` returns.
    fn settled(&self) -> Option<u64> {
        None
    }
    /// How long after `write` this sink may take, in normal operation, to acknowledge records
    /// (Parquet: when the file completes, up to its rotate interval). Health checks add it to
    /// their stall window. The default: no delay of its own.
    fn ack_latency(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// Delivery counters of this sink (see [`SinkMetrics`]). The default knows only losses.
    fn metrics(&self) -> SinkMetrics {
        SinkMetrics {
            lost: self.records_lost(),
            ..SinkMetrics::default()
        }
    }
}

/// A boxed sink is a sink (so wrappers such as [`spool::SpooledSink`] take `Box<dyn Sink>`).
impl<S: Sink + ?Sized> Sink for Box<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
        (**self).write(records)
    }
    fn write_shared(&mut self, batch: &worker::Batch) -> Result<()> {
        (**self).write_shared(batch)
    }
    fn spill(&mut self, records: &[FlowRecord]) -> Option<Result<()>> {
        (**self).spill(records)
    }
    fn tick(&mut self) -> Result<()> {
        (**self).tick()
    }
    fn close(&mut self) -> Result<()> {
        (**self).close()
    }
    fn records_lost(&self) -> u64 {
        (**self).records_lost()
    }
    fn room(&self) -> u64 {
        (**self).room()
    }
    fn settled(&self) -> Option<u64> {
        (**self).settled()
    }
    fn ack_latency(&self) -> std::time::Duration {
        (**self).ack_latency()
    }
    fn metrics(&self) -> SinkMetrics {
        (**self).metrics()
    }
}

/// Per-sink delivery counters, in records. Every sink reports the same set so that operators
/// (logs now, a metrics endpoint later) can compare them:
/// `sent` handed to the destination, `acknowledged` confirmed durable by it, `retried` re-sent
/// after a retryable failure, `rejected` refused by the destination for good, `queued` waiting
/// in memory right now, `lost` accepted by the sink but never delivered.
/// `spooled` records waiting in the on-disk spool right now, `spool_bytes` its size on disk.
/// `dropped` records given up because the sink fell behind the record rate (its thread's queue
/// full: [`worker::ThreadedSink`]; also counted in `lost`), `failed_calls` `write`/`tick` calls
/// that failed on the sink's thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkMetrics {
    pub sent: u64,
    pub acknowledged: u64,
    pub retried: u64,
    pub rejected: u64,
    pub queued: u64,
    pub lost: u64,
    pub spooled: u64,
    pub spool_bytes: u64,
    pub dropped: u64,
    pub failed_calls: u64,
}

/// A parsed `--sink` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    /// `parquet:DIR`
    Parquet(PathBuf),
    /// `parquet:s3://BUCKET/PREFIX`
    ParquetS3(s3::S3Target),
    /// `stdout`
    Stdout,
    /// `kafka:BROKERS/TOPIC`, BROKERS = `host:port[,host:port...]`
    Kafka { brokers: String, topic: String },
    /// `otlp:http://HOST:PORT` or `otlp:https://HOST:PORT` (OTLP/gRPC or OTLP/HTTP, as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`)
    Otlp(String),
    /// `ipfix:HOST:PORT` (UDP) or `ipfix+tcp:HOST:PORT`
    Ipfix { target: String, tcp: bool },
}

impl std::str::FromStr for SinkSpec {
    type Err = SinkError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| SinkError::Spec {
            spec: s.to_string(),
            reason: reason.to_string(),
        };
        let (kind, target) = match s.split_once(':') {
            Some((k, t)) => (k, Some(t)),
            None => (s, None),
        };
        match (kind, target) {
            ("stdout", None) => Ok(SinkSpec::Stdout),
            ("stdout", Some(_)) => Err(bad("`stdout` takes no target")),
            ("parquet", Some(t)) if !t.is_empty() => {
                if t.contains("://") {
                    return s3::S3Target::parse(t)
                        .map(SinkSpec::ParquetS3)
                        .map_err(|r| bad(&r));
                }
                Ok(SinkSpec::Parquet(PathBuf::from(t)))
            }
            ("parquet", _) => Err(bad("expected parquet:DIR")),
            ("kafka", Some(t)) => {
                let (brokers, topic) = parse_kafka_target(t).map_err(|r| bad(&r))?;
                Ok(SinkSpec::Kafka { brokers, topic })
            }
            ("kafka", None) => Err(bad("expected kafka:BROKERS/TOPIC")),
            ("otlp", Some(t)) if !t.is_empty() => otlp::parse_endpoint(t)
                .map(SinkSpec::Otlp)
                .map_err(|r| bad(&r)),
            // Bare `otlp`: the standard OpenTelemetry variable, else its documented default.
            ("otlp", None) => {
                let e = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .unwrap_or_else(|_| otlp::DEFAULT_ENDPOINT.to_string());
                otlp::parse_endpoint(&e)
                    .map(SinkSpec::Otlp)
                    .map_err(|r| bad(&format!("OTEL_EXPORTER_OTLP_ENDPOINT={e:?}: {r}")))
            }
            ("otlp", _) => Err(bad(
                "expected otlp:http://HOST:PORT or otlp:https://HOST:PORT",
            )),
            ("ipfix" | "ipfix+tcp", t) => ipfix::parse_target(t.unwrap_or(""))
                .map(|target| SinkSpec::Ipfix {
                    target,
                    tcp: kind == "ipfix+tcp",
                })
                .map_err(|r| bad(&r)),
            _ => Err(bad(
                "unknown sink kind; expected `parquet:DIR`, `parquet:s3://BUCKET/PREFIX`, `kafka:BROKERS/TOPIC`, `otlp:http(s)://HOST:PORT`, `ipfix:HOST:PORT`, `ipfix+tcp:HOST:PORT` or `stdout`",
            )),
        }
    }
}

/// `host:port[,host:port...]/topic` → (brokers, topic).
fn parse_kafka_target(t: &str) -> std::result::Result<(String, String), String> {
    let Some((brokers, topic)) = t.rsplit_once('/') else {
        return Err("expected kafka:BROKERS/TOPIC (e.g. kafka:127.0.0.1:9092/flows)".into());
    };
    if topic.is_empty()
        || topic.len() > 249
        || topic == "."
        || topic == ".."
        || !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "{topic:?} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
        ));
    }
    if brokers.is_empty() {
        return Err("no brokers before the topic (expected kafka:HOST:PORT/TOPIC)".into());
    }
    for b in brokers.split(',') {
        let ok = b
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(format!("broker {b:?} is not HOST:PORT"));
        }
    }
    Ok((brokers.to_string(), topic.to_string()))
}

impl std::fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkSpec::Parquet(p) => write!(f, "parquet:{}", p.display()),
            SinkSpec::ParquetS3(t) => write!(f, "parquet:{t}"),
            SinkSpec::Stdout => f.write_str("stdout"),
            SinkSpec::Kafka { brokers, topic } => write!(f, "kafka:{brokers}/{topic}"),
            SinkSpec::Otlp(e) => write!(f, "otlp:{e}"),
            SinkSpec::Ipfix { target, tcp } => {
                write!(f, "ipfix{}:{target}", if *tcp { "+tcp" } else { "" })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_sink_specs() {
        assert_eq!("stdout".parse::<SinkSpec>().unwrap(), SinkSpec::Stdout);
        assert_eq!(
            "parquet:./f".parse::<SinkSpec>().unwrap(),
            SinkSpec::Parquet("./f".into())
        );
        assert_eq!(
            "kafka:127.0.0.1:9092,[::1]:9093/flows.v1"
                .parse::<SinkSpec>()
                .unwrap(),
            SinkSpec::Kafka {
                brokers: "127.0.0.1:9092,[::1]:9093".into(),
                topic: "flows.v1".into()
            }
        );
        let k = "kafka:b1:9092/t".parse::<SinkSpec>().unwrap();
        assert_eq!(k.to_string().parse::<SinkSpec>().unwrap(), k);
        assert_eq!(
            "otlp:http://127.0.0.1:4317".parse::<SinkSpec>().unwrap(),
            SinkSpec::Otlp("http://127.0.0.1:4317".into())
        );
        assert_eq!(
            "parquet:s3://bkt/a/b/".parse::<SinkSpec>().unwrap(),
            SinkSpec::ParquetS3(s3::S3Target {
                bucket: "bkt".into(),
                prefix: "a/b".into()
            })
        );
        let i = "ipfix+tcp:[::1]:4739".parse::<SinkSpec>().unwrap();
        assert_eq!(
            i,
            SinkSpec::Ipfix {
                target: "[::1]:4739".into(),
                tcp: true
            }
        );
        assert_eq!(i.to_string().parse::<SinkSpec>().unwrap(), i);
        assert_eq!(
            "ipfix:c:4739".parse::<SinkSpec>().unwrap(),
            SinkSpec::Ipfix {
                target: "c:4739".into(),
                tcp: false
            }
        );
        // Bare `otlp` takes OTEL_EXPORTER_OTLP_ENDPOINT or the OpenTelemetry default.
        let want = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap_or_else(|_| "http://localhost:4317".into());
        assert_eq!("otlp".parse::<SinkSpec>().unwrap(), SinkSpec::Otlp(want));
        // TLS endpoints (issue 14).
        assert_eq!(
            "otlp:https://collector:4317".parse::<SinkSpec>().unwrap(),
            SinkSpec::Otlp("https://collector:4317".into())
        );
        for bad in [
            "otlp:",
            "otlp:127.0.0.1:4317",
            "otlp:http://",
            "parquet",
            "parquet:",
            "kafka:x/y",
            "kafka",
            "kafka:",
            "kafka:h:9092",
            "kafka:h:9092/",
            "kafka:/t",
            "kafka:h:0/t",
            "kafka:h:x/t",
            "kafka:h:9092,/t",
            "kafka:h:9092/bad topic",
            "stdout:x",
            "parquet:gs://b/p",
            "parquet:s3://",
            "parquet:s3:///p",
            "parquet:s3://b/../p",
            "ipfix",
            "ipfix:host",
            "ipfix+tcp:h:0",
            "ipfix+udp:h:4739",
            "",
        ] {
            let e = bad.parse::<SinkSpec>().unwrap_err().to_string();
            assert!(e.contains("invalid sink"), "{bad}: {e}");
        }
    }
}
