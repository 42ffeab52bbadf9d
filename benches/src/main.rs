//! flowlens benchmarks. Every number is measured side by side with its baseline in the same run
//! and written to `target/bench/summary.json` (flat object of named numbers). Run as root with
//! `cargo xtask bench`; see docs/BENCHMARKS.md.
//!
//! * Probe cost per packet (`BPF_PROG_TEST_RUN`, kernel-timed): the no-op XDP program, the
//!   shipped shared-map program (atomic adds) and its per-CPU-map twin, over a packet mix, and
//!   the netfilter program, its direct-load twin and a no-op netfilter program over the IP
//!   packets of the same mix (hook `local_out`), all interleaved in rounds; medians reported.
//! * New-flow cost: every packet opens a flow (distinct keys, one run each), against the no-op
//!   program run the same way.
//! * Drain: `N` flows (10k, 100k, 1M) moved out of the kernel and turned into records, with the
//!   batch swap drain and with the per-key drain other agents use, side by side.
//! * Record path: synthetic drained deltas → flow table → records (flows/s), Parquet
//!   encoding (records/s, bytes/record), and Kafka message encoding, protobuf and JSON
//!   (records/s, bytes/record before librdkafka's batch compression).
//! * OTLP: building and protobuf-encoding log export requests of the default batch size
//!   (records/s, uncompressed bytes/record; gzip is applied by the gRPC layer on top).
//! * OTLP transports (`otlp_transport.rs`): records/s through the OTLP sink over OTLP/gRPC and
//!   OTLP/HTTP (encode, gzip, send, acknowledgement) to loopback receivers, 3 rounds each
//!   (`flowlens-bench otlp-transport` runs only this section and merges into summary.json).
//! * Collector peak RSS (a child process) with 100k concurrent flows and 1M new flows per
//!   simulated minute, through the real drain, flow table, exporter and Parquet sink.
//! * Metrics endpoint (`metrics.rs`): a 10k-flow pipeline cycle with and without the
//!   observer's snapshot, the snapshot and `/metrics` rendering alone, a loopback scrape.
//! * `flowlens report` over 10 M rows (see `report.rs`).
//! * The on-disk spool: append (fdatasync per 8192-record batch) and replay (read and fsynced
//!   cursor commit per 4096-record chunk) of 1 M records in $TMPDIR (`flowlens-bench spool`).
//!
//! * IPFIX (`ipfix.rs`): encoding records/s and bytes/record, the UDP sink to loopback.
//!
//! * Flood (`flood.rs`, `flowlens-bench flood`, issue 17): a random-source SYN flood through a
//!   veth into the real `flowlens run` with `--max-memory`, per sink (packets sent / seen /
//!   counted, peak RSS, records/s, CPU per packet); each sink's records/s; peak RSS per flow of
//!   the capped flow table (the figure `collector/src/memory.rs` uses).
//!
//! `flowlens-bench report` runs only the report section (no root needed) and merges its
//! numbers into an existing `summary.json`; `flowlens-bench ipfix` likewise for IPFIX.

