//! Sink construction and each sink's delivery policy, in one place: the collector hands over
//! the parsed `--sink` specs and [`BuildOptions`] and gets the sinks back, ready to write.
//!
//! Policy, per kind:
//! * **Kafka, OTLP**: wrapped in an on-disk spool ([`SpooledSink`]) unless
//!   [`BuildOptions::spool_dir`] is `None` (`--no-spool`). Under a spool their own give-up
//!   timers are off (the spool, not a timer, bounds an outage): OTLP retries without an
//!   elapsed-time limit, Kafka's `message.timeout.ms` defaults to 0 (infinite: records wait in
//!   librdkafka's bounded queue, then the spool). Their own `close` then gets
//!   [`SPOOLED_CLOSE_TIMEOUT`] (flush, then purge: the spool keeps the rest) and the spool
//!   wrapper the rest of the shutdown grace, minus a reserve for its own writes.
//! * **Parquet (local)**: a write-ahead journal in the spool directory instead (disk full,
//!   SIGKILL; see [`crate::parquet`]). Rows are acknowledged when their file completes, so the
//!   sink reports its rotate interval as [`Sink::ack_latency`].
//! * **Parquet on S3**: its own local staging directory ([`BuildOptions::s3_staging_dir`]).
//! * **IPFIX over TCP** (`ipfix+tcp:`): spooled like Kafka and OTLP (no room while the
//!   collector is unreachable); its own close gets [`SPOOLED_CLOSE_TIMEOUT`] under a spool.
//! * **IPFIX over UDP** (`ipfix:`): none (fire and forget; templates are refreshed instead).
//! * **stdout**: none.
//!
//! Every sink, whatever its kind, then runs on a thread of its own
//! ([`crate::worker::ThreadedSink`], at most [`BuildOptions::sink_queue_records`] records
//! waiting for it): the collector's drain never waits for a sink. A sink behind the record rate
//! spills to its spool if it has one, then its batches are dropped and counted.

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{
    Result, Sink, SinkError, SinkSpec,
    ipfix::IpfixSettings,
    kafka::{KafkaFormat, KafkaOptions, KafkaSink},
    otlp::{OtlpOptions, OtlpSink},
    parquet::{JournalOptions, ParquetOptions, ParquetSink},
    s3::{S3Options, S3ParquetSink},
    spool::{self, SpoolOptions, SpooledSink},
    stdout::StdoutSink,
    worker::{self, ThreadedSink},
};

/// What the inner sink's own `close` gets under a spool (flush, then purge what is left: the
/// spool keeps it); the rest of the shutdown grace is the spool wrapper's.
pub const SPOOLED_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long `build` waits for a first answer from Kafka brokers (informational only: records
/// queue, bounded, until the brokers answer).
const KAFKA_REACHABLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything the sinks need from the command line and config file.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Exporter hostname (in records and file names).
    pub host: Arc<str>,
    /// Parent of each sink's spool or journal directory; `None`: no spool (`--no-spool`).
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: u64,
    /// Time every sink has to flush and close at shutdown.
    pub shutdown_grace: Duration,
    pub parquet_rotate_bytes: u64,
    pub parquet_rotate_interval: Duration,
    /// Local staging directory of `parquet:s3://` sinks; `None`: [`crate::s3::default_staging_dir`].
    pub s3_staging_dir: Option<PathBuf>,
    pub s3_options: Vec<(String, String)>,
    pub otlp_batch_records: usize,
    pub otlp_queue_records: usize,
    pub otlp_timeout: Duration,
    pub otlp_metrics: bool,
    /// OTLP transport, TLS files and extra headers (issue 14; header values are secrets:
    /// their `Debug` shows keys only).
    pub otlp_protocol: crate::otlp::OtlpProtocol,
    pub otlp_tls: crate::otlp::TlsFiles,
    pub otlp_headers: crate::otlp::Headers,
    pub kafka_format: KafkaFormat,
    pub kafka_options: Vec<(String, String)>,
    pub kafka_queue_max_records: u32,
    /// Kafka's close timeout without a spool.
    pub kafka_close_timeout: Duration,
    /// `--ipfix-*` (every IPFIX sink).
    pub ipfix: IpfixSettings,
    /// Records that may wait for one sink's thread ([`worker::DEFAULT_QUEUE_RECORDS`]); `0`:
    /// no thread, the caller's thread writes (benchmarks of a sink alone).
    pub sink_queue_records: u64,
}

