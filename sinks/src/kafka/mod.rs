//! Kafka (`--sink kafka:BROKERS/TOPIC`): one flow record per message, protobuf
//! (`schema/proto/flow.proto`) or JSON, keyed by a hash of the Community ID.
//!
//! * [`encode`]: records to bytes (pure).
//! * [`service`]: librdkafka's delivery reports and statistics as counters.
//! * this module: options, producer settings and the [`Sink`] implementation.
//!
//! Delivery: `write` hands each record to librdkafka's producer queue and returns; a background
//! thread serves delivery reports. A record is *acknowledged* only when the broker confirmed it
//! (`acks=all`). While the brokers are unreachable, records wait in librdkafka's queue, bounded
//! by `queue_max_records` (`--kafka-queue-max-records`) and by `message.timeout.ms` (5 min by
//! default). A record that finds the queue full is dropped at once and counted as lost (the
//! collector thread never blocks: blocking would stall the kernel map drain and lose more).
//! A record still unacknowledged when its timeout expires, or when `close` gives up after
//! `close_timeout`, is counted as lost; one the broker (or librdkafka) refused for good is
//! counted as rejected. A delivery that failed with an error that can clear (unknown topic or
//! partition, no leader, not enough replicas: [`service::is_transient`]) is sent again after
//! [`service::RETRY_BACKOFF`] and counted in `retried`, never as lost; it stays `queued`
//! meanwhile. At any time `acknowledged + rejected + lost + queued == records written`.

pub mod encode;
pub mod service;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use flowlens_schema::record::FlowRecord;
use rdkafka::{
    ClientConfig,
    error::KafkaError,
    producer::{BaseRecord, Producer, PurgeConfig, ThreadedProducer},
    types::RDKafkaErrorCode,
};

pub use encode::{Encoder, KafkaFormat, message_key};
use service::{Counters, DeliveryContext};

use crate::{Result, Sink, SinkError, SinkMetrics};

/// Default bound of records waiting for the broker (librdkafka's
/// `queue.buffering.max.messages`): about 20 MB of protobuf records, a few minutes of a busy
/// host's flows.
pub const DEFAULT_QUEUE_MAX_RECORDS: u32 = 100_000;
/// How long `close` waits for outstanding acknowledgements.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Producer settings flowlens chooses, applied before `--kafka-option` values (which win).
/// Reasons next to each.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // Delivered means stored by every in-sync replica.
    ("acks", "all"),
    // Flow records compress well (repeated names, hosts, address prefixes).
    ("compression.type", "zstd"),
    // librdkafka recommends linger >= 50 ms for throughput; records arrive once per drain
    // interval (1 s) anyway, so 100 ms adds no meaningful latency.
    ("linger.ms", "100"),
    // Large batches: up to 10k records / 1 MB per partition request (librdkafka's maximums
    // for the default broker `message.max.bytes`).
    ("batch.num.messages", "10000"),
    ("batch.size", "1000000"),
    // How long a record may wait for an unreachable broker before it is counted as lost
    // (librdkafka's default, stated here because the docs promise it).
    ("message.timeout.ms", "300000"),
    // Statistics feed the `retried` counter (record retransmissions, see service::Counters).
    ("statistics.interval.ms", "1000"),
    ("client.id", "flowlens"),
];

/// Properties that flowlens sets from its own options; `--kafka-option` may not override them.
const RESERVED: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "give the brokers in --sink kafka:BROKERS/TOPIC",
    ),
    (
        "metadata.broker.list",
        "give the brokers in --sink kafka:BROKERS/TOPIC",
    ),
    (
        "queue.buffering.max.messages",
        "use --kafka-queue-max-records",
    ),
];