mod flood;
mod identity;
mod ipfix;
mod k8s;
mod k8s_names;
mod metrics;
mod otlp_transport;
mod report;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use flowlens::{
    drain::{DrainMethod, Drainer},
    export::Exporter,
    flow_table::FlowTable,
    netfilter::{Family, Hook, btf::Btf, nf_offsets},
    probe::{NF_DIRECT_PROGRAM, NF_NOOP_PROGRAM, NF_PROGRAM, Probe, XDP_NOOP_PROGRAM, XDP_PROGRAM},
    timebase::Timebase,
};
use flowlens_schema::{FlowKey, FlowValue, NF_ACCEPT};
use flowlens_sinks::{
    Sink,
    kafka::{Encoder, KafkaFormat, message_key},
    otlp::{DEFAULT_BATCH_RECORDS, encode},
    parquet::{JournalOptions, ParquetOptions, ParquetSink},
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

/// The IP packet inside an Ethernet frame of the mix (after an optional VLAN tag) and its family.
fn l3_of(frame: &[u8]) -> (&[u8], Family) {
    let off = if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    let ip = &frame[off..];
    let family = if ip[0] >> 4 == 6 {
        Family::Ipv6
    } else {
        Family::Ipv4
    };
    (ip, family)
}

/// Median kernel-measured ns/packet per program, programs interleaved round by round: the XDP
/// programs on the frames of the mix, the netfilter programs on the IP packets inside them (at
/// `local_out`, where the kernel's harness gives the program a real output device to read).
fn probe_cost(rounds: usize, repeat: u32) -> Result<BTreeMap<&'static str, f64>> {
    let mix = packet_mix();
    let offsets = nf_offsets(&Btf::from_kernel()?)?;
    let mut probe = Probe::load_with(65_536, Some(offsets))?;
    let xdp_progs = [("noop", XDP_NOOP_PROGRAM), ("shared_atomic", XDP_PROGRAM)];
    let all_nf = [
        ("nf_noop", NF_NOOP_PROGRAM),
        ("nf", NF_PROGRAM),
        ("nf_direct", NF_DIRECT_PROGRAM),
    ];
    // `FLOWLENS_BENCH_XDP_ONLY=1`: XDP programs only (for quick experiments on the XDP path).
    let nf_progs = if std::env::var_os("FLOWLENS_BENCH_XDP_ONLY").is_some() {
        &all_nf[..0]
    } else {
        &all_nf[..]
    };
    for (_, p) in xdp_progs {
        probe.xdp_program(p)?;
    }
    let mut extra = ExtraPrograms::load()?;
    let mut full = probe_with_full_cache(65_536)?;
    for &(_, p) in nf_progs {
        probe.load_netfilter(p)?;
    }
    let extra_nf = if nf_progs.is_empty() {
        ExtraNf {
            programs: Vec::new(),
        }
    } else {
        ExtraNf::load(offsets)?
    };
    let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for _ in 0..rounds {
        for (label, p) in xdp_progs {
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
        {
            let prog = full.xdp_program(XDP_PROGRAM)?;
            let mut total = 0.0;
            for (_, frame) in &mix {
                let r = prog.test_run(TestRunOptions {
                    data_in: Some(frame),
                    repeat,
                    ..Default::default()
                })?;
                total += r.duration.as_nanos() as f64;
            }
            samples
                .entry("cache_full")
                .or_default()
                .push(total / mix.len() as f64);
        }
        for label in extra.labels() {
            let mut total = 0.0;
            for (_, frame) in &mix {
                total += extra
                    .test_run(label, frame, repeat)
                    .with_context(|| format!("test run of {label}"))?;
            }
            samples
                .entry(label)
                .or_default()
                .push(total / mix.len() as f64);
        }
        for (label, prog, _) in &extra_nf.programs {
            let mut total = 0.0;
            for (_, frame) in &mix {
                let (ip, family) = l3_of(frame);
                let (verdict, ns) = prog.test_run(ip, Hook::LocalOut, family, repeat)?;
                anyhow::ensure!(verdict == NF_ACCEPT as u32, "{label}: verdict {verdict}");
                total += ns as f64;
            }
            samples
                .entry(label)
                .or_default()
                .push(total / mix.len() as f64);
        }
        for &(label, p) in nf_progs {
            let prog = probe.load_netfilter(p)?;
            let mut total = 0.0;
            for (_, frame) in &mix {
                let (ip, family) = l3_of(frame);
                let (verdict, ns) = prog
                    .test_run(ip, Hook::LocalOut, family, repeat)
                    .with_context(|| format!("test run of {p}"))?;
                anyhow::ensure!(
                    verdict == NF_ACCEPT as u32,
                    "{p} returned {verdict} instead of NF_ACCEPT"
                );
                total += ns as f64;
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

/// Optional side-by-side programs from other object files, named by environment variables:
///
/// * `FLOWLENS_BENCH_XDP_OBJECT=PATH[:PATH...]`: other builds of the flowlens probe (A/B
///   comparisons of probe changes): their `flowlens_xdp` are measured as `xdp_other`,
///   `xdp_other1`, ...
/// * `FLOWLENS_BENCH_NETOBSERV_OBJECT=PATH`: NetObserv's prebuilt eBPF object
///   (`pkg/ebpf/bpf_x86_bpfel.o` of github.com/netobserv/netobserv-ebpf-agent, not shipped
///   here): its TC flow program `tc_ingress_flow_parse` (section `classifier/tc_ingress`; default configuration: no sampling, no optional
///   trackers) as `netobserv_tc`, and flowlens's no-op TC program `flowlens_tc_noop` as
///   `noop_tc`, so the peer's cost over a no-op TC program sits next to flowlens's over a no-op
///   XDP program.
struct ExtraPrograms {
    objects: Vec<aya::Ebpf>,
    /// (label, index into `objects`, program name, TC (else XDP)).
    programs: Vec<(&'static str, usize, &'static str, bool)>,
}

/// `FLOWLENS_BENCH_NF_OBJECT=PATH[:PATH...]`: other builds of the flowlens probe whose
/// netfilter flow program (`flowlens_nf_direct`) runs next to the shipped one, as `nf_other`,
/// `nf_other1`, ... (A/B comparisons of netfilter probe changes). Each object keeps its own maps
/// (loaded by aya, `NF_OFFSETS` from this kernel's BTF), which the program is relocated to.
struct ExtraNf {
    /// (label, program, the maps it writes).
    programs: Vec<(
        &'static str,
        flowlens::netfilter::NetfilterProgram,
        aya::Ebpf,
    )>,
}

impl ExtraNf {
    fn load(offsets: flowlens_schema::NfOffsets) -> Result<ExtraNf> {
        let mut x = ExtraNf {
            programs: Vec::new(),
        };
        let Some(paths) = std::env::var_os("FLOWLENS_BENCH_NF_OBJECT") else {
            return Ok(x);
        };
        for (i, path) in std::env::split_paths(&paths).enumerate() {
            let bytes = std::fs::read(&path)
                .with_context(|| format!("FLOWLENS_BENCH_NF_OBJECT: reading {}", path.display()))?;
            let mut loader = aya::EbpfLoader::new();
            loader.override_global("NF_OFFSETS", &offsets, true);
            let obj = loader
                .load(&bytes)
                .with_context(|| format!("{}: loading the object", path.display()))?;
            let maps = obj.maps().map(|(n, m)| {
                let fd = match m {
                    aya::maps::Map::Array(d)
                    | aya::maps::Map::LruHashMap(d)
                    | aya::maps::Map::HashMap(d)
                    | aya::maps::Map::PerCpuArray(d)
                    | aya::maps::Map::PerCpuHashMap(d)
                    | aya::maps::Map::PerCpuLruHashMap(d) => d.fd(),
                    other => panic!("unexpected map kind {other:?}"),
                };
                (n, std::os::fd::AsFd::as_fd(fd))
            });
            let prog = flowlens::netfilter::NetfilterProgram::load(&bytes, NF_DIRECT_PROGRAM, maps)
                .with_context(|| format!("{}: loading {NF_DIRECT_PROGRAM}", path.display()))?;
            let label: &'static str = if i == 0 {
                "nf_other"
            } else {
                Box::leak(format!("nf_other{i}").into_boxed_str())
            };
            x.programs.push((label, prog, obj));
        }
        Ok(x)
    }
}

impl ExtraPrograms {
    fn load() -> Result<ExtraPrograms> {
        let mut x = ExtraPrograms {
            objects: Vec::new(),
            programs: Vec::new(),
        };
        let read = |var: &str| -> Result<Option<Vec<u8>>> {
            match std::env::var_os(var) {
                None => Ok(None),
                Some(path) => std::fs::read(&path)
                    .map(Some)
                    .with_context(|| format!("{var}: reading {}", path.to_string_lossy())),
            }
        };
        if let Some(paths) = std::env::var_os("FLOWLENS_BENCH_XDP_OBJECT") {
            for (i, path) in std::env::split_paths(&paths).enumerate() {
                let bytes = std::fs::read(&path).with_context(|| {
                    format!("FLOWLENS_BENCH_XDP_OBJECT: reading {}", path.display())
                })?;
                let obj = aya::EbpfLoader::new()
                    .load(&bytes)
                    .with_context(|| format!("{}: loading the object", path.display()))?;
                let label: &'static str = if i == 0 {
                    "xdp_other"
                } else {
                    Box::leak(format!("xdp_other{i}").into_boxed_str())
                };
                x.add(obj, &[(label, XDP_PROGRAM, false)])
                    .with_context(|| format!("FLOWLENS_BENCH_XDP_OBJECT {}", path.display()))?;
            }
        }
        match read("FLOWLENS_BENCH_NETOBSERV_OBJECT")? {
            None => eprintln!(
                "peer: skipped (set FLOWLENS_BENCH_NETOBSERV_OBJECT to NetObserv's \
                 pkg/ebpf/bpf_x86_bpfel.o to measure its TC flow program side by side)"
            ),
            Some(bytes) => {
                let peer = aya::EbpfLoader::new()
                    .allow_unsupported_maps()
                    .load(&bytes)
                    .context("FLOWLENS_BENCH_NETOBSERV_OBJECT: loading the object")?;
                let ours = aya::EbpfLoader::new().load(flowlens::probe::probe_object()?)?;
                x.add(ours, &[("noop_tc", "flowlens_tc_noop", true)])?;
                x.add(peer, &[("netobserv_tc", "tc_ingress_flow_parse", true)])
                    .context("FLOWLENS_BENCH_NETOBSERV_OBJECT")?;
            }
        }
        Ok(x)
    }

    /// Verifies and loads `progs` (label, program name, TC) of `obj`.
    fn add(
        &mut self,
        mut obj: aya::Ebpf,
        progs: &[(&'static str, &'static str, bool)],
    ) -> Result<()> {
        for &(label, name, tc) in progs {
            let p = obj
                .program_mut(name)
                .with_context(|| format!("no program {name} in the object"))?;
            if tc {
                let p: &mut aya::programs::SchedClassifier = p.try_into()?;
                p.load().with_context(|| format!("verifying {name}"))?;
            } else {
                let p: &mut aya::programs::Xdp = p.try_into()?;
                p.load().with_context(|| format!("verifying {name}"))?;
            }
            self.programs.push((label, self.objects.len(), name, tc));
        }
        self.objects.push(obj);
        Ok(())
    }

    fn labels(&self) -> Vec<&'static str> {
        self.programs.iter().map(|p| p.0).collect()
    }

    /// Runs program `label` `repeat` times on `frame`; mean ns per run (kernel-timed).
    fn test_run(&mut self, label: &str, frame: &[u8], repeat: u32) -> Result<f64> {
        let &(_, i, name, tc) = self
            .programs
            .iter()
            .find(|p| p.0 == label)
            .context("unknown program")?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        let p = self.objects[i].program_mut(name).context("program gone")?;
        let (r, ok) = if tc {
            let p: &mut aya::programs::SchedClassifier = p.try_into()?;
            let r = p.test_run(opts)?;
            // TC_ACT_OK (0) or TC_ACT_UNSPEC (-1): the packet goes on.
            let ok = r.return_value == 0 || r.return_value == u32::MAX;
            (r, ok)
        } else {
            let p: &mut aya::programs::Xdp = p.try_into()?;
            let r = p.test_run(opts)?;
            let ok = r.return_value == 2;
            (r, ok)
        };
        anyhow::ensure!(ok, "{name}: unexpected verdict {}", r.return_value);
        Ok(r.duration.as_nanos() as f64)
    }
}

/// A probe whose active buffer's flow cache is full: every slot claimed by a filler flow (UDP
/// from 172.16.0.0/12, each chosen in user space with the probe's slot function so that it
/// lands on a free slot, then run once). Every other flow is then counted in the LRU map: the
/// path of a flow whose cache slot is taken (more concurrent flows than slots, or a collision).
fn probe_with_full_cache(max_flows: u32) -> Result<Probe> {
    use flowlens_schema::{
        OBS_XDP, cache,
        parse::{Parsed, parse_ethernet},
    };
    let mut probe = Probe::load(max_flows)?;
    let prog = probe.xdp_program(XDP_PROGRAM)?;
    let slots = cache::slots_for(max_flows);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([172, 16, 0, 0], [172, 31, 0, 1], 64)
        .udp(9, 9)
        .write(&mut frame, &[0u8; 18])
        .context("building the filler frame")?;
    let mut taken = vec![false; slots as usize];
    let mut left = slots;
    let mut i = 0u32;
    while left > 0 {
        anyhow::ensure!(i < 64 * slots, "could not fill the flow cache");
        frame[26..30].copy_from_slice(&(0xac10_0000u32 + i).to_be_bytes());
        i += 1;
        let Parsed::Flow(m) = parse_ethernet(&frame[..]) else {
            anyhow::bail!("filler frame not keyed");
        };
        // BPF_PROG_TEST_RUN's XDP packets arrive on the loopback device (ifindex 1).
        let key = FlowKey {
            observation_point: OBS_XDP,
            ifindex: 1,
            ..m.key
        };
        let slot = key.cache_slot(slots) as usize;
        if taken[slot] {
            continue;
        }
        taken[slot] = true;
        left -= 1;
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            repeat: 1,
            ..Default::default()
        })?;
    }
    Ok(probe)
}

