//! The I/O side of the Kafka sink: librdkafka's producer callbacks, turned into counters.
//!
//! A record counts as acknowledged only when its delivery report says the broker stored it
//! (with `acks=all`: every in-sync replica). A failed report is one of:
//! * **transient** ([`is_transient`]: the topic or partition is unknown for now, no leader, not
//!   enough replicas, a request timeout, the brokers unreachable): the failure can clear, so the record
//!   is kept ([`Counters::retry`]) and the sink hands it to librdkafka again after
//!   [`RETRY_BACKOFF`]; it stays unsettled meanwhile (so the spool wrapper sees no room and
//!   newer records go to the spool), and is never counted lost for it;
//! * **rejected**: any other broker error code (message too large, not authorized, ...):
//!   permanent, librdkafka already retried what it could;
//! * **lost**: any other local failure (`message.timeout.ms` expired, a purge at close).
//!
//! Re-sending a record after a timeout may duplicate it (the broker may have stored the first
//! copy without answering): at-least-once, as the spool's guarantee already says.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use rdkafka::{
    ClientContext, Message,
    config::RDKafkaLogLevel,
    error::KafkaError,
    producer::{DeliveryResult, ProducerContext},
    statistics::Statistics,
};

/// Delivery counters, written by librdkafka's polling thread, read by the sink.
#[derive(Default, Debug)]
pub struct Counters {
    /// Delivery reports that said "stored".
    pub acked: AtomicU64,
    /// Delivery reports with an error (rejected ones included).
    pub failed: AtomicU64,
    /// Failed reports carrying a broker error code.
    pub rejected: AtomicU64,
    /// Record transmissions beyond one per acknowledged or rejected record: librdkafka counts
    /// every record it puts into a produce request (`txmsgs` in its statistics) but has no
    /// per-record retry count. Sampled when its queue is empty (so every transmitted record
    /// has its delivery report), at most once per `statistics.interval.ms`; never decreases.
    pub retransmitted: AtomicU64,
    /// Delivery reports with a transient error whose record was kept to be sent again.
    pub requeued: AtomicU64,
    /// Those records, waiting to be handed to librdkafka again (the sink's `write`/`tick`).
    pub retry: Mutex<Vec<Retry>>,
    /// The most recent delivery error, for the periodic log line.
    pub last_error: Mutex<Option<String>>,
    /// The most recent transient delivery error.
    pub last_transient: Mutex<Option<String>>,
    /// Which records (by their index, the delivery opaque) have a final outcome.
    pub settled: Mutex<Watermark>,
}

/// How long a record whose delivery failed transiently waits before it is sent again.
pub const RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// A record to send again: its index (the delivery opaque), key, payload and timestamp, and
/// when it may be sent.
#[derive(Debug)]
pub struct Retry {
    pub idx: u64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub timestamp_ms: Option<i64>,
    pub due: std::time::Instant,
}

impl Counters {
    /// Keeps a record whose send failed for a reason that can clear: unsettled, counted in
    /// `requeued`, sent again by the sink after [`RETRY_BACKOFF`]. False when it could not be
    /// kept (a poisoned lock: a thread panicked holding it).
    pub fn requeue(
        &self,
        idx: u64,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        timestamp_ms: Option<i64>,
        e: &KafkaError,
    ) -> bool {
        let Ok(mut retry) = self.retry.lock() else {
            return false;
        };
        retry.push(Retry {
            idx,
            key,
            payload,
            timestamp_ms,
            due: std::time::Instant::now() + RETRY_BACKOFF,
        });
        drop(retry);
        self.requeued.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_transient.lock() {
            *last = Some(e.to_string());
        }
        true
    }
}

/// Delivery errors that can clear without anything changing on flowlens's side: the topic or
/// partition is unknown for now (deleted and re-created, a broker restarted without it, a
/// partition being moved), no leader or not enough in-sync replicas yet, timeouts, unreachable
/// brokers. Everything else (message too large, authorization, invalid record, ...) is final,
/// and so is `MessageTimedOut`: `message.timeout.ms` is the bound the user chose for how long a
/// record may wait (under a spool flowlens sets it to infinite, see `build.rs`).
pub fn is_transient(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::UnknownPartition
                | C::UnknownTopic
                | C::AllBrokersDown
                | C::BrokerTransportFailure
                | C::Resolve
                | C::OperationTimedOut
                | C::TimedOutQueue
                | C::UnknownTopicOrPartition
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::RequestTimedOut
                | C::BrokerNotAvailable
                | C::ReplicaNotAvailable
                | C::NetworkException
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::NotController
                | C::KafkaStorageError
                | C::FencedLeaderEpoch
                | C::UnknownLeaderEpoch
                | C::PreferredLeaderNotAvailable
        )
    )
}

/// A FIFO watermark over out-of-order completions: `next` is the count of records settled with
/// every earlier record settled too; `ahead` holds settled indexes past it (delivery reports of
/// different partitions arrive in any order).
#[derive(Default, Debug)]
pub struct Watermark {
    pub next: u64,
    ahead: std::collections::BTreeSet<u64>,
}

