//! The on-disk spool around the Kafka sink, against librdkafka's mock cluster (real Kafka
//! protocol over loopback TCP, brokers taken down and up): an outage longer than the memory
//! queue spills to disk and is replayed; every record is consumed back exactly once, in order
//! per key; a restart with a non-empty spool delivers the rest.

mod common;

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use common::assert_consumed_exactly;
use flowlens_schema::record::FlowRecord;
use flowlens_sinks::{
    Sink, SinkMetrics,
    kafka::{KafkaFormat, KafkaOptions, KafkaSink, encode::FlowMessage},
    spool::{SpoolOptions, SpooledSink},
};
use flowlens_testkit::{
    kafka::{Consumed, consume_all},
    records::conversations,
    unique_path,
};
use prost::Message as _;
use rdkafka::mocking::MockCluster;

const SETTLE: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(60);

/// The Kafka sink as the collector configures it under a spool: no message timeout (the spool
/// bounds an outage), a short close (the wrapper owns the grace).
fn kafka(bootstrap: &str, queue: u32) -> KafkaSink {
    let mut o = KafkaOptions::new(bootstrap, "flows");
    o.options = vec![
        ("message.timeout.ms".into(), "0".into()),
        ("reconnect.backoff.max.ms".into(), "200".into()),
        ("retry.backoff.max.ms".into(), "200".into()),
    ];
    o.queue_max_records = queue;
    o.close_timeout = Duration::from_millis(500);
    KafkaSink::new(o).unwrap()
}

fn spool_opts(dir: &Path, grace: Duration) -> SpoolOptions {
    let mut o = SpoolOptions::new(dir);
    o.segment_bytes = 64 * 1024;
    o.grace = grace;
    o.close_reserve = Duration::from_secs(2);
    o.replay_chunk = 300;
    o
}

fn wait_for<S: Sink>(sink: &mut S, what: &str, f: impl Fn(&SinkMetrics) -> bool) -> SinkMetrics {
    let t0 = Instant::now();
    loop {
        sink.tick().unwrap();
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

/// Both records of a conversation share a key (and so a partition): the A→B record (written
/// first) must come before the B→A one.
fn assert_in_order_per_key(recs: &[FlowRecord], got: &[Consumed]) {
    let index: HashMap<(String, String), usize> = recs
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.community_id.clone(), r.source_address().to_string()), i))
        .collect();
    let mut sorted: Vec<&Consumed> = got.iter().collect();
    sorted.sort_by_key(|c| (c.partition, c.offset));
    let mut last: HashMap<Vec<u8>, usize> = HashMap::new();
    for c in sorted {
        let m = FlowMessage::decode(&c.payload[..]).unwrap();
        let i = index[&(m.community_id.clone(), m.source_address.clone())];
        let key = c.key.clone().unwrap();
        if let Some(prev) = last.insert(key, i) {
            assert!(
                prev < i,
                "record {i} consumed after record {prev} of the same key"
            );
        }
    }
}

#[test]
fn broker_outage_spills_to_disk_and_replays_exactly_once_in_order() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("flows", 3, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let dir = unique_path("kspool-outage");
    let mut sink = SpooledSink::new(
        kafka(&bootstrap, 500),
        spool_opts(&dir, Duration::from_secs(20)),
    )
    .unwrap();
    let recs = conversations(3000); // 6000 records
    sink.write(&recs[..200]).unwrap();
    wait_for(&mut sink, "first 200 acknowledged", |m| {
        m.acknowledged == 200
    });

    cluster.broker_down(1).unwrap();
    for c in recs[200..].chunks(100) {
        sink.write(c).unwrap();
        sink.tick().unwrap();
    }
    std::thread::sleep(Duration::from_millis(1000));
    sink.tick().unwrap();
    let m = sink.metrics();
    // librdkafka holds at most its queue bound (500); the rest waits on disk.
    assert_eq!((m.acknowledged, m.lost, m.rejected), (200, 0, 0), "{m:?}");
    assert!(m.queued <= 500, "{m:?}");
    assert!(m.spooled >= 5800 - 500, "{m:?}");
    assert!(m.spool_bytes > 64 * 1024, "{m:?}");

    cluster.broker_up(1).unwrap();
    let m = wait_for(&mut sink, "everything acknowledged after broker_up", |m| {
        m.acknowledged == 6000 && m.spooled == 0
    });
    assert_eq!((m.lost, m.rejected, m.queued), (0, 0, 0), "{m:?}");
    sink.close().unwrap();
    let m = sink.metrics();
    assert_eq!(
        (m.sent, m.acknowledged, m.lost, m.spooled),
        (6000, 6000, 0, 0),
        "{m:?}"
    );
    let got = consume_all(&bootstrap, "flows", recs.len(), SETTLE, TIMEOUT).unwrap();
    assert_consumed_exactly(&recs, &got, KafkaFormat::Protobuf);
    assert_in_order_per_key(&recs, &got);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn records_unacknowledged_at_shutdown_are_sent_by_the_next_start() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("flows", 2, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let dir = unique_path("kspool-restart");
    let recs = conversations(1000); // 2000 records
    {
        let mut sink = SpooledSink::new(
            kafka(&bootstrap, 300),
            spool_opts(&dir, Duration::from_secs(3)),
        )
        .unwrap();
        sink.write(&recs[..100]).unwrap();
        wait_for(&mut sink, "first 100 acknowledged", |m| {
            m.acknowledged == 100
        });
        cluster.broker_down(1).unwrap();
        for c in recs[100..].chunks(100) {
            sink.write(c).unwrap();
            sink.tick().unwrap();
        }
        // Broker still down: close gives up after the grace; librdkafka's queue is purged and
        // those records go back to the spool (spooled, not lost).
        let t0 = Instant::now();
        sink.close().unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "close took {:?}",
            t0.elapsed()
        );
        let m = sink.metrics();
        assert_eq!((m.acknowledged, m.lost, m.spooled), (100, 0, 1900), "{m:?}");
    }
    cluster.broker_up(1).unwrap();
    let mut sink = SpooledSink::new(
        kafka(&bootstrap, 300),
        spool_opts(&dir, Duration::from_secs(20)),
    )
    .unwrap();
    assert_eq!(sink.metrics().spooled, 1900);
    wait_for(&mut sink, "replayed after restart", |m| {
        m.acknowledged == 1900 && m.spooled == 0
    });
    sink.close().unwrap();
    let got = consume_all(&bootstrap, "flows", recs.len(), SETTLE, TIMEOUT).unwrap();
    assert_consumed_exactly(&recs, &got, KafkaFormat::Protobuf);
    assert_in_order_per_key(&recs, &got);
    std::fs::remove_dir_all(&dir).unwrap();
}