/// Rewrites the L4 source port of a frame of the mix (checksums are not checked by the probe).
fn with_src_port(frame: &[u8], port: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    let l3 = if f[12..14] == [0x81, 0x00] { 18 } else { 14 };
    let l4 = l3 + if f[l3] >> 4 == 6 { 40 } else { 20 };
    f[l4..l4 + 2].copy_from_slice(&port.to_be_bytes());
    f
}

/// Mean kernel-measured ns per packet when every packet opens a new flow (distinct keys, one
/// run each), for the flow program and the no-op program run the same way; medians of rounds.
/// Like [`new_flow_cost`]'s flow figure, with the flow cache full (every new flow is an LRU
/// insert): median of rounds of fresh flows (no drain: distinct source ports per round).
fn new_flow_cost_cache_full(rounds: usize, per_shape: u16) -> Result<f64> {
    let mut probe = probe_with_full_cache(262_144)?;
    let prog = probe.xdp_program(XDP_PROGRAM)?;
    let mut ns = Vec::new();
    for round in 0..rounds {
        let base = 1024 + (round as u16) * per_shape;
        let fresh: Vec<Vec<u8>> = packet_mix()
            .iter()
            .flat_map(|(_, f)| (0..per_shape).map(move |i| with_src_port(f, base + i)))
            .collect();
        let mut total = 0.0;
        for f in &fresh {
            let r = prog.test_run(TestRunOptions {
                data_in: Some(f),
                repeat: 1,
                ..Default::default()
            })?;
            total += r.duration.as_nanos() as f64;
        }
        ns.push(total / fresh.len() as f64);
    }
    ns.sort_by(|a, b| a.total_cmp(b));
    Ok(ns[ns.len() / 2])
}

