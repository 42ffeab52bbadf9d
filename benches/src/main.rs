//! flowlens benchmarks. Every number is measured side by side with its baseline in the same run
//! and written to `target/bench/summary.json` (flat object of named numbers). Run as root with
//! `cargo xtask bench`; see docs/BENCHMARKS.md.
//!
//! * Probe cost per packet (`BPF_PROG_TEST_RUN`, kernel-timed): the no-op XDP program, the
//!   shipped shared-map program (atomic adds) and its per-CPU-map twin, over a packet mix,
//!   interleaved in rounds; medians reported.
//! * Record path: synthetic drained deltas → flow table → records (flows/s), and Parquet
//!   encoding (records/s, bytes/record).
//! * OTLP: building and protobuf-encoding log export requests of the default batch size
//!   (records/s, uncompressed bytes/record; gzip is applied by the gRPC layer on top).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use flowlens::{
    export::Exporter,
    flow_table::FlowTable,
    probe::{Probe, XDP_NOOP_PROGRAM, XDP_PERCPU_PROGRAM, XDP_PROGRAM},
    timebase::Timebase,
};
use flowlens_schema::{FlowKey, FlowValue};
use flowlens_sinks::{
    Sink,
    otlp::{DEFAULT_BATCH_RECORDS, encode},
    parquet::{ParquetOptions, ParquetSink},
};
use prost::Message as _;

/// The packet mix: IPv4/IPv6, TCP/UDP/ICMP, with and without a VLAN tag, common sizes.
fn packet_mix() -> Vec<(&'static str, Vec<u8>)> {
    let mac = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let mut out = vec![];
    let mut push = |name: &'static str,
                    builder: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
                    payload: usize| {
        let p = vec![0xabu8; payload];
        let mut v = Vec::with_capacity(builder.size(p.len()));
        builder.write(&mut v, &p).expect("build packet");
        out.push((name, v));
    };
    push(
        "ipv4_tcp_1448",
        PacketBuilder::ethernet2(mac.0, mac.1)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 443, 1, 65535)
            .ack(1),
        1448,
    );
    push(
        "ipv6_tcp_1428",
        PacketBuilder::ethernet2(mac.0, mac.1)
            .ipv6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .tcp(40001, 443, 1, 65535)
            .ack(1),
        1428,
    );
    push(
        "vlan_ipv4_tcp_64",
        PacketBuilder::ethernet2(mac.0, mac.1)
            .single_vlan(100.try_into().expect("vid"))
            .ipv4([10, 0, 0, 1], [10, 0, 0, 3], 64)
            .tcp(40002, 80, 1, 65535)
            .ack(1),
        10,
    );
    let mut udp = |name: &'static str,
                   builder: etherparse::PacketBuilderStep<etherparse::UdpHeader>,
                   payload: usize| {
        let p = vec![0xcdu8; payload];
        let mut v = Vec::with_capacity(builder.size(p.len()));
        builder.write(&mut v, &p).expect("build packet");
        out.push((name, v));
    };
    udp(
        "ipv4_udp_512",
        PacketBuilder::ethernet2(mac.0, mac.1)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5353, 5353),
        512,
    );
    udp(
        "ipv6_udp_100",
        PacketBuilder::ethernet2(mac.0, mac.1)
            .ipv6(
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .udp(4000, 53),
        100,
    );
    out
}

/// Median kernel-measured ns/packet per program, programs interleaved round by round.
fn probe_cost(rounds: usize, repeat: u32) -> Result<BTreeMap<&'static str, f64>> {
    let mix = packet_mix();
    let mut probe = Probe::load_sized(65_536, 65_536)?;
    let progs = [
        ("noop", XDP_NOOP_PROGRAM),
        ("shared_atomic", XDP_PROGRAM),
        ("percpu", XDP_PERCPU_PROGRAM),
    ];
    for (_, p) in progs {
        probe.xdp_program(p)?;
    }
    let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for _ in 0..rounds {
        for (label, p) in progs {
            let prog = probe.xdp_program(p)?;
            let mut total = 0.0;
            for (_, frame) in &mix {
                let r = prog
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        repeat,
                        ..Default::default()
                    })
                    .with_context(|| format!("test run of {p}"))?;
                anyhow::ensure!(
                    r.return_value == 2,
                    "{p} returned {} instead of XDP_PASS",
                    r.return_value
                );
                total += r.duration.as_nanos() as f64;
            }
            samples
                .entry(label)
                .or_default()
                .push(total / mix.len() as f64);
        }
    }
    Ok(samples
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(|a, b| a.total_cmp(b));
            (k, v[v.len() / 2])
        })
        .collect())
}

