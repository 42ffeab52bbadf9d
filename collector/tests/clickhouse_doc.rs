//! docs/clickhouse.md, run for real (issue 16): real `ProtobufSingle` messages of the Kafka sink's
//! encoder and a Parquet lake of the real sink go through the documented DDL in chdb (embedded
//! ClickHouse, `clickhouse_doc.py`), and the documented query returns what these records hold.
//! Needs python3 with chdb (`cargo xtask setup`).

use std::{collections::BTreeMap, net::IpAddr, process::Command, sync::Arc, time::Duration};

use flowlens_schema::{
    flow::{FlowKey, OBS_XDP},
    record::{EndReason, FlowRecord},
};
use flowlens_sinks::{
    Sink,
    kafka::encode::{Encoder, KafkaFormat},
    parquet::{ParquetOptions, ParquetSink},
};
use flowlens_testkit::temp_dir;
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn record(i: u32, now_us: i64) -> (FlowRecord, IpAddr, IpAddr, &'static str) {
    let mut key = FlowKey::ZERO;
    let v6 = i.is_multiple_of(5);
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (
            format!("2001:db8::{:x}", i + 1).parse().unwrap(),
            "2001:db8:1::1".parse().unwrap(),
        )
    } else {
        (
            format!("10.0.{}.{}", i / 200, i % 200 + 1).parse().unwrap(),
            "192.168.7.1".parse().unwrap(),
        )
    };
    let to16 = |a: IpAddr| match a {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    };
    key.ip_version = if v6 { 6 } else { 4 };
    key.src_addr = to16(src);
    key.dst_addr = to16(dst);
    key.protocol = if i.is_multiple_of(2) { 6 } else { 17 };
    key.src_port = 40_000 + i as u16;
    key.dst_port = 443;
    key.observation_point = OBS_XDP;
    key.ifindex = 2;
    // Every fifth record ended three hours ago (outside the documented query's last hour),
    // with the most bytes of all: the time filter must drop it.
    let old = i % 5 == 3;
    let end = now_us
        - if old {
            3 * 3_600_000_000
        } else {
            i as i64 * 5_000_000
        };
    let r = FlowRecord {
        flow_start_us: end - 2_000_000,
        flow_end_us: end,
        key,
        interface_name: "eth0".into(),
        packets: 3 + i as u64,
        bytes: if old {
            10_000_000 + i as u64
        } else {
            1000 + i as u64 * 37
        },
        tcp_flags: 0,
        dscp: 0,
        end_reason: EndReason::IdleTimeout,
        host: "doc".into(),
        community_id: String::new(),
        ends: Default::default(),
    };
    (r, src, dst, if key.protocol == 6 { "tcp" } else { "udp" })
}

/// ClickHouse's text of an address stored with `toIPv6` (IPv4 as `::ffff:a.b.c.d`).
fn ch_text(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v) => format!("::ffff:{v}"),
        IpAddr::V6(v) => v.to_string(),
    }
}

#[test]
fn clickhouse_doc_runs_as_written() {
    let dir = temp_dir("clickhouse-doc").unwrap();
    let (msgs, lake) = (dir.join("msgs"), dir.join("lake"));
    std::fs::create_dir_all(&msgs).unwrap();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let n = 300u32;
    let recs: Vec<_> = (0..n).map(|i| record(i, now_us)).collect();
    // The Kafka sink's encoder, one message per file (a Kafka message value).
    let mut enc = Encoder::new(KafkaFormat::Protobuf);
    let mut buf = Vec::new();
    for (i, (r, ..)) in recs.iter().enumerate() {
        enc.encode(r, &mut buf);
        std::fs::write(msgs.join(format!("{i:05}.bin")), &buf).unwrap();
    }
    let mut sink = ParquetSink::new(ParquetOptions {
        dir: lake.clone(),
        rotate_bytes: u64::MAX,
        rotate_interval: Duration::from_secs(3600),
        host: Arc::from("doc"),
        journal: None,
    })
    .unwrap();
    let all: Vec<FlowRecord> = recs.iter().map(|(r, ..)| r.clone()).collect();
    sink.write(&all).unwrap();
    sink.close().unwrap();

    // Expected: the documented query (bytes per src, dst, transport over the last hour, top 10).
    let mut sums: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for (r, src, dst, t) in &recs {
        if r.flow_end_us > now_us - 3_600_000_000 + 60_000_000 {
            *sums
                .entry((ch_text(*src), ch_text(*dst), t.to_string()))
                .or_default() += r.bytes;
        }
    }
    let mut want: Vec<_> = sums.into_iter().collect();
    want.sort_by_key(|w| std::cmp::Reverse(w.1));
    want.truncate(10);

    let o = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clickhouse_doc.py"
        ))
        .arg(format!("{ROOT}/docs/clickhouse.md"))
        .arg(format!("{ROOT}/schema/proto/flow.proto"))
        .arg(&msgs)
        .arg(&lake)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "clickhouse_doc.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["count"], n, "every message reached the storage table");
    assert_eq!(
        got["lake_count"], n,
        "every Parquet row reached the storage table"
    );
    for which in ["top", "lake_top"] {
        let rows: Vec<((String, String, String), u64)> = got[which]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    (
                        r["src"].as_str().unwrap().to_string(),
                        r["dst"].as_str().unwrap().to_string(),
                        r["network_transport"].as_str().unwrap().to_string(),
                    ),
                    r["bytes"]
                        .as_u64()
                        .or_else(|| r["bytes"].as_str().and_then(|s| s.parse().ok()))
                        .unwrap(),
                )
            })
            .collect();
        assert_eq!(rows, want, "{which}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