/// Returns (new flow, no-op, existing flow), each run once per packet: the third runs the same
/// packets again right after the first (their flows now exist), so `new - existing` is what
/// opening a flow costs over counting into one, with the single-run method's own cold costs
/// (a syscall per packet: cold caches and TLB) on both sides.
fn new_flow_cost(rounds: usize, per_shape: u16) -> Result<(f64, f64, f64)> {
    let mut probe = Probe::load(65_536)?;
    probe.xdp_program(XDP_NOOP_PROGRAM)?;
    probe.xdp_program(XDP_PROGRAM)?;
    let mut drainer = probe.take_drainer()?;
    let frames: Vec<Vec<u8>> = packet_mix()
        .iter()
        .flat_map(|(_, f)| (0..per_shape).map(move |i| with_src_port(f, 1024 + i)))
        .collect();
    let (mut flow, mut noop, mut again) = (Vec::new(), Vec::new(), Vec::new());
    let mut out = Vec::new();
    // Other objects (FLOWLENS_BENCH_XDP_OBJECT, XDP only) in the same rounds: their maps are
    // not drained, so each round uses its own source ports (all rounds fit in 65,536 entries).
    let mut extra = ExtraPrograms::load()?;
    let xdp_labels: Vec<&'static str> = extra
        .labels()
        .into_iter()
        .filter(|l| l.starts_with("xdp_other"))
        .collect();
    let mut extra_ns: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        if !xdp_labels.is_empty() {
            let base = 1024 + (round as u16) * per_shape;
            let fresh: Vec<Vec<u8>> = packet_mix()
                .iter()
                .flat_map(|(_, f)| (0..per_shape).map(move |i| with_src_port(f, base + i)))
                .collect();
            for &label in &xdp_labels {
                let mut total = 0.0;
                for f in &fresh {
                    total += extra.test_run(label, f, 1)?;
                }
                extra_ns
                    .entry(label)
                    .or_default()
                    .push(total / fresh.len() as f64);
            }
        }
        out.clear();
        drainer.drain(&mut out)?;
        drainer.drain(&mut out)?;
        for (p, acc) in [
            (XDP_PROGRAM, &mut flow),
            (XDP_PROGRAM, &mut again),
            (XDP_NOOP_PROGRAM, &mut noop),
        ] {
            let prog = probe.xdp_program(p)?;
            let mut total = 0.0;
            for f in &frames {
                let r = prog.test_run(TestRunOptions {
                    data_in: Some(f),
                    repeat: 1,
                    ..Default::default()
                })?;
                total += r.duration.as_nanos() as f64;
            }
            acc.push(total / frames.len() as f64);
        }
        out.clear();
        let rep = drainer.drain(&mut out)?;
        anyhow::ensure!(
            rep.total().map(|a| a.new_flows) == Some(frames.len() as u64),
            "new-flow bench: expected {} new flows, got {:?}",
            frames.len(),
            rep.total()
        );
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let noop_med = med(&mut noop);
    for (label, mut v) in extra_ns {
        eprintln!(
            "new flow: {label} {:.1} ns, over noop {:.1} ns",
            med(&mut v),
            med(&mut v) - noop_med
        );
    }
    Ok((med(&mut flow), noop_med, med(&mut again)))
}

/// New flows back to back with warm caches (`BPF_PROG_TEST_RUN` with `repeat`): the bench
/// twin `flowlens_xdp_bench_new_flow` (every run a new flow) and the no-op program on the
/// frames of the mix, `repeat` runs each per round, one probe drained before every round (the
/// collector's swap drain: the flow cache the round writes starts empty, as after every drain;
/// 5 x `repeat` flows in 16,384 slots, so a few land on a taken slot and go to the LRU map, as
/// in a flood). The first round warms up and is not counted. Returns (new flow, no-op) ns per
/// packet, medians of rounds.
fn new_flow_cost_warm(rounds: usize, repeat: u32) -> Result<(f64, f64)> {
    use flowlens::probe::XDP_BENCH_NEW_FLOW_PROGRAM;
    let mix = packet_mix();
    let mut probe = Probe::load(262_144)?;
    probe.xdp_program(XDP_BENCH_NEW_FLOW_PROGRAM)?;
    probe.xdp_program(XDP_NOOP_PROGRAM)?;
    let mut drainer = probe.take_drainer()?;
    let mut out = Vec::new();
    let (mut flow, mut noop) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        out.clear();
        drainer.drain(&mut out)?;
        for (p, acc) in [
            (XDP_BENCH_NEW_FLOW_PROGRAM, &mut flow),
            (XDP_NOOP_PROGRAM, &mut noop),
        ] {
            let prog = probe.xdp_program(p)?;
            let mut total = 0.0;
            for (_, frame) in &mix {
                let r = prog.test_run(TestRunOptions {
                    data_in: Some(frame),
                    repeat,
                    ..Default::default()
                })?;
                anyhow::ensure!(r.return_value == 2, "{p}: verdict {}", r.return_value);
                total += r.duration.as_nanos() as f64;
            }
            if round > 0 {
                acc.push(total / mix.len() as f64);
            }
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    Ok((med(&mut flow), med(&mut noop)))
}

fn bench_key(i: u32) -> FlowKey {
    let mut k = FlowKey::ZERO;
    k.ip_version = 4;
    k.protocol = 6;
    k.src_addr[10..].copy_from_slice(&[0xff, 0xff, 10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    k.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 192, 168, 0, 1]);
    k.src_port = 1024 + (i % 50_000) as u16;
    k.dst_port = 443;
    k.observation_point = 1;
    k.ifindex = 1;
    k
}

fn bench_value(now: u64) -> FlowValue {
    FlowValue {
        packets: 10,
        bytes: 5000,
        first_seen_ns: now.saturating_sub(2_000_000_000),
        last_seen_ns: now.saturating_sub(1_000_000_000),
        tcp_flags: 0x18,
        dscp: 0,
        _pad: [0; 7],
        cgroup_id: 0,
    }
}

/// Drained entries → flow table → records, as `Pipeline::cycle` does (all flows end here).
fn to_records(deltas: &[(FlowKey, FlowValue)]) -> usize {
    let mut table = FlowTable::new(Duration::from_secs(60), Duration::from_secs(15));
    table.merge_all(deltas);
    let mut ended = Vec::with_capacity(deltas.len());
    table.drain_all(&mut ended);
    let mut exporter = Exporter::new("bench-host");
    let tb = Timebase::sample();
    ended.iter().map(|e| exporter.record(e, &tb)).count()
}

/// Seconds to drain `n` kernel flow entries and turn them into records, and seconds for the
/// drain alone: batch swap drain (`batch`) or the live-map per-key drain (`per_key`).
fn drain_once(n: u32, method: &str) -> Result<(f64, f64)> {
    // LRU maps evict before they are exactly full (per-CPU free lists): leave headroom.
    let mut probe = Probe::load(n + n / 4 + 1024)?;
    let now = flowlens::timebase::monotonic_now_ns();
    let v = bench_value(now);
    let mut out = Vec::with_capacity(n as usize);
    let t_drain;
    match method {
        "batch" => {
            let mut d = probe.take_drainer()?;
            anyhow::ensure!(d.method() == DrainMethod::Batch);
            let active = d.active();
            let map = d.flow_map_mut(active);
            for i in 0..n {
                map.insert(&bench_key(i), &v, 0)?;
            }
            let t0 = Instant::now();
            d.drain(&mut out)?;
            t_drain = t0.elapsed().as_secs_f64();
            anyhow::ensure!(d.method() == DrainMethod::Batch, "batch drain refused");
        }
        _ => {
            let (mut d, _) = probe.take_per_key_drainer()?;
            let map = d.flow_map_mut();
            for i in 0..n {
                map.insert(&bench_key(i), &v, 0)?;
            }
            let t0 = Instant::now();
            d.drain(&mut out)?;
            t_drain = t0.elapsed().as_secs_f64();
        }
    }
    let t0 = Instant::now();
    let records = to_records(&out);
    let t_records = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.len() == n as usize && records == n as usize,
        "{method} drain of {n}: {} entries, {records} records",
        out.len()
    );
    Ok((t_drain + t_records, t_drain))
}

