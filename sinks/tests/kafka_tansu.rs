//! The Kafka sink against a real broker process: tansu (Kafka-compatible, in-memory storage),
//! installed by `cargo xtask setup`, on an ephemeral loopback port. Records are consumed back
//! with an rdkafka consumer and every one is decoded and compared; both directions of each
//! conversation must share a key and a partition.

mod common;

use std::time::Duration;

use common::assert_consumed_exactly;
use flowlens_sinks::{
    Sink,
    kafka::{KafkaFormat, KafkaOptions, KafkaSink},
};
use flowlens_testkit::{
    kafka::{Tansu, consume_all},
    records::conversations,
};

fn round_trip(tansu: &Tansu, topic: &str, format: KafkaFormat, conv: usize) {
    tansu.create_topic(topic, 3).unwrap();
    let mut o = KafkaOptions::new(tansu.bootstrap(), topic);
    o.format = format;
    o.close_timeout = Duration::from_secs(30);
    let mut sink = KafkaSink::new(o).unwrap();
    let recs = conversations(conv);
    for chunk in recs.chunks(250) {
        sink.write(chunk).unwrap();
        sink.tick().unwrap();
    }
    if let Err(e) = sink.close() {
        panic!("close: {e}\ntansu log:\n{}", tansu.log());
    }
    let m = sink.metrics();
    let n = recs.len() as u64;
    assert_eq!(
        (m.sent, m.acknowledged, m.queued, m.lost, m.rejected),
        (n, n, 0, 0, 0),
        "{m:?}"
    );
    let got = consume_all(
        &tansu.bootstrap(),
        topic,
        recs.len(),
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}\ntansu log:\n{}", tansu.log()));
    assert_consumed_exactly(&recs, &got, format);
    let parts: std::collections::BTreeSet<i32> = got.iter().map(|c| c.partition).collect();
    assert_eq!(parts.len(), 3, "partitions used: {parts:?}");
}

#[test]
fn tansu_receives_every_record_protobuf_and_json() {
    let tansu = Tansu::start().unwrap();
    round_trip(&tansu, "flows-pb", KafkaFormat::Protobuf, 1500);
    round_trip(&tansu, "flows-json", KafkaFormat::Json, 300);
}