impl BuildOptions {
    /// Options with each sink's own defaults (no spool) for `host`.
    pub fn new(host: Arc<str>) -> Self {
        let otlp = OtlpOptions::new("", host.clone());
        let kafka = KafkaOptions::new("", "");
        BuildOptions {
            host,
            spool_dir: None,
            spool_max_bytes: spool::DEFAULT_MAX_BYTES,
            shutdown_grace: Duration::from_secs(30),
            parquet_rotate_bytes: 128 * 1024 * 1024,
            parquet_rotate_interval: Duration::from_secs(300),
            s3_staging_dir: None,
            s3_options: Vec::new(),
            otlp_batch_records: otlp.batch_records,
            otlp_queue_records: otlp.queue_records,
            otlp_timeout: otlp.request_timeout,
            otlp_metrics: otlp.metrics,
            otlp_protocol: otlp.protocol,
            otlp_tls: otlp.tls,
            otlp_headers: otlp.headers,
            kafka_format: kafka.format,
            kafka_options: kafka.options,
            kafka_queue_max_records: kafka.queue_max_records,
            kafka_close_timeout: kafka.close_timeout,
            ipfix: IpfixSettings::default(),
            sink_queue_records: worker::DEFAULT_QUEUE_RECORDS,
        }
    }

    /// The spool options of one sink (`None`: no spool).
    pub fn spool(&self, spec: &SinkSpec) -> Option<SpoolOptions> {
        let mut o = SpoolOptions::new(self.spool_dir_of(spec)?);
        o.max_bytes = self.spool_max_bytes;
        o.grace = self.shutdown_grace;
        // The inner close: SPOOLED_CLOSE_TIMEOUT and a margin for the spool writes after it.
        o.close_reserve =
            (SPOOLED_CLOSE_TIMEOUT + Duration::from_millis(500)).min(self.shutdown_grace / 2);
        Some(o)
    }

    /// The write-ahead journal of a local Parquet sink (`None`: no spool): its rows survive a
    /// full or failing output disk and a killed flowlens.
    pub fn parquet_journal(&self, spec: &SinkSpec) -> Option<JournalOptions> {
        Some(JournalOptions {
            dir: self.spool_dir_of(spec)?,
            max_bytes: self.spool_max_bytes,
        })
    }

    /// This sink's own directory under the spool directory.
    fn spool_dir_of(&self, spec: &SinkSpec) -> Option<PathBuf> {
        let parent = self.spool_dir.as_ref()?;
        Some(parent.join(spool::dir_name(&spec.to_string())))
    }

    /// The options of a `parquet:s3://` sink: staging under the state directory by default
    /// ([`crate::s3::default_staging_dir`]: `$TMPDIR` is wiped by the unit's `PrivateTmp`), and
    /// `close` bounded by the shutdown grace (the unit's stop timeout leaves room for it).
    pub fn s3_options(&self, target: &crate::s3::S3Target) -> S3Options {
        let staging = self
            .s3_staging_dir
            .clone()
            .unwrap_or_else(|| crate::s3::default_staging_dir(target));
        let mut so = S3Options::new(target.clone(), staging, self.host.clone());
        so.rotate_bytes = self.parquet_rotate_bytes;
        so.rotate_interval = self.parquet_rotate_interval;
        so.store_options = self.s3_options.clone();
        so.close_timeout = self.shutdown_grace;
        so
    }
}

/// Builds one sink per spec, in order, with its delivery policy (see the module
/// documentation). Fails on the first target (or spool directory) that is unusable, before any
/// record is written.
pub fn build(specs: &[SinkSpec], o: &BuildOptions) -> Result<Vec<Box<dyn Sink>>> {
    specs
        .iter()
        .map(|s| {
            let sink = build_one(s, o)?;
            if o.sink_queue_records == 0 {
                return Ok(sink);
            }
            Ok(Box::new(ThreadedSink::new(sink, o.sink_queue_records)?) as Box<dyn Sink>)
        })
        .collect()
}