/// Median wall time of a drain that finds nothing: the buffer swap and its RCU grace period,
/// paid once per drain whatever the number of flows (the collector waits, the CPU does not).
fn empty_drain_ms(rounds: usize) -> Result<f64> {
    let mut probe = Probe::load(1024)?;
    let mut d = probe.take_drainer()?;
    let mut out = Vec::new();
    let mut ms: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            d.drain(&mut out).map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()?;
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms[ms.len() / 2])
}

/// Median flows/s (drain + records, and drain alone) per method and size, methods interleaved.
fn drain_rates(sizes: &[u32], rounds: usize, summary: &mut BTreeMap<String, f64>) -> Result<()> {
    for &n in sizes {
        let mut samples: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for _ in 0..rounds {
            for m in ["batch", "per_key"] {
                let (all, drain) = drain_once(n, m)?;
                let e = samples.entry(m).or_default();
                e.0.push(n as f64 / all);
                e.1.push(n as f64 / drain);
            }
        }
        let label = match n {
            10_000 => "10k",
            100_000 => "100k",
            1_000_000 => "1m",
            _ => anyhow::bail!("unlabelled size {n}"),
        };
        for (m, (mut all, mut drain)) in samples {
            all.sort_by(|a, b| a.total_cmp(b));
            drain.sort_by(|a, b| a.total_cmp(b));
            summary.insert(
                format!("drain_flows_per_sec_{m}_{label}"),
                all[all.len() / 2],
            );
            summary.insert(
                format!("drain_only_flows_per_sec_{m}_{label}"),
                drain[drain.len() / 2],
            );
        }
        summary.insert(
            format!("drain_batch_over_per_key_{label}"),
            summary[&format!("drain_flows_per_sec_batch_{label}")]
                / summary[&format!("drain_flows_per_sec_per_key_{label}")],
        );
    }
    Ok(())
}

/// Child process: the collector's steady state with 100k concurrent flows and 1M new flows per
/// simulated minute (one drain per simulated second, default timeouts), through the real
/// kernel maps, swap drain, flow table, exporter and Parquet sink. Prints `VmHWM_kB=N records=M`.
fn rss_child() -> Result<()> {
    const CONCURRENT: u32 = 100_000;
    const NEW_PER_SECOND: u32 = 1_000_000 / 60;
    const SECONDS: u64 = 90;
    let mut probe = Probe::load(flowlens::config::DEFAULT_MAX_FLOWS)?;
    let mut drainer = probe.take_drainer()?;
    let dir = std::env::temp_dir().join(format!("flowlens-bench-rss-{}", std::process::id()));
    let sink = ParquetSink::new(ParquetOptions {
        dir: dir.clone(),
        rotate_bytes: 128 << 20,
        rotate_interval: Duration::from_secs(300),
        host: "bench-host".into(),
        journal: None,
    })?;
    // FLOWLENS_BENCH_RSS_SINK=none: the same without the Parquet sink (its share of the peak).
    let sinks: Vec<Box<dyn flowlens_sinks::Sink>> =
        if std::env::var("FLOWLENS_BENCH_RSS_SINK").as_deref() == Ok("none") {
            Vec::new()
        } else {
            vec![Box::new(sink)]
        };
    let mut pipe = flowlens::pipeline::Pipeline::new(
        FlowTable::new(Duration::from_secs(60), Duration::from_secs(15)),
        Exporter::new("bench-host"),
        sinks,
    );
    let start = flowlens::timebase::monotonic_now_ns();
    let mut first_live = 0u32;
    let mut max_table = 0usize;
    for sec in 0..SECONDS {
        let now = start + sec * 1_000_000_000;
        let v = FlowValue {
            packets: 5,
            bytes: 3000,
            first_seen_ns: now,
            last_seen_ns: now,
            tcp_flags: 0x10,
            dscp: 0,
            _pad: [0; 7],
            cgroup_id: 0,
        };
        let active = drainer.active();
        let map = drainer.flow_map_mut(active);
        for id in first_live..first_live + CONCURRENT {
            map.insert(&bench_key(id), &v, 0)?;
        }
        pipe.cycle_at(&mut drainer, false, now)?;
        max_table = max_table.max(pipe.table.len());
        if std::env::var_os("FLOWLENS_BENCH_RSS_TRACE").is_some() {
            let st = std::fs::read_to_string("/proc/self/status")?;
            let rss = st
                .lines()
                .find(|l| l.starts_with("VmRSS"))
                .unwrap_or_default();
            eprintln!("sec {sec}: table {} {rss}", pipe.table.len());
        }
        first_live += NEW_PER_SECOND;
    }
    pipe.cycle(&mut drainer, true)?;
    pipe.close()?;
    std::fs::remove_dir_all(&dir).ok();
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("VmHWM in /proc/self/status")?;
    println!(
        "VmHWM_kB={hwm} records={} flows={} max_table={max_table}",
        pipe.totals.records,
        first_live + CONCURRENT
    );
    Ok(())
}

/// One second of UDP (64-byte payloads) from A to B over a veth pair: packets per second that
/// reached B's socket, with the flow program attached to B's end (native XDP) or not.
fn veth_round(
    a: &flowlens_testkit::Netns,
    b: &flowlens_testkit::Netns,
    link: &flowlens_testkit::Link,
    program: Option<&'static str>,
) -> Result<f64> {
    use std::{
        net::{SocketAddr, UdpSocket},
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
            mpsc,
        },
    };
    const SECONDS: f64 = 1.0;
    let dst = SocketAddr::new(link.b_v4.into(), 9999);
    let stop = Arc::new(AtomicBool::new(false));
    // The probe lives in a thread inside B (attachment is per namespace) until told to stop.
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let ifname = link.b_if.clone();
    let prober = b.spawn_in(move || {
        let Some(program) = program else {
            let _ = ready_tx.send(Ok(()));
            let _ = done_rx.recv();
            return;
        };
        let probe = Probe::load(65_536).and_then(|mut p| {
            p.attach_xdp_program(program, &ifname, flowlens::probe::XdpAttachMode::Native)?;
            Ok(p)
        });
        match probe {
            Ok(p) => {
                let _ = ready_tx.send(Ok(()));
                let _ = done_rx.recv();
                drop(p);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(format!("{e:#}")));
            }
        }
    })?;
    ready_rx
        .recv()?
        .map_err(|e| anyhow::anyhow!("attaching the probe: {e}"))?;
    let rx_stop = stop.clone();
    let receiver = b.spawn_in(move || -> std::io::Result<u64> {
        let s = UdpSocket::bind(dst)?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        loop {
            match s.recv(&mut buf) {
                Ok(_) => n += 1,
                Err(_) if rx_stop.load(Ordering::Relaxed) => return Ok(n),
                Err(_) => {}
            }
        }
    })?;
    std::thread::sleep(Duration::from_millis(50));
    let sender = a.spawn_in(move || -> std::io::Result<u64> {
        let s = UdpSocket::bind(SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0))?;
        let payload = [0u8; 64];
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed().as_secs_f64() < SECONDS {
            for _ in 0..64 {
                if s.send_to(&payload, dst).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    })?;
    let _sent = sender.join()?;
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let received = receiver.join()?;
    let _ = done_tx.send(());
    prober.join();
    Ok(received as f64 / SECONDS)
}