impl Watermark {
    pub fn settle(&mut self, idx: u64) {
        if idx == self.next {
            self.next += 1;
            while self.ahead.remove(&self.next) {
                self.next += 1;
            }
        } else if idx > self.next {
            self.ahead.insert(idx);
        }
    }
}

/// The producer's context: delivery reports, statistics and librdkafka's log lines.
pub struct DeliveryContext {
    pub counters: std::sync::Arc<Counters>,
    pub name: String,
    /// librdkafka repeats its complaints while a broker is down (every reconnect attempt):
    /// warnings and errors are logged at most once per interval, with the count suppressed.
    pub log_limit: crate::log_limit::SharedRateLimited,
    pub error_limit: crate::log_limit::SharedRateLimited,
    /// The first TLS or SASL failure librdkafka reported (issue 14): `KafkaSink::check_secure`
    /// turns it into an error at start.
    pub auth_error: Mutex<Option<(KafkaError, String)>>,
}

/// A TLS handshake or SASL authentication failure: configuration, not an outage. A TLS alert
/// from the broker after the handshake (TLS 1.3: a refused or missing client certificate)
/// arrives as a transport failure whose reason names OpenSSL's "SSL routines".
pub fn is_auth_error(e: &KafkaError, reason: &str) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::SSL | C::Authentication | C::SaslAuthenticationFailed) => true,
        Some(C::BrokerTransportFailure) => reason.contains("SSL routines"),
        _ => false,
    }
}

/// Broker error codes are non-negative; librdkafka's local errors (timeout, purge, transport)
/// are negative.
fn is_broker_error(e: &KafkaError) -> bool {
    e.rdkafka_error_code().is_some_and(|c| c as i32 >= 0)
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                if let Some(suppressed) = self.log_limit.check() {
                    tracing::error!(sink = %self.name, facility = fac, suppressed, "librdkafka: {msg}")
                }
            }
            RDKafkaLogLevel::Warning => {
                if let Some(suppressed) = self.log_limit.check() {
                    tracing::warn!(sink = %self.name, facility = fac, suppressed, "librdkafka: {msg}")
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(sink = %self.name, facility = fac, "librdkafka: {msg}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(sink = %self.name, facility = fac, "librdkafka: {msg}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_auth_error(&error, reason)
            && let Ok(mut a) = self.auth_error.lock()
            && a.is_none()
        {
            *a = Some((error.clone(), reason.replace('\n', " ")));
        }
        // Transport errors (broker down) arrive here repeatedly; records wait in the queue.
        if let Some(suppressed) = self.error_limit.check() {
            tracing::warn!(sink = %self.name, error = %error, suppressed, "kafka client: {reason}");
        }
    }

    fn stats(&self, s: Statistics) {
        // msg_cnt counts records until their delivery report has been served, so at zero every
        // transmitted record is in `acked` or `rejected` (or failed locally after a send, which
        // then counts as a retransmission that did not succeed).
        if s.msg_cnt == 0 {
            let c = &self.counters;
            let done = c.acked.load(Ordering::Relaxed) + c.rejected.load(Ordering::Relaxed);
            let extra = u64::try_from(s.txmsgs).unwrap_or(0).saturating_sub(done);
            c.retransmitted.fetch_max(extra, Ordering::Relaxed);
        }
    }
}

impl ProducerContext for DeliveryContext {
    /// The record's index (see [`Watermark`]).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, idx: usize) {
        let c = &self.counters;
        // Kept unsettled, sent again by the sink (see the module docs).
        if let Err((e, msg)) = result
            && is_transient(e)
            && c.requeue(
                idx as u64,
                msg.key().map(<[u8]>::to_vec),
                msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                msg.timestamp().to_millis(),
                e,
            )
        {
            return;
        }
        if let Ok(mut w) = c.settled.lock() {
            w.settle(idx as u64);
        }
        match result {
            Ok(_) => {
                c.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                if is_broker_error(e) {
                    c.rejected.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(mut last) = c.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn watermark_waits_for_the_oldest() {
        let mut w = Watermark::default();
        for i in [2, 1, 4] {
            w.settle(i);
        }
        assert_eq!(w.next, 0);
        w.settle(0);
        assert_eq!(w.next, 3);
        w.settle(3);
        assert_eq!(w.next, 5);
        assert!(w.ahead.is_empty());
    }

    #[test]
    fn broker_errors_are_told_from_local_ones() {
        assert!(is_broker_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(is_broker_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(!is_broker_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
        assert!(!is_broker_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::PurgeQueue
        )));
    }

    #[test]
    fn failures_that_can_clear_are_told_from_final_ones() {
        let e = |c| KafkaError::MessageProduction(c);
        for c in [
            RDKafkaErrorCode::UnknownPartition,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert!(is_transient(&e(c)), "{c:?}");
        }
        for c in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
            RDKafkaErrorCode::InvalidMessage,
            RDKafkaErrorCode::PurgeQueue,
            RDKafkaErrorCode::PurgeInflight,
            RDKafkaErrorCode::MessageTimedOut,
        ] {
            assert!(!is_transient(&e(c)), "{c:?}");
        }
    }
}