fn build_one(s: &SinkSpec, o: &BuildOptions) -> Result<Box<dyn Sink>> {
    let err = |stage: &'static str| {
        move |e: SinkError| SinkError::Build {
            sink: s.to_string(),
            stage,
            error: Box::new(e),
        }
    };
    let spool = o.spool(s);
    let spooled = spool.is_some();
    let wrap = |sink: Box<dyn Sink>| -> Result<Box<dyn Sink>> {
        match spool.clone() {
            Some(so) => Ok(Box::new(
                SpooledSink::new(sink, so).map_err(err("spool: "))?,
            )),
            None => Ok(sink),
        }
    };
    Ok(match s {
        SinkSpec::Stdout => Box::new(StdoutSink::default()),
        SinkSpec::Parquet(dir) => Box::new(
            ParquetSink::new(ParquetOptions {
                dir: dir.clone(),
                rotate_bytes: o.parquet_rotate_bytes,
                rotate_interval: o.parquet_rotate_interval,
                host: o.host.clone(),
                journal: o.parquet_journal(s),
            })
            .map_err(err(""))?,
        ),
        SinkSpec::ParquetS3(target) => {
            Box::new(S3ParquetSink::new(o.s3_options(target)).map_err(err(""))?)
        }
        SinkSpec::Otlp(endpoint) => wrap(Box::new(
            OtlpSink::new(otlp_options(endpoint, o, spooled)).map_err(err(""))?,
        ))?,
        SinkSpec::Kafka { brokers, topic } => {
            let sink =
                KafkaSink::new(kafka_options(brokers, topic, o, spooled)).map_err(err(""))?;
            // TLS/SASL: a handshake or authentication failure is an error now (issue 14).
            sink.check_secure(KAFKA_REACHABLE_TIMEOUT)
                .map_err(err(""))?;
            // Informational only: records queue (bounded) until the brokers answer.
            sink.check_reachable(KAFKA_REACHABLE_TIMEOUT);
            wrap(Box::new(sink))?
        }
        SinkSpec::Ipfix { target, tcp: false } => {
            Box::new(crate::ipfix::UdpSink::new(target, &o.ipfix, &o.host).map_err(err(""))?)
        }
        SinkSpec::Ipfix { target, tcp: true } => {
            let close = if spooled {
                SPOOLED_CLOSE_TIMEOUT
            } else {
                o.shutdown_grace
            };
            wrap(Box::new(
                crate::ipfix::TcpSink::new(target, &o.ipfix, &o.host, close).map_err(err(""))?,
            ))?
        }
    })
}

/// OTLP under a spool retries forever (the spool bounds an outage) and closes quickly.
fn otlp_options(endpoint: &str, o: &BuildOptions, spooled: bool) -> OtlpOptions {
    let mut oo = OtlpOptions::new(endpoint, o.host.clone());
    oo.batch_records = o.otlp_batch_records;
    oo.queue_records = o.otlp_queue_records;
    oo.request_timeout = o.otlp_timeout;
    oo.metrics = o.otlp_metrics;
    oo.protocol = o.otlp_protocol;
    oo.tls = o.otlp_tls.clone();
    oo.headers = o.otlp_headers.clone();
    if spooled {
        oo.retry.max_elapsed = Duration::MAX;
        oo.close_timeout = SPOOLED_CLOSE_TIMEOUT;
    } else {
        oo.close_timeout = o.shutdown_grace;
    }
    oo
}