/// Median packets/s through a veth pair with no XDP program, the no-op XDP program (veth's own
/// XDP path costs a lot) and the flow program, rounds interleaved.
fn veth_pps(rounds: usize) -> Result<(f64, f64, f64)> {
    use flowlens_testkit::{Netns, veth_pair};
    let a = Netns::new("bench-a")?;
    let b = Netns::new("bench-b")?;
    let link = veth_pair(&a, &b)?;
    let (mut without, mut noop, mut with) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        without.push(veth_round(&a, &b, &link, None)?);
        noop.push(veth_round(&a, &b, &link, Some(XDP_NOOP_PROGRAM))?);
        with.push(veth_round(&a, &b, &link, Some(XDP_PROGRAM))?);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    Ok((med(&mut without), med(&mut noop), med(&mut with)))
}

fn rss_peak_mb() -> Result<(f64, f64)> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("rss-child")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "rss child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| -> Result<f64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{k} in {text:?}"))
    };
    Ok((field("VmHWM_kB=")? / 1024.0, field("flows=")?))
}

fn synthetic_deltas(n: usize, now: u64) -> Vec<(FlowKey, FlowValue)> {
    (0..n as u32)
        .map(|i| (bench_key(i), bench_value(now)))
        .collect()
}

/// The on-disk spool: append (one fdatasync per 8192-record batch, as a drain's chunk) and
/// replay (read + cursor commit, fsynced, per 4096-record chunk) of `n` records, in
/// $TMPDIR. Best of 3 rounds each.
fn spool_rates(n: usize, summary: &mut BTreeMap<String, f64>) -> Result<()> {
    use flowlens_sinks::spool::Store;
    let records = flowlens_testkit::records::conversations(n / 2);
    let dir = std::env::temp_dir().join(format!("flowlens-bench-spool-{}", std::process::id()));
    let (mut append_best, mut replay_best, mut bpr) = (0f64, 0f64, 0f64);
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(&dir);
        let (mut store, _) = Store::open(&dir, 1 << 40, 32 << 20)?;
        let t = Instant::now();
        for c in records.chunks(8192) {
            anyhow::ensure!(store.append(c)? == c.len(), "spool full");
        }
        append_best = append_best.max(records.len() as f64 / t.elapsed().as_secs_f64());
        bpr = store.bytes() as f64 / records.len() as f64;
        let mut out = Vec::with_capacity(4096);
        let t = Instant::now();
        let mut got = 0;
        while store.unread() > 0 {
            out.clear();
            let pos = store.read(4096, &mut out)?;
            store.commit(pos, out.len() as u64)?;
            got += out.len();
        }
        anyhow::ensure!(got == records.len(), "replayed {got} of {}", records.len());
        replay_best = replay_best.max(got as f64 / t.elapsed().as_secs_f64());
    }
    std::fs::remove_dir_all(&dir).ok();
    // Direct mode (spool empty, sink healthy): `SpooledSink::write` keeps a copy of each batch
    // until the inner sink settles it. The copy and its drop, per 8192-record batch.
    let mut copy_best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        for c in records.chunks(8192) {
            std::hint::black_box(c.to_vec());
        }
        copy_best = copy_best.max(records.len() as f64 / t.elapsed().as_secs_f64());
    }
    summary.insert("spool_direct_copy_records_per_sec".into(), copy_best);
    summary.insert("spool_append_records_per_sec".into(), append_best);
    summary.insert("spool_replay_records_per_sec".into(), replay_best);
    summary.insert("spool_bytes_per_record".into(), bpr);
    Ok(())
}