fn synthetic_deltas(n: usize, now: u64) -> Vec<(FlowKey, FlowValue)> {
    (0..n)
        .map(|i| {
            let mut k = FlowKey::ZERO;
            k.ip_version = 4;
            k.protocol = 6;
            k.src_addr[10..].copy_from_slice(&[
                0xff,
                0xff,
                10,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ]);
            k.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 192, 168, 0, 1]);
            k.src_port = (i % 50_000) as u16 + 1024;
            k.dst_port = 443;
            k.observation_point = 1;
            k.ifindex = 1;
            let v = FlowValue {
                packets: 10,
                bytes: 5000,
                first_seen_ns: now - 2_000_000_000,
                last_seen_ns: now - 1_000_000_000,
                tcp_flags: 0x18,
                dscp: 0,
                _pad: [0; 7],
            };
            (k, v)
        })
        .collect()
}

fn main() -> Result<()> {
    let mut summary: BTreeMap<String, f64> = BTreeMap::new();
    let machine = format!(
        "{} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // Probe cost.
    let costs = probe_cost(7, 200_000)?;
    let (noop, shared, percpu) = (costs["noop"], costs["shared_atomic"], costs["percpu"]);
    summary.insert("noop_xdp_ns_per_pkt".into(), noop);
    summary.insert("xdp_ns_per_pkt_existing_flow".into(), shared);
    summary.insert("xdp_percpu_ns_per_pkt_existing_flow".into(), percpu);
    summary.insert("xdp_over_noop_ns_existing_flow".into(), shared - noop);
    summary.insert(
        "xdp_percpu_over_noop_ns_existing_flow".into(),
        percpu - noop,
    );

    // Record path: drained deltas → flow table → records.
    let n = 100_000;
    let now = flowlens::timebase::monotonic_now_ns();
    let deltas = synthetic_deltas(n, now);
    let mut table = FlowTable::new(Duration::from_secs(60), Duration::from_millis(500));
    let mut exporter = Exporter::new("bench-host");
    let tb = Timebase::sample();
    let mut ended = Vec::with_capacity(n);
    let t = Instant::now();
    for (k, v) in &deltas {
        table.merge(k, v);
    }
    table.expire(now, &mut ended);
    let records: Vec<_> = ended.iter().map(|e| exporter.record(e, &tb)).collect();
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        records.len() == n,
        "expected {n} records, got {}",
        records.len()
    );
    summary.insert("record_path_flows_per_sec_100k".into(), n as f64 / secs);

    // Parquet encoding.
    let dir = std::env::temp_dir().join(format!("flowlens-bench-{}", std::process::id()));
    let mut sink = ParquetSink::new(ParquetOptions {
        dir: dir.clone(),
        rotate_bytes: u64::MAX,
        rotate_interval: Duration::from_secs(3600),
        host: "bench-host".into(),
    })?;
    let t = Instant::now();
    for chunk in records.chunks(10_000) {
        sink.write(chunk)?;
    }
    sink.close()?;
    let secs = t.elapsed().as_secs_f64();
    let bytes: u64 = sink
        .completed
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    summary.insert("parquet_encode_records_per_sec".into(), n as f64 / secs);
    summary.insert("parquet_bytes_per_record".into(), bytes as f64 / n as f64);
    std::fs::remove_dir_all(&dir).ok();

    // OTLP log request encoding (request building + protobuf serialisation), same records.
    let resource = encode::resource("bench-host");
    let mut otlp_bytes = 0usize;
    let t = Instant::now();
    for chunk in records.chunks(DEFAULT_BATCH_RECORDS) {
        let req = encode::logs_request(&resource, chunk, 1);
        otlp_bytes += std::hint::black_box(req.encode_to_vec()).len();
    }
    let secs = t.elapsed().as_secs_f64();
    summary.insert("otlp_encode_records_per_sec".into(), n as f64 / secs);
    summary.insert("otlp_bytes_per_record".into(), otlp_bytes as f64 / n as f64);

    println!(
        "flowlens benchmarks ({machine}; BPF_PROG_TEST_RUN medians of 7 interleaved rounds, 200k repeats x {} packet shapes)",
        packet_mix().len()
    );
    println!("{:<44} {:>14}", "metric", "value");
    for (k, v) in &summary {
        println!("{k:<44} {v:>14.1}");
    }
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&target)?;
    let json = format!(
        "{{\n{}\n}}\n",
        summary
            .iter()
            .map(|(k, v)| format!("  \"{k}\": {v:.3}"))
            .collect::<Vec<_>>()
            .join(",\n")
    );
    std::fs::write(target.join("summary.json"), json)?;
    println!("wrote target/bench/summary.json");
    Ok(())
}