/// Kafka under a spool: `message.timeout.ms=0` (infinite) unless the user set it, and a quick
/// close.
fn kafka_options(brokers: &str, topic: &str, o: &BuildOptions, spooled: bool) -> KafkaOptions {
    let mut options = o.kafka_options.clone();
    if spooled && !options.iter().any(|(k, _)| k == "message.timeout.ms") {
        // Infinite: records wait in librdkafka's bounded queue, then the spool.
        options.push(("message.timeout.ms".into(), "0".into()));
    }
    KafkaOptions {
        brokers: brokers.to_string(),
        topic: topic.to_string(),
        format: o.kafka_format,
        options,
        queue_max_records: o.kafka_queue_max_records,
        close_timeout: if spooled {
            SPOOLED_CLOSE_TIMEOUT
        } else {
            o.kafka_close_timeout
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(spool: bool) -> BuildOptions {
        let mut o = BuildOptions::new("h".into());
        o.shutdown_grace = Duration::from_secs(10);
        if spool {
            o.spool_dir = Some("/var/spool/flowlens".into());
        }
        o
    }

    /// Under a spool the sinks' own give-up timers are off and their close is short; without
    /// one they keep their limits and get the whole grace.
    #[test]
    fn delivery_policy_depends_on_the_spool() {
        let spooled = otlp_options("http://c:4317", &opts(true), true);
        assert_eq!(spooled.retry.max_elapsed, Duration::MAX);
        assert_eq!(spooled.close_timeout, SPOOLED_CLOSE_TIMEOUT);
        let plain = otlp_options("http://c:4317", &opts(false), false);
        assert_ne!(plain.retry.max_elapsed, Duration::MAX);
        assert_eq!(plain.close_timeout, Duration::from_secs(10));

        let k = kafka_options("b:9092", "t", &opts(true), true);
        assert!(
            k.options
                .contains(&("message.timeout.ms".into(), "0".into()))
        );
        assert_eq!(k.close_timeout, SPOOLED_CLOSE_TIMEOUT);
        let mut user = opts(true);
        user.kafka_options = vec![("message.timeout.ms".into(), "5000".into())];
        let k = kafka_options("b:9092", "t", &user, true);
        let set: Vec<_> = k
            .options
            .iter()
            .filter(|(key, _)| key == "message.timeout.ms")
            .collect();
        assert_eq!(
            set,
            [&("message.timeout.ms".to_string(), "5000".to_string())]
        );
        let k = kafka_options("b:9092", "t", &opts(false), false);
        assert!(!k.options.iter().any(|(key, _)| key == "message.timeout.ms"));

        let spec: SinkSpec = "kafka:b:9092/t".parse().unwrap();
        let s = opts(true).spool(&spec).unwrap();
        assert!(s.dir.starts_with("/var/spool/flowlens"));
        assert_eq!(s.close_reserve, Duration::from_millis(1500));
        assert!(opts(false).spool(&spec).is_none());
        assert!(opts(false).parquet_journal(&spec).is_none());
    }

    /// IPFIX over TCP is spooled (the spool asks it for room and settlement), over UDP not.
    #[test]
    fn ipfix_tcp_is_spooled_udp_is_not() {
        let dir = std::env::temp_dir().join(format!("flowlens-build-ipfix-{}", std::process::id()));
        let mut o = opts(false);
        o.spool_dir = Some(dir.clone());
        let specs: Vec<SinkSpec> = vec![
            "ipfix:127.0.0.1:4739".parse().unwrap(),
            "ipfix+tcp:127.0.0.1:9".parse().unwrap(),
        ];
        let sinks = build(&specs, &o).unwrap();
        assert_eq!(sinks[0].name(), "ipfix:127.0.0.1:4739");
        assert_eq!(sinks[0].settled(), None);
        assert!(
            sinks[1].name().starts_with("ipfix+tcp:127.0.0.1:9"),
            "{}",
            sinks[1].name()
        );
        assert!(
            dir.read_dir().unwrap().next().is_some(),
            "no spool directory"
        );
        drop(sinks);
        let e = build(&["ipfix:no-such-host.invalid:4739".parse().unwrap()], &o)
            .err()
            .expect("an unresolvable collector fails at start")
            .to_string();
        assert!(
            e.starts_with("sink ipfix:no-such-host.invalid:4739: "),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Built sinks are the right kinds with the right acknowledgement latency; a bad target
    /// fails with the sink's name in a one-line error.
    #[test]
    fn builds_sinks_in_order() {
        let dir = std::env::temp_dir().join(format!("flowlens-build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut o = opts(false);
        o.spool_dir = Some(dir.join("spool"));
        o.parquet_rotate_interval = Duration::from_secs(42);
        let specs: Vec<SinkSpec> = vec![SinkSpec::Stdout, SinkSpec::Parquet(dir.join("out"))];
        let sinks = build(&specs, &o).unwrap();
        assert_eq!(sinks[0].name(), "stdout");
        assert_eq!(sinks[0].ack_latency(), Duration::ZERO);
        assert!(
            sinks[1].name().starts_with("parquet:"),
            "{}",
            sinks[1].name()
        );
        assert_eq!(sinks[1].ack_latency(), Duration::from_secs(42));
        // The journal lives in the spool directory.
        assert!(dir.join("spool").read_dir().unwrap().next().is_some());
        drop(sinks);

        let file = dir.join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let e = build(&[SinkSpec::Parquet(file.join("sub"))], &o)
            .err()
            .expect("a file as the parent directory fails")
            .to_string();
        assert!(
            e.starts_with(&format!("sink parquet:{}", file.join("sub").display())),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        // The cause of a client error is part of the line.
        let mut bad = opts(false);
        bad.kafka_options = vec![("no.such.setting".into(), "1".into())];
        let e = build(&["kafka:127.0.0.1:9/t".parse().unwrap()], &bad)
            .err()
            .expect("an unknown librdkafka setting fails")
            .to_string();
        assert!(e.starts_with("sink kafka:127.0.0.1:9/t: "), "{e}");
        assert!(e.contains("no.such.setting"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