/// Checks one `--kafka-option` value: `key=value`, a plausible property name, not reserved.
/// librdkafka itself rejects unknown names and bad values when the sink is built.
pub fn parse_option(s: &str) -> std::result::Result<(String, String), String> {
    // Errors name the key only: the value may be a password (issue 14).
    let Some((k, v)) = s.split_once('=') else {
        return Err("--kafka-option: expected key=value (value not shown)".to_string());
    };
    let k = k.trim();
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
    {
        return Err(format!(
            "--kafka-option: {k:?} is not a librdkafka property name (e.g. security.protocol)"
        ));
    }
    if let Some((_, hint)) = RESERVED.iter().find(|(r, _)| *r == k) {
        return Err(format!("--kafka-option {k}: set by flowlens; {hint}"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Options of the Kafka sink (`Debug` hides the values of secret properties).
#[derive(Clone)]
pub struct KafkaOptions {
    /// `host:port[,host:port...]`
    pub brokers: String,
    pub topic: String,
    pub format: KafkaFormat,
    /// Extra librdkafka properties (`--kafka-option`), applied after [`PRODUCER_DEFAULTS`].
    pub options: Vec<(String, String)>,
    pub queue_max_records: u32,
    pub close_timeout: Duration,
}

/// librdkafka properties whose values are secrets (never printed).
pub fn is_secret_option(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key.ends_with(".pem")
        || key == "sasl.oauthbearer.config"
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: Vec<String> = self
            .options
            .iter()
            .map(|(k, v)| {
                if is_secret_option(k) {
                    format!("{k}=<redacted>")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        f.debug_struct("KafkaOptions")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("format", &self.format)
            .field("options", &options)
            .field("queue_max_records", &self.queue_max_records)
            .field("close_timeout", &self.close_timeout)
            .finish()
    }
}

impl KafkaOptions {
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        KafkaOptions {
            brokers: brokers.into(),
            topic: topic.into(),
            format: KafkaFormat::default(),
            options: Vec::new(),
            queue_max_records: DEFAULT_QUEUE_MAX_RECORDS,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
        }
    }

    /// The librdkafka configuration: defaults, then user options, then what flowlens owns.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in PRODUCER_DEFAULTS {
            c.set(*k, *v);
        }
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers);
        c.set(
            "queue.buffering.max.messages",
            self.queue_max_records.to_string(),
        );
        c
    }
}

pub struct KafkaSink {
    name: String,
    opts: KafkaOptions,
    producer: Option<ThreadedProducer<DeliveryContext>>,
    counters: Arc<Counters>,
    encoder: Encoder,
    buf: Vec<u8>,
    /// Records handed to librdkafka.
    sent: u64,
    /// Records passed to `write` (the index of the next one; see `service::Watermark`).
    written: u64,
    /// Records dropped because the queue was full.
    dropped_queue_full: u64,
    /// Records librdkafka refused locally (e.g. larger than `message.max.bytes`).
    refused_locally: u64,
    /// Records neither acknowledged nor failed when the producer was destroyed.
    unaccounted_at_close: u64,
    /// Failures already logged (`tick` logs new ones).
    failures_logged: u64,
    drops_logged: u64,
    requeues_logged: u64,
    /// `report` runs every tick; while failures continue it logs at most once per interval
    /// (each line carries every record failed since the previous one).
    report_limit: crate::log_limit::RateLimited,
}

impl KafkaSink {
    /// Creates the producer (validates every property). Does not wait for the brokers: records
    /// queue until they are reachable; an unreachable broker or a missing topic is logged.
    pub fn new(opts: KafkaOptions) -> Result<Self> {
        let name = format!("kafka:{}/{}", opts.brokers, opts.topic);
        if opts.queue_max_records == 0 {
            return Err(SinkError::Spec {
                spec: name,
                reason: "the queue bound must be at least 1 record".into(),
            });
        }
        let counters = Arc::new(Counters::default());
        let ctx = DeliveryContext {
            counters: counters.clone(),
            name: name.clone(),
            log_limit: Default::default(),
            error_limit: Default::default(),
            auth_error: Default::default(),
        };
        let producer: ThreadedProducer<DeliveryContext> = opts
            .client_config()
            .create_with_context(ctx)
            .map_err(|e| SinkError::Kafka {
                context: "creating the Kafka producer".into(),
                source: e,
            })?;
        Ok(KafkaSink {
            name,
            encoder: Encoder::new(opts.format),
            opts,
            producer: Some(producer),
            counters,
            buf: Vec::with_capacity(512),
            sent: 0,
            written: 0,
            dropped_queue_full: 0,
            refused_locally: 0,
            unaccounted_at_close: 0,
            failures_logged: 0,
            drops_logged: 0,
            requeues_logged: 0,
            report_limit: Default::default(),
        })
    }

    /// With TLS or SASL (`security.protocol` other than plaintext): asks the brokers for
    /// metadata (bounded wait) and fails if librdkafka reported a TLS handshake or SASL
    /// authentication failure meanwhile (untrusted certificate, wrong name, refused client
    /// certificate, wrong password): a one-line error before anything attaches, instead of
    /// records queueing forever. Brokers that do not answer at all are an outage (`Ok`).
    pub fn check_secure(&self, timeout: Duration) -> Result<()> {
        let secure = self
            .opts
            .options
            .iter()
            .any(|(k, v)| k == "security.protocol" && !v.eq_ignore_ascii_case("plaintext"));
        let Some(p) = &self.producer else {
            return Ok(());
        };
        if !secure {
            return Ok(());
        }
        let res = p.client().fetch_metadata(Some(&self.opts.topic), timeout);
        let auth = p.context().auth_error.lock().ok().and_then(|a| a.clone());
        match (res, auth) {
            (Err(_), Some((source, reason))) => Err(SinkError::Kafka {
                context: format!("TLS/SASL with the brokers failed: {reason}"),
                source,
            }),
            _ => Ok(()),
        }
    }

    /// Asks the brokers for the topic's metadata (bounded wait); logs what is wrong, if
    /// anything. Records are queued either way.
    pub fn check_reachable(&self, timeout: Duration) {
        let Some(p) = &self.producer else { return };
        match p.client().fetch_metadata(Some(&self.opts.topic), timeout) {
            Ok(md) => match md.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    tracing::info!(sink = %self.name, partitions = t.partitions().len(), "kafka topic found")
                }
                _ => {
                    tracing::warn!(sink = %self.name, "kafka topic not found on the brokers; records queue until it exists (or their timeout expires)")
                }
            },
            Err(e) => {
                tracing::warn!(sink = %self.name, error = %e, "kafka brokers not reachable yet; records queue (bounded) until they are")
            }
        }
    }

    /// Hands the records whose delivery failed transiently, and whose backoff has passed, to
    /// librdkafka again (same index, key, payload and timestamp). What finds the queue full
    /// waits for the next call.
    fn resend(&mut self) {
        let Some(p) = &self.producer else { return };
        let now = std::time::Instant::now();
        let due: Vec<service::Retry> = match self.counters.retry.lock() {
            Ok(mut r) if r.iter().any(|x| x.due <= now) => {
                let (due, wait) = std::mem::take(&mut *r)
                    .into_iter()
                    .partition(|x| x.due <= now);
                *r = wait;
                due
            }
            _ => return,
        };
        let mut back = Vec::new();
        for x in due {
            let mut rec = BaseRecord::with_opaque_to(&self.opts.topic, x.idx as usize)
                .payload(&x.payload[..]);
            if let Some(k) = &x.key {
                rec = rec.key(&k[..]);
            }
            if let Some(ts) = x.timestamp_ms {
                rec = rec.timestamp(ts);
            }
            match p.send(rec) {
                Ok(()) => {}
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    back.push(x)
                }
                // librdkafka refuses records for a topic it knows to be missing at once.
                Err((e, _)) if service::is_transient(&e) => back.push(service::Retry {
                    due: now + service::RETRY_BACKOFF,
                    ..x
                }),
                Err((e, _)) => {
                    // Refused locally for good now: rejected, like a first send refused.
                    self.refused_locally += 1;
                    self.sent -= 1;
                    if let Ok(mut w) = self.counters.settled.lock() {
                        w.settle(x.idx);
                    }
                    if let Ok(mut last) = self.counters.last_error.lock() {
                        *last = Some(e.to_string());
                    }
                }
            }
        }
        if !back.is_empty()
            && let Ok(mut r) = self.counters.retry.lock()
        {
            r.extend(back);
        }
    }

    /// Records waiting to be sent again.
    fn retry_len(&self) -> usize {
        self.counters.retry.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Logs failures and drops that happened since the last call.
    fn report(&mut self) {
        let failed = self.counters.failed.load(Ordering::Relaxed);
        let dropped = self.dropped_queue_full + self.refused_locally;
        let requeued = self.counters.requeued.load(Ordering::Relaxed);
        if (failed > self.failures_logged
            || dropped > self.drops_logged
            || requeued > self.requeues_logged)
            && self.report_limit.check().is_none()
        {
            return;
        }
        if requeued > self.requeues_logged {
            let last = self
                .counters
                .last_transient
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_default();
            tracing::warn!(sink = %self.name, records = requeued - self.requeues_logged, waiting = self.retry_len(), last_error = %last, "kafka deliveries failed with an error that can clear; sending these records again");
            self.requeues_logged = requeued;
        }
        if failed > self.failures_logged {
            let last = self
                .counters
                .last_error
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_default();
            tracing::error!(sink = %self.name, records = failed - self.failures_logged, last_error = %last, "kafka deliveries failed; these records are lost");
            self.failures_logged = failed;
        }
        if dropped > self.drops_logged {
            tracing::error!(sink = %self.name, records = dropped - self.drops_logged, queue_bound = self.opts.queue_max_records, "kafka queue full (brokers unreachable or too slow) or record refused; these records are lost");
            self.drops_logged = dropped;
        }
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
        // Records that failed transiently go first (they are older).
        self.resend();
        let Some(p) = &self.producer else {
            return Err(SinkError::Spec {
                spec: self.name.clone(),
                reason: "write after close".into(),
            });
        };
        let settle_now = |from: u64, to: u64| {
            if let Ok(mut w) = self.counters.settled.lock() {
                (from..to).for_each(|i| w.settle(i));
            }
        };
        for (i, r) in records.iter().enumerate() {
            self.encoder.encode(r, &mut self.buf);
            let key = message_key(r);
            let idx = self.written;
            self.written += 1;
            let rec = BaseRecord::with_opaque_to(&self.opts.topic, idx as usize)
                .key(&key[..])
                .payload(&self.buf[..])
                .timestamp(r.flow_end_us / 1000);
            match p.send(rec) {
                Ok(()) => self.sent += 1,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    let rest = (records.len() - i) as u64;
                    self.dropped_queue_full += rest;
                    self.written = idx + rest;
                    settle_now(idx, idx + rest);
                    break;
                }
                Err((e, _)) if service::is_transient(&e) => {
                    // Refused now for a reason that can clear (the topic is missing): kept and
                    // sent again like a transient delivery failure.
                    self.sent += 1;
                    self.counters.requeue(
                        idx,
                        Some(key.to_vec()),
                        self.buf.clone(),
                        Some(r.flow_end_us / 1000),
                        &e,
                    );
                }
                Err((e, _)) => {
                    self.refused_locally += 1;
                    settle_now(idx, idx + 1);
                    if let Ok(mut last) = self.counters.last_error.lock() {
                        *last = Some(e.to_string());
                    }
                }
            }
        }
        self.report();
        Ok(())
    }

    fn tick(&mut self) -> Result<()> {
        self.resend();
        self.report();
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if self.producer.is_none() {
            return Ok(());
        }
        // Wait for acknowledgements, sending again what failed transiently meanwhile.
        let deadline = std::time::Instant::now() + self.opts.close_timeout;
        let mut flushed;
        loop {
            self.resend();
            let p = self.producer.as_ref().expect("checked above");
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            flushed = p.flush(left.min(service::RETRY_BACKOFF));
            if (flushed.is_ok() && self.retry_len() == 0) || left.is_zero() {
                break;
            }
            if flushed.is_ok() {
                // Only records waiting out their backoff are left.
                std::thread::sleep(Duration::from_millis(50).min(left));
            }
        }
        let p = self.producer.take().expect("checked above");
        let flushed = if self.retry_len() > 0 {
            Err(())
        } else {
            flushed.map_err(|_| ())
        };
        if flushed.is_err() {
            tracing::warn!(sink = %self.name, unacknowledged = p.in_flight_count(), timeout = ?self.opts.close_timeout, "kafka: not every record acknowledged in time; purging the rest (counted as lost)");
            p.purge(PurgeConfig::default().queue().inflight());
            // Serve the purge's delivery reports.
            let _ = p.flush(Duration::from_secs(5));
        }
        // Destroying the producer serves any last reports; after this no callback runs.
        drop(p);
        let c = &self.counters;
        let accounted = c.acked.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
        self.unaccounted_at_close = self.sent.saturating_sub(accounted);
        self.report_limit = crate::log_limit::RateLimited::new(Duration::ZERO);
        self.report();
        let m = self.metrics();
        if m.lost + m.rejected > 0 {
            return Err(SinkError::Lost {
                sink: self.name.clone(),
                records: m.lost + m.rejected,
            });
        }
        Ok(())
    }

    fn records_lost(&self) -> u64 {
        self.metrics().lost
    }

    /// librdkafka's bound minus what it still holds (its own count of queued messages and
    /// events, which is never below the messages without a delivery report; conservative).
    fn room(&self) -> u64 {
        let Some(p) = &self.producer else { return 0 };
        let unsettled = self.written - self.settled().unwrap_or(0);
        let held = (p.in_flight_count().max(0) as u64).max(unsettled);
        (self.opts.queue_max_records as u64).saturating_sub(held)
    }

    fn settled(&self) -> Option<u64> {
        Some(self.counters.settled.lock().map(|w| w.next).unwrap_or(0))
    }

    fn metrics(&self) -> SinkMetrics {
        let c = &self.counters;
        let failed = c.failed.load(Ordering::Relaxed);
        let broker_rejected = c.rejected.load(Ordering::Relaxed);
        SinkMetrics {
            sent: self.sent,
            acknowledged: c.acked.load(Ordering::Relaxed),
            retried: c.retransmitted.load(Ordering::Relaxed) + c.requeued.load(Ordering::Relaxed),
            rejected: broker_rejected + self.refused_locally,
            // Handed to librdkafka, no delivery report yet (librdkafka's own outq_len also
            // counts requests and events, so it is not used here).
            queued: self.sent.saturating_sub(
                c.acked.load(Ordering::Relaxed) + failed + self.unaccounted_at_close,
            ),
            // Disjoint from `rejected`: acknowledged + rejected + lost = records written.
            lost: self.dropped_queue_full
                + failed.saturating_sub(broker_rejected)
                + self.unaccounted_at_close,
            ..SinkMetrics::default()
        }
    }
}