/// The Parquet sink with and without its write-ahead journal (`flowlens run`'s default), side by
/// side: the same records in the collector's 8192-record chunks, into one file (closed at the
/// end, journal committed), best of 3 interleaved rounds each. The journal is in $TMPDIR like
/// the output, so this is the cost on one disk.
fn parquet_journal_rates(
    records: &[flowlens_schema::record::FlowRecord],
    summary: &mut BTreeMap<String, f64>,
) -> Result<()> {
    let n = records.len();
    let mut best: BTreeMap<&str, f64> = BTreeMap::new();
    for round in 0..3 {
        for (label, journaled) in [("without_journal", false), ("with_journal", true)] {
            let base = std::env::temp_dir().join(format!(
                "flowlens-bench-journal-{}-{round}-{label}",
                std::process::id()
            ));
            let mut sink = ParquetSink::new(ParquetOptions {
                dir: base.join("out"),
                rotate_bytes: u64::MAX,
                rotate_interval: Duration::from_secs(3600),
                host: "bench-host".into(),
                journal: journaled.then(|| JournalOptions {
                    dir: base.join("journal"),
                    max_bytes: 1 << 30,
                }),
            })?;
            let t = Instant::now();
            for chunk in records.chunks(8192) {
                sink.write(chunk)?;
            }
            sink.close()?;
            let rate = n as f64 / t.elapsed().as_secs_f64();
            anyhow::ensure!(
                sink.metrics().acknowledged == n as u64,
                "{label}: {:?}",
                sink.metrics()
            );
            drop(sink);
            std::fs::remove_dir_all(&base).ok();
            let e = best.entry(label).or_insert(0.0);
            *e = e.max(rate);
        }
    }
    let (with, without) = (best["with_journal"], best["without_journal"]);
    summary.insert("parquet_with_journal_records_per_sec".into(), with);
    summary.insert("parquet_without_journal_records_per_sec".into(), without);
    summary.insert("parquet_journal_rate_ratio".into(), with / without);
    Ok(())
}

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("parquet-journal") => {
            let records = flowlens_testkit::records::conversations(50_000);
            let mut s = BTreeMap::new();
            parquet_journal_rates(&records, &mut s)?;
            println!("{s:#?}");
            return Ok(());
        }
        Some("spool") => {
            let mut s = BTreeMap::new();
            spool_rates(1_000_000, &mut s)?;
            println!("{s:#?}");
            return Ok(());
        }
        Some("rss-child") => return rss_child(),
        Some("flow-memory-child") => {
            let cap = std::env::args().nth(2).context("cap")?.parse()?;
            return flood::flow_memory_child(cap);
        }
        Some("record-memory-child") => {
            let n = std::env::args().nth(2).context("n")?.parse()?;
            return flood::record_memory_child(n);
        }
        // Issue 13: each sink encoder with and without the Kubernetes names, side by side.
        Some("k8s-names") => {
            let mut s = BTreeMap::new();
            k8s_names::run(3, &mut s)?;
            println!("{s:#?}");
            return Ok(());
        }
        // Issue 13: the Kubernetes name store's memory and lookup cost at 10k and 100k pods.
        Some("k8s") => {
            let mut s = BTreeMap::new();
            k8s::store(&mut s)?;
            println!("{s:#?}");
            return Ok(());
        }
        Some("k8s-memory-child") => {
            let n = std::env::args().nth(2).context("n")?.parse()?;
            return k8s::memory_child(n);
        }
        // Issue 12: probe cost of socket identity (with/without) and identity records/s.
        Some("identity") => {
            let mut s = BTreeMap::new();
            identity::probe_cost(5, 200_000, &mut s)?;
            identity::records_per_sec(&mut s)?;
            identity::interface_records_per_sec(&mut s)?;
            identity::netns_refresh(100, &mut s)?;
            println!("{s:#?}");
            return Ok(());
        }
        // For profiling one part: `perf record flowlens-bench drain`.
        Some("probe") => {
            let c = probe_cost(7, 200_000)?;
            let over = |a: &str, b: &str| c.get(a).zip(c.get(b)).map(|(a, b)| a - b);
            println!(
                "xdp over noop {:.1} ns (noop {:.1}); flow cache full (LRU path) {:.1} ns; \
                 nf over noop {:?}; nf_direct over noop {:?}",
                c["shared_atomic"] - c["noop"],
                c["noop"],
                c["cache_full"] - c["noop"],
                over("nf", "nf_noop"),
                over("nf_direct", "nf_noop"),
            );
            for (label, ns) in &c {
                if label.starts_with("xdp_other") {
                    println!(
                        "FLOWLENS_BENCH_XDP_OBJECT ({label}) flowlens_xdp over noop {:.1} ns",
                        ns - c["noop"]
                    );
                }
            }
            for (label, ns) in &c {
                if label.starts_with("nf_other") {
                    println!(
                        "FLOWLENS_BENCH_NF_OBJECT ({label}) flowlens_nf_direct over nf noop {:.1} ns",
                        ns - c["nf_noop"]
                    );
                }
            }
            if let Some(o) = over("netobserv_tc", "noop_tc") {
                println!(
                    "netobserv tc_ingress over noop TC {o:.1} ns (noop TC {:.1}); flowlens/peer {:.2}",
                    c["noop_tc"],
                    (c["shared_atomic"] - c["noop"]) / o
                );
            }
            return Ok(());
        }
        // Only the warm new-flow figure, `N` rounds (default 7): for profiling (`perf record`).
        Some("new-flow-warm") => {
            let rounds = std::env::args().nth(2).map_or(Ok(7), |n| n.parse())?;
            let (warm, noop) = new_flow_cost_warm(rounds, 200)?;
            println!(
                "new flows back to back: {warm:.1} ns, noop {noop:.1} ns, over noop {:.1} ns",
                warm - noop
            );
            return Ok(());
        }
        // Only the new-flow cost (every packet opens a flow), 3 invocations of 5 rounds.
        Some("new-flow") => {
            for _ in 0..3 {
                let (flow, noop, existing) = new_flow_cost(5, 2_000)?;
                let full = new_flow_cost_cache_full(5, 2_000)?;
                let (warm, warm_noop) = new_flow_cost_warm(7, 200)?;
                println!(
                    "new flows back to back (repeat mode, warm): {warm:.1} ns, noop {warm_noop:.1} ns, \
                     over noop {:.1} ns",
                    warm - warm_noop
                );
                println!(
                    "new flow: xdp {flow:.1} ns, noop {noop:.1} ns, over noop {:.1} ns; \
                     flow cache full (LRU inserts): {full:.1} ns, over noop {:.1} ns; \
                     existing flow, same method: over noop {:.1} ns",
                    flow - noop,
                    full - noop,
                    existing - noop
                );
            }
            return Ok(());
        }
        Some("records") => {
            let now = flowlens::timebase::monotonic_now_ns();
            let d = synthetic_deltas(100_000, now);
            let t = Instant::now();
            for _ in 0..20 {
                to_records(&d);
            }
            println!("{:.0} flows/s", 2_000_000.0 / t.elapsed().as_secs_f64());
            return Ok(());
        }
        Some("veth") => {
            let (without, noop, with) = veth_pps(5)?;
            println!(
                "veth pps without {without:.0}, noop xdp {noop:.0}, flowlens {with:.0}: {:.3} of none, {:.3} of noop",
                with / without,
                with / noop
            );
            return Ok(());
        }
        Some("metrics") => {
            let now = flowlens::timebase::monotonic_now_ns();
            let mut s = BTreeMap::new();
            metrics::run(synthetic_deltas(10_000, now), &mut s)?;
            println!("{s:#?}");
            return Ok(());
        }
        // Issue 17: what each sink sustains alone (records/s), 3 rounds.
        Some("sink-rates") => {
            let mut s = BTreeMap::new();
            flood::sink_rates(&mut s)?;
            println!("{s:#?}");
            return Ok(());
        }
        Some("drain") => {
            let mut s = BTreeMap::new();
            drain_rates(&[100_000, 1_000_000], 3, &mut s)?;
            println!("{s:#?}");
            return Ok(());
        }
        _ => {}
    }
    let mut summary: BTreeMap<String, f64> = BTreeMap::new();
    let machine = format!(
        "{} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let only_report = std::env::args().skip(1).any(|a| a == "report");
    let only_ipfix = std::env::args().skip(1).any(|a| a == "ipfix");
    let only_otlp = std::env::args().skip(1).any(|a| a == "otlp-transport");
    // Issue 17: `flowlens-bench flood [SECONDS]` (default 10 s of flood per run).
    if std::env::args().nth(1).as_deref() == Some("flood") {
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
        if let Ok(s) = std::fs::read_to_string(target.join("summary.json"))
            && let Ok(old) = serde_json::from_str::<BTreeMap<String, f64>>(&s)
        {
            summary.extend(old);
        }
        let seconds = std::env::args()
            .nth(2)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(10);
        flood::flow_memory(&mut summary)?;
        flood::sink_rates(&mut summary)?;
        flood::veth_flood(seconds, &mut summary)?;
        return write_summary(&machine, &summary, &target);
    }
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    if only_report || only_ipfix || only_otlp {
        if let Ok(s) = std::fs::read_to_string(target.join("summary.json"))
            && let Ok(old) = serde_json::from_str::<BTreeMap<String, f64>>(&s)
        {
            summary.extend(old);
        }
        if only_report {
            report::run(&mut summary)?;
        }
        if only_ipfix {
            ipfix::run(&mut summary)?;
        }
        if only_otlp {
            let records = flowlens_testkit::records::conversations(100_000);
            otlp_transport::run(&records, 3, &mut summary)?;
        }
        return write_summary(&machine, &summary, &target);
    }

    // Probe cost.
    let costs = probe_cost(7, 200_000)?;
    let (noop, shared) = (costs["noop"], costs["shared_atomic"]);
    summary.insert("noop_xdp_ns_per_pkt".into(), noop);
    summary.insert("xdp_ns_per_pkt_existing_flow".into(), shared);
    summary.insert("xdp_over_noop_ns_existing_flow".into(), shared - noop);
    // The same flows counted in the LRU map (their cache slots held by other flows).
    summary.insert(
        "xdp_over_noop_ns_existing_flow_cache_full".into(),
        costs["cache_full"] - noop,
    );
    // NetObserv's TC flow program over a no-op TC program, when its object is given.
    if let (Some(peer), Some(tc_noop)) = (costs.get("netobserv_tc"), costs.get("noop_tc")) {
        summary.insert("noop_tc_ns_per_pkt".into(), *tc_noop);
        summary.insert(
            "netobserv_tc_over_noop_tc_ns_existing_flow".into(),
            peer - tc_noop,
        );
        summary.insert(
            "xdp_over_noop_ratio_to_netobserv_tc".into(),
            (shared - noop) / (peer - tc_noop),
        );
    }
    // The shipped netfilter program is the direct-load one (the probe-read variant is the
    // fallback when the verifier refuses it).
    let (nf_noop, nf, nf_read) = (costs["nf_noop"], costs["nf_direct"], costs["nf"]);
    summary.insert("noop_nf_ns_per_pkt".into(), nf_noop);
    summary.insert("nf_ns_per_pkt_existing_flow".into(), nf);
    summary.insert("nf_over_noop_ns_existing_flow".into(), nf - nf_noop);
    summary.insert("nf_probe_read_ns_per_pkt_existing_flow".into(), nf_read);
    summary.insert(
        "nf_probe_read_over_noop_ns_existing_flow".into(),
        nf_read - nf_noop,
    );

    // Issue 12: socket identity capture, side by side, and the identity stage.
    identity::probe_cost(5, 200_000, &mut summary)?;
    identity::records_per_sec(&mut summary)?;
    identity::interface_records_per_sec(&mut summary)?;
    identity::netns_refresh(100, &mut summary)?;
    // Issue 13: the Kubernetes name store at 10k and 100k pods.
    k8s::store(&mut summary)?;

    // New flows.
    let (new_flow, new_noop, existing_single) = new_flow_cost(5, 2_000)?;
    summary.insert(
        "xdp_over_noop_ns_existing_flow_single_run".into(),
        existing_single - new_noop,
    );
    summary.insert("xdp_ns_per_pkt_new_flow".into(), new_flow);
    summary.insert("noop_xdp_ns_per_pkt_single_run".into(), new_noop);
    summary.insert("xdp_over_noop_ns_new_flow".into(), new_flow - new_noop);
    let (warm, warm_noop) = new_flow_cost_warm(7, 200)?;
    summary.insert("xdp_over_noop_ns_new_flow_warm".into(), warm - warm_noop);
    let new_full = new_flow_cost_cache_full(5, 2_000)?;
    summary.insert(
        "xdp_over_noop_ns_new_flow_cache_full".into(),
        new_full - new_noop,
    );

    // Drains, batch swap vs per key.
    summary.insert("drain_empty_swap_ms".into(), empty_drain_ms(21)?);
    drain_rates(&[10_000, 100_000, 1_000_000], 3, &mut summary)?;

    // End to end through a veth pair.
    let (without, noop_pps, with) = veth_pps(5)?;
    summary.insert("veth_pps_without_probe".into(), without);
    summary.insert("veth_pps_noop_xdp".into(), noop_pps);
    summary.insert("veth_pps_with_probe".into(), with);
    summary.insert("veth_pps_ratio_with_over_without".into(), with / without);
    summary.insert("veth_pps_ratio_with_over_noop_xdp".into(), with / noop_pps);

    // Collector memory.
    let (rss_mb, flows) = rss_peak_mb()?;
    summary.insert(
        "collector_peak_rss_mb_100k_concurrent_1m_per_min".into(),
        rss_mb,
    );
    summary.insert("collector_rss_bench_flows".into(), flows);

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
        journal: None,
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
    parquet_journal_rates(&records, &mut summary)?;

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
    // OTLP/gRPC vs OTLP/HTTP, encode + send (issue 14).
    otlp_transport::run(&records, 3, &mut summary)?;

    // Kafka message encoding (value + key per record), same records, formats side by side,
    // best of 3 rounds each, interleaved.
    let mut best: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for _ in 0..3 {
        for (label, format) in [
            ("protobuf", KafkaFormat::Protobuf),
            ("json", KafkaFormat::Json),
        ] {
            let mut enc = Encoder::new(format);
            let mut buf = Vec::with_capacity(512);
            let mut total_bytes = 0usize;
            let mut keys = 0u64;
            let t = Instant::now();
            for r in &records {
                enc.encode(r, &mut buf);
                total_bytes += buf.len();
                keys ^= u64::from_be_bytes(message_key(r));
            }
            let secs = t.elapsed().as_secs_f64();
            std::hint::black_box(keys);
            let rate = n as f64 / secs;
            let e = best.entry(label).or_insert((0.0, 0.0));
            if rate > e.0 {
                *e = (rate, total_bytes as f64 / n as f64);
            }
        }
    }
    for (label, (rate, bpr)) in best {
        summary.insert(format!("kafka_{label}_encode_records_per_sec"), rate);
        summary.insert(format!("kafka_{label}_bytes_per_record"), bpr);
    }

    // Metrics endpoint: per-cycle snapshot, rendering, scrape.
    metrics::run(synthetic_deltas(10_000, now), &mut summary)?;

    // The on-disk spool (append and replay), 1 M records.
    spool_rates(1_000_000, &mut summary)?;

    // flowlens report over 10 M rows.
    report::run(&mut summary)?;

    // IPFIX encoding and the UDP sink.
    ipfix::run(&mut summary)?;

    println!(
        "flowlens benchmarks ({machine}; BPF_PROG_TEST_RUN medians of 7 interleaved rounds, 200k repeats x {} packet shapes)",
        packet_mix().len()
    );
    write_summary(&machine, &summary, &target)
}

fn write_summary(
    machine: &str,
    summary: &BTreeMap<String, f64>,
    target: &std::path::Path,
) -> Result<()> {
    println!("({machine})");
    println!("{:<44} {:>14}", "metric", "value");
    for (k, v) in summary {
        println!("{k:<44} {v:>14.1}");
    }
    std::fs::create_dir_all(target)?;
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
