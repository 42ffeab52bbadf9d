//! The Kafka sink against librdkafka's mock cluster (real Kafka protocol over loopback TCP,
//! in-process brokers with fault injection): every record is consumed back with an rdkafka
//! consumer and decoded; broker outages within the queue bound lose nothing; past the bound,
//! losses are counted exactly; broker rejections are counted as rejected.

mod common;

use std::time::{Duration, Instant};

use common::assert_consumed_exactly;
use flowlens_sinks::{
    Sink, SinkError, SinkMetrics,
    kafka::{KafkaFormat, KafkaOptions, KafkaSink},
};
use flowlens_testkit::{kafka::consume_all, records::conversations};
use rdkafka::{
    mocking::MockCluster,
    types::{RDKafkaApiKey, RDKafkaRespErr},
};

const SETTLE: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(30);

fn opts(bootstrap: &str, topic: &str) -> KafkaOptions {
    let mut o = KafkaOptions::new(bootstrap, topic);
    o.options = vec![
        // Statistics often enough for the `retried` check.
        ("statistics.interval.ms".into(), "100".into()),
        // Reconnect quickly after broker_up.
        ("reconnect.backoff.max.ms".into(), "200".into()),
        ("retry.backoff.max.ms".into(), "200".into()),
    ];
    o.close_timeout = Duration::from_secs(20);
    o
}

