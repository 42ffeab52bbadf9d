//! Issue 13: what carrying the 14 Kubernetes name columns costs each sink's encoder, side by side
//! in interleaved rounds: the same 100k records (issue 12 identity as in the testkit sample),
//! once with every end's Kubernetes names set (pod-to-pod traffic, both ends named), once with
//! them null. One core; `flowlens-bench k8s-names`.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use anyhow::Result;
use flowlens_schema::record::{EndIdentity, FlowRecord, arrow_schema, to_record_batch};
use flowlens_sinks::{
    ipfix::encode::{DEFAULT_ENTERPRISE_NUMBER, Encoder as IpfixEncoder, EncoderConfig},
    kafka::encode::{Encoder as KafkaEncoder, KafkaFormat},
    otlp::encode::{MetricsAggregator, logs_request, resource},
    spool::codec,
};

fn named(e: &mut EndIdentity, i: usize, tag: &str) {
    let s = |v: String| -> Option<Arc<str>> { Some(v.into()) };
    e.k8s_namespace = s(format!("team-{}", i % 20));
    e.k8s_pod_name = s(format!("{tag}-deployment-7d9f8c6b5-{i:05x}"));
    e.k8s_owner_kind = s("Deployment".into());
    e.k8s_owner_name = s(format!("{tag}-{}", i % 50));
    e.k8s_node_name = s(format!(
        "ip-10-0-{}-{}.eu-west-1.compute.internal",
        i % 8,
        i % 200
    ));
    e.k8s_service_name = i.is_multiple_of(2).then(|| format!("{tag}-svc").into());
    e.zone = s(format!("eu-west-1{}", ["a", "b", "c"][i % 3]));
}

/// Records per second of `f` over `records` (one call).
fn rate(records: &[FlowRecord], f: &mut dyn FnMut(&[FlowRecord]) -> usize) -> (f64, f64) {
    let t = Instant::now();
    let bytes = f(records);
    (
        records.len() as f64 / t.elapsed().as_secs_f64(),
        bytes as f64 / records.len() as f64,
    )
}

pub fn run(rounds: usize, summary: &mut BTreeMap<String, f64>) -> Result<()> {
    let without = flowlens_testkit::records::conversations(50_000);
    let mut with = without.clone();
    for (i, r) in with.iter_mut().enumerate() {
        named(&mut r.ends.source, i, "client");
        named(&mut r.ends.destination, i + 7, "server");
    }
    let schema = arrow_schema();
    type Enc = Box<dyn FnMut(&[FlowRecord]) -> usize>;
    let encoders: Vec<(&str, Enc)> = vec![
        (
            "parquet",
            Box::new(move |rs: &[FlowRecord]| {
                let b = to_record_batch(&schema, rs).unwrap();
                let mut out = Vec::new();
                let mut w =
                    parquet::arrow::ArrowWriter::try_new(&mut out, b.schema(), None).unwrap();
                w.write(&b).unwrap();
                w.close().unwrap();
                out.len()
            }),
        ),
        (
            "otlp",
            Box::new(|rs: &[FlowRecord]| {
                let res = resource("bench");
                rs.chunks(2048)
                    .map(|c| prost::Message::encode_to_vec(&logs_request(&res, c, 1)).len())
                    .sum()
            }),
        ),
        (
            "kafka_protobuf",
            Box::new(|rs: &[FlowRecord]| kafka_bytes(KafkaFormat::Protobuf, rs)),
        ),
        (
            "kafka_json",
            Box::new(|rs: &[FlowRecord]| kafka_bytes(KafkaFormat::Json, rs)),
        ),
        (
            "ipfix",
            Box::new(|rs: &[FlowRecord]| {
                let e = IpfixEncoder::new(EncoderConfig {
                    domain_id: 1,
                    max_message: 1400,
                    enterprise: Some(DEFAULT_ENTERPRISE_NUMBER),
                });
                let mut out = Vec::new();
                rs.iter()
                    .map(|r| {
                        out.clear();
                        e.encode_record(r, &mut out);
                        out.len()
                    })
                    .sum()
            }),
        ),
        (
            "spool",
            Box::new(|rs: &[FlowRecord]| {
                // One record per spool entry, as the spool store writes them.
                let mut out = Vec::new();
                rs.iter()
                    .map(|r| {
                        out.clear();
                        codec::encode(r, &mut out);
                        out.len()
                    })
                    .sum()
            }),
        ),
        (
            "otlp_metrics_add",
            Box::new(|rs: &[FlowRecord]| {
                let mut m = MetricsAggregator::default();
                m.add(rs);
                m.workloads.len()
            }),
        ),
    ];
    let mut encoders = encoders;
    for round in 0..rounds {
        for (name, f) in encoders.iter_mut() {
            let (w, wb) = rate(&with, f);
            let (n, nb) = rate(&without, f);
            println!(
                "round {round} {name}: with names {:.0} k records/s ({wb:.1} B/record), without {:.0} k ({nb:.1} B), ratio {:.2}",
                w / 1e3,
                n / 1e3,
                w / n
            );
            let key = |k: &str| format!("k8s_names_{name}_{k}");
            let best = |s: &mut BTreeMap<String, f64>, k: String, v: f64| {
                let e = s.entry(k).or_insert(0.0);
                *e = e.max(v);
            };
            best(summary, key("with_records_per_sec"), w);
            best(summary, key("without_records_per_sec"), n);
            summary.insert(key("with_bytes_per_record"), wb);
            summary.insert(key("without_bytes_per_record"), nb);
        }
    }
    Ok(())
}

/// Bytes of the Kafka messages of `rs` in `format`.
fn kafka_bytes(format: KafkaFormat, rs: &[FlowRecord]) -> usize {
    let mut e = KafkaEncoder::new(format);
    let mut out = Vec::new();
    rs.iter()
        .map(|r| {
            e.encode(r, &mut out);
            out.len()
        })
        .sum()
}