/// Waits until `f(metrics)` holds (bounded).
fn wait_for(sink: &KafkaSink, what: &str, f: impl Fn(&SinkMetrics) -> bool) -> SinkMetrics {
    let t0 = Instant::now();
    loop {
        let m = sink.metrics();
        if f(&m) {
            return m;
        }
        assert!(
            t0.elapsed() < TIMEOUT,
            "{what}: still {m:?} after {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn delivered_and_read_back(format: KafkaFormat) {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic("flows", 4, 3).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let mut o = opts(&bootstrap, "flows");
    o.format = format;
    let mut sink = KafkaSink::new(o).unwrap();
    let recs = conversations(1000);
    for chunk in recs.chunks(128) {
        sink.write(chunk).unwrap();
        sink.tick().unwrap();
    }
    sink.close().unwrap();
    let m = sink.metrics();
    assert_eq!(
        m,
        SinkMetrics {
            sent: 2000,
            acknowledged: 2000,
            retried: m.retried,
            rejected: 0,
            queued: 0,
            lost: 0,
            ..SinkMetrics::default()
        }
    );
    let got = consume_all(&bootstrap, "flows", recs.len(), SETTLE, TIMEOUT).unwrap();
    assert_consumed_exactly(&recs, &got, format);
    // Keys spread over the partitions (the key-hash partitioner is in use).
    let parts: std::collections::BTreeSet<i32> = got.iter().map(|c| c.partition).collect();
    assert_eq!(parts.len(), 4, "partitions used: {parts:?}");
}

#[test]
fn protobuf_records_are_acknowledged_and_read_back() {
    delivered_and_read_back(KafkaFormat::Protobuf);
}

#[test]
fn json_records_are_acknowledged_and_read_back() {
    delivered_and_read_back(KafkaFormat::Json);
}

#[test]
fn broker_outage_within_the_queue_bound_loses_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("flows", 2, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let mut o = opts(&bootstrap, "flows");
    o.queue_max_records = 1000;
    let mut sink = KafkaSink::new(o).unwrap();
    let recs = conversations(400); // 800 records
    sink.write(&recs[..100]).unwrap();
    wait_for(&sink, "first 100 acknowledged", |m| m.acknowledged == 100);

    cluster.broker_down(1).unwrap();
    for chunk in recs[100..].chunks(100) {
        sink.write(chunk).unwrap();
        sink.tick().unwrap();
    }
    // Nothing can be acknowledged while the only broker is down; everything waits.
    std::thread::sleep(Duration::from_millis(1500));
    let m = sink.metrics();
    assert_eq!(
        (m.sent, m.acknowledged, m.queued, m.lost),
        (800, 100, 700, 0),
        "{m:?}"
    );

    cluster.broker_up(1).unwrap();
    wait_for(&sink, "all acknowledged after broker_up", |m| {
        m.acknowledged == 800
    });
    sink.close().unwrap();
    let m = sink.metrics();
    assert_eq!(
        (m.sent, m.acknowledged, m.queued, m.lost, m.rejected),
        (800, 800, 0, 0, 0)
    );
    let got = consume_all(&bootstrap, "flows", recs.len(), SETTLE, TIMEOUT).unwrap();
    assert_consumed_exactly(&recs, &got, KafkaFormat::Protobuf);
}

#[test]
fn records_past_the_queue_bound_are_counted_as_lost() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("flows", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let mut o = opts(&bootstrap, "flows");
    o.queue_max_records = 200;
    let mut sink = KafkaSink::new(o).unwrap();
    let recs = conversations(250); // 500 records
    sink.write(&recs[..10]).unwrap();
    wait_for(&sink, "first 10 acknowledged", |m| m.acknowledged == 10);

    cluster.broker_down(1).unwrap();
    // 200 fit in the queue, the other 290 are dropped at once and counted.
    sink.write(&recs[10..]).unwrap();
    let m = sink.metrics();
    assert_eq!(
        (m.sent, m.acknowledged, m.queued, m.lost),
        (210, 10, 200, 290),
        "{m:?}"
    );

    cluster.broker_up(1).unwrap();
    let err = sink.close().unwrap_err();
    assert!(
        matches!(err, SinkError::Lost { records: 290, .. }),
        "close: {err}"
    );
    let m = sink.metrics();
    assert_eq!(
        (m.sent, m.acknowledged, m.queued, m.lost, m.rejected),
        (210, 210, 0, 290, 0)
    );
    assert_eq!(sink.records_lost(), 290);
    // Exactly the records that fit are in the topic.
    let got = consume_all(&bootstrap, "flows", 210, SETTLE, TIMEOUT).unwrap();
    assert_consumed_exactly(&recs[..210], &got, KafkaFormat::Protobuf);
}

#[test]
fn unacknowledged_records_at_close_are_lost_not_hidden() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("flows", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let mut o = opts(&bootstrap, "flows");
    o.close_timeout = Duration::from_millis(500);
    let mut sink = KafkaSink::new(o).unwrap();
    let recs = conversations(50);
    sink.write(&recs[..2]).unwrap();
    wait_for(&sink, "first 2 acknowledged", |m| m.acknowledged == 2);
    cluster.broker_down(1).unwrap();
    sink.write(&recs[2..]).unwrap();
    let err = sink.close().unwrap_err();
    assert!(
        matches!(err, SinkError::Lost { records: 98, .. }),
        "close: {err}"
    );
    let m = sink.metrics();
    assert_eq!((m.sent, m.acknowledged, m.queued, m.lost), (100, 2, 0, 98));
}

#[test]
fn broker_rejections_are_counted_and_retryable_errors_retried() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("flows", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let mut sink = KafkaSink::new(opts(&bootstrap, "flows")).unwrap();
    let recs = conversations(150); // 300 records
    sink.write(&recs[..10]).unwrap();
    wait_for(&sink, "warm-up acknowledged", |m| m.acknowledged == 10);

    // Retryable: the next produce requests fail with a transient error, then succeed.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3],
    );
    sink.write(&recs[10..100]).unwrap();
    let m = wait_for(&sink, "retried batch acknowledged", |m| {
        m.acknowledged == 100
    });
    assert_eq!((m.lost, m.rejected), (0, 0), "{m:?}");
    let m = wait_for(&sink, "retries reported by statistics", |m| m.retried >= 1);
    assert_eq!(m.lost, 0);

    // Permanent: the broker refuses the next request; its records are rejected, not retried.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    sink.write(&recs[100..200]).unwrap();
    let m = wait_for(&sink, "rejected batch reported", |m| {
        m.acknowledged + m.rejected == 200
    });
    assert!(m.rejected > 0, "{m:?}");
    assert_eq!(m.lost, 0, "{m:?}");
    let rejected = m.rejected;

    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    sink.write(&recs[200..]).unwrap();
    let err = sink.close().unwrap_err();
    assert!(
        matches!(err, SinkError::Lost { records, .. } if records == rejected),
        "{err}"
    );
    let m = sink.metrics();
    assert_eq!((m.acknowledged + m.rejected, m.lost), (300, 0), "{m:?}");
    assert_eq!((m.queued, m.rejected), (0, rejected));
    let got = consume_all(
        &bootstrap,
        "flows",
        m.acknowledged as usize,
        SETTLE,
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(got.len() as u64, m.acknowledged);
}

#[test]
fn bad_options_fail_at_construction() {
    let mut o = KafkaOptions::new("127.0.0.1:1", "flows");
    o.options = vec![("no.such.property".into(), "1".into())];
    let e = KafkaSink::new(o)
        .err()
        .map(|e| format!("{:#}", anyhow::Error::new(e)))
        .expect("unknown property accepted");
    assert!(e.contains("no.such.property"), "{e}");
    let mut o = KafkaOptions::new("127.0.0.1:1", "flows");
    o.options = vec![("compression.type".into(), "brotli".into())];
    let e = KafkaSink::new(o)
        .err()
        .map(|e| format!("{:#}", anyhow::Error::new(e)))
        .expect("bad value accepted");
    assert!(e.contains("compression"), "{e}");
    // What this build supports (docs/TRANSPORTS.md): TLS and SASL PLAIN/SCRAM (issue 14).
    let mut o = KafkaOptions::new("127.0.0.1:1", "flows");
    o.options = vec![
        ("security.protocol".into(), "SASL_PLAINTEXT".into()),
        ("sasl.mechanism".into(), "PLAIN".into()),
        ("sasl.username".into(), "u".into()),
        ("sasl.password".into(), "p".into()),
    ];
    KafkaSink::new(o).unwrap();
    let mut o = KafkaOptions::new("127.0.0.1:1", "flows");
    o.options = vec![
        ("security.protocol".into(), "SASL_SSL".into()),
        ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
        ("sasl.username".into(), "u".into()),
        ("sasl.password".into(), "pw-secret".into()),
    ];
    // Debug output never shows a password.
    let dbg = format!("{o:?}");
    assert!(
        !dbg.contains("pw-secret") && dbg.contains("sasl.password"),
        "{dbg}"
    );
    KafkaSink::new(o).unwrap();
    // Option syntax errors never show the value either.
    for bad in ["sasl password=pw-secret", "pw-secret"] {
        let e = flowlens_sinks::kafka::parse_option(bad).unwrap_err();
        assert!(!e.contains("pw-secret"), "{e}");
    }
    let mut o = KafkaOptions::new("127.0.0.1:1", "flows");
    o.queue_max_records = 0;
    assert!(KafkaSink::new(o).is_err());
    assert!(flowlens_sinks::kafka::parse_option("acks").is_err());
    assert!(flowlens_sinks::kafka::parse_option("=1").is_err());
    assert!(flowlens_sinks::kafka::parse_option("bootstrap.servers=x:1").is_err());
    assert_eq!(
        flowlens_sinks::kafka::parse_option("sasl.password=a=b").unwrap(),
        ("sasl.password".to_string(), "a=b".to_string())
    );
}

/// The topic disappears (the cluster answers "unknown topic or partition", as after an
/// in-memory broker restart or a deleted topic) and comes back a few seconds later: librdkafka
/// fails the records it holds meanwhile. Those failures can clear, so the sink sends the
/// records again; none is counted lost and each is in the topic exactly once.
#[test]
fn records_survive_a_topic_that_is_gone_for_a_while() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("flows", 2, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let mut o = opts(&bootstrap, "flows");
    o.options.extend([
        // Notice the missing topic within seconds (librdkafka's defaults: 5 min metadata
        // refresh, 30 s before a topic missing from metadata fails its records).
        ("topic.metadata.refresh.interval.ms".into(), "200".into()),
        ("topic.metadata.propagation.max.ms".into(), "500".into()),
    ]);
    let mut sink = KafkaSink::new(o).unwrap();
    let recs = conversations(300); // 600 records
    sink.write(&recs[..100]).unwrap();
    wait_for(&sink, "first 100 acknowledged", |m| m.acknowledged == 100);

    cluster
        .topic_error(
            "flows",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        )
        .unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART; 50],
    );
    for chunk in recs[100..].chunks(100) {
        sink.write(chunk).unwrap();
        sink.tick().unwrap();
    }
    // Until librdkafka has failed (and the sink re-queued) records for the missing topic.
    let m = wait_for(&sink, "deliveries failed while the topic is gone", |m| {
        m.retried > 0
    });
    assert_eq!((m.lost, m.rejected), (0, 0), "{m:?}");
    for _ in 0..40 {
        sink.tick().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = sink.metrics();
    assert_eq!(
        (m.lost, m.rejected),
        (0, 0),
        "while the topic is gone: {m:?}"
    );
    assert!(m.acknowledged < 600, "{m:?}");

    cluster
        .topic_error("flows", RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let t0 = Instant::now();
    while sink.metrics().acknowledged < 600 {
        assert!(t0.elapsed() < TIMEOUT, "{:?}", sink.metrics());
        sink.tick().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    sink.close().unwrap();
    let m = sink.metrics();
    assert_eq!(
        (m.acknowledged, m.queued, m.lost, m.rejected),
        (600, 0, 0, 0),
        "{m:?}"
    );
    let got = consume_all(&bootstrap, "flows", recs.len(), SETTLE, TIMEOUT).unwrap();
    assert_consumed_exactly(&recs, &got, KafkaFormat::Protobuf);
}
