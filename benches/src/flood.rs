//! Issue 17: a flood of new flows. `flowlens-bench flood` (`cargo xtask bench flood`):
//!
//! * **Real flood through a veth** (`veth_flood`): host A sends a random-source SYN flood
//!   (`flowlens_testkit::syn_flood`, as `hping3 --flood --rand-source`) for a fixed time to host
//!   B, where the real `flowlens run` binary (XDP on B's end, `--max-memory`) writes to one sink
//!   (Parquet, then stdout to /dev/null). Reported per sink: packets sent, seen by the probe and
//!   counted in records (exported), packets lost, records/s, flows ended with
//!   `lack_of_resources`, peak RSS (flowlens' own `VmHWM`, logged at stop) and user-space CPU
//!   per packet seen (child's user + system time from `wait4` / packets).
//! * **Sink capacity** (`sink_rates`): records/s each sink takes in the collector's 8192-record
//!   calls (Parquet with and without its journal, stdout to /dev/null): a sink slower than the
//!   flood's record rate slows the drain cycle by the difference.
//! * **Memory per flow** (`flow_memory`): the real pipeline (flow table at a cap, exporter,
//!   Parquet sink) under a synthetic flood of 120k new flows per simulated second, in a child
//!   process per cap; peak RSS at several caps gives the bytes per flow (slope) and the base
//!   (intercept) that `collector/src/memory.rs` uses, and the same flood without a cap shows
//!   what the bound prevents.

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use flowlens::{
    drain::{DrainError, DrainReport, Drainer},
    export::Exporter,
    flow_table::FlowTable,
};
use flowlens_schema::{FlowKey, FlowValue, record::FlowRecord};
use flowlens_sinks::{
    Sink,
    parquet::{JournalOptions, ParquetOptions, ParquetSink},
    stdout::StdoutSink,
};

/// New flows per simulated second of the synthetic flood (the hping3 flood: 121k/s).
const SYNTHETIC_NEW_PER_SEC: u32 = 120_000;
const SYNTHETIC_SECONDS: u64 = 40;

/// Hands over `per` new flows per drain, all seen at `now`.
struct SyntheticFlood {
    next: u32,
    per: u32,
    now: u64,
}

impl Drainer for SyntheticFlood {
    fn drain(&mut self, out: &mut Vec<(FlowKey, FlowValue)>) -> Result<DrainReport, DrainError> {
        for _ in 0..self.per {
            let i = self.next;
            self.next = self.next.wrapping_add(1);
            let mut k = FlowKey::ZERO;
            k.ip_version = 4;
            k.protocol = 6;
            k.src_addr[10..].copy_from_slice(&[
                0xff,
                0xff,
                198,
                18 | ((i >> 24) as u8 & 1),
                (i >> 16) as u8,
                (i >> 8) as u8,
            ]);
            k.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
            k.src_port = 1024 + (i & 0xff) as u16;
            k.dst_port = 80;
            k.observation_point = 1;
            k.ifindex = 1;
            out.push((
                k,
                FlowValue {
                    packets: 1,
                    bytes: 40,
                    first_seen_ns: self.now,
                    last_seen_ns: self.now,
                    tcp_flags: 0x02,
                    ..FlowValue::default()
                },
            ));
        }
        Ok(DrainReport {
            entries: self.per as usize,
            accounting: None,
        })
    }
}

/// Child: the synthetic flood through the real pipeline with the flow table capped at `cap`
/// (0: no cap). Prints `VmHWM_kB=… max_table=… records=… lack_of_resources=…`.
pub fn flow_memory_child(cap: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("flowlens-bench-flowmem-{}", std::process::id()));
    let sink = ParquetSink::new(ParquetOptions {
        dir: dir.clone(),
        rotate_bytes: 128 << 20,
        rotate_interval: Duration::from_secs(300),
        host: "bench-host".into(),
        journal: None,
    })?;
    let mut table = FlowTable::new(Duration::from_secs(60), Duration::from_secs(15));
    if cap > 0 {
        table = table.with_max_flows(cap);
    }
    // `FLOWLENS_BENCH_SINK=none`: no sink (what the Parquet sink itself holds).
    let sinks: Vec<Box<dyn Sink>> = match std::env::var("FLOWLENS_BENCH_SINK").as_deref() {
        Ok("none") => vec![],
        _ => vec![Box::new(sink)],
    };
    let mut pipe = flowlens::pipeline::Pipeline::new(table, Exporter::new("bench-host"), sinks);
    pipe.reserve_drain(SYNTHETIC_NEW_PER_SEC as usize);
    let start = flowlens::timebase::monotonic_now_ns();
    let mut d = SyntheticFlood {
        next: 0,
        per: SYNTHETIC_NEW_PER_SEC,
        now: start,
    };
    let mut max_table = 0;
    for sec in 0..SYNTHETIC_SECONDS {
        let now = start + sec * 1_000_000_000;
        d.now = now;
        pipe.cycle_at(&mut d, false, now)?;
        max_table = max_table.max(pipe.table.len());
    }
    d.per = 0;
    pipe.cycle(&mut d, true)?;
    pipe.close()?;
    std::fs::remove_dir_all(&dir).ok();
    let hwm = flowlens::memory::peak_rss_bytes().context("VmHWM")? / 1024;
    ensure!(
        pipe.totals.packets == SYNTHETIC_SECONDS * SYNTHETIC_NEW_PER_SEC as u64,
        "flow-memory child: {} packets in records, expected {}",
        pipe.totals.packets,
        SYNTHETIC_SECONDS * SYNTHETIC_NEW_PER_SEC as u64
    );
    println!(
        "VmHWM_kB={hwm} max_table={max_table} records={} lack_of_resources={}",
        pipe.totals.records, pipe.totals.flows_ended_lack_of_resources
    );
    Ok(())
}

/// Child: peak RSS of holding `n` records (as a sink's memory queue does), minus the same with
/// none. Prints `bytes_per_record=…`.
pub fn record_memory_child(n: usize) -> Result<()> {
    let template = flowlens_testkit::records::conversations(512);
    let before = flowlens::memory::peak_rss_bytes().context("VmHWM")?;
    let mut q: Vec<FlowRecord> = Vec::with_capacity(n);
    for i in 0..n {
        q.push(template[i % template.len()].clone());
        // Each record owns its Community ID string, as the exporter's records do.
        let last = q.last_mut().expect("pushed");
        last.community_id = last.community_id.as_str().to_owned();
    }
    let after = flowlens::memory::peak_rss_bytes().context("VmHWM")?;
    std::hint::black_box(&q);
    println!("bytes_per_record={:.1}", (after - before) as f64 / n as f64);
    Ok(())
}

fn child_fields(args: &[&str]) -> Result<BTreeMap<String, f64>> {
    let out = Command::new(std::env::current_exe()?).args(args).output()?;
    ensure!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut m = BTreeMap::new();
    for kv in text.split_whitespace() {
        if let Some((k, v)) = kv.split_once('=')
            && let Ok(x) = v.parse::<f64>()
        {
            m.insert(k.to_string(), x);
        }
    }
    Ok(m)
}

/// Peak RSS at several flow caps under the synthetic flood: bytes per flow (least-squares
/// slope) and the intercept, and the same flood without a cap.
pub fn flow_memory(summary: &mut BTreeMap<String, f64>) -> Result<()> {
    // Caps at both ends of hashbrown's power-of-two steps (7/8 of 2^17 and 2^19 fill their
    // buckets; one flow more doubles them).
    let caps = [4_096usize, 100_000, 114_689, 300_000, 458_752, 458_753];
    let mut pts = Vec::new();
    for cap in caps {
        let m = child_fields(&["flow-memory-child", &cap.to_string()])?;
        let hwm = m["VmHWM_kB"] * 1024.0;
        ensure!(
            m["max_table"] as usize <= cap,
            "cap {cap}: the table reached {}",
            m["max_table"]
        );
        eprintln!(
            "flow-memory: cap {cap}: peak RSS {:.1} MB, lack_of_resources {}",
            hwm / 1e6,
            m["lack_of_resources"]
        );
        summary.insert(format!("flood_synthetic_peak_rss_mb_cap_{cap}"), hwm / 1e6);
        pts.push((cap as f64, hwm));
    }
    // Above the smallest cap: measured peak bytes per flow, and the model's
    // (`memory::table_peak_bytes`), which must not be below the measurement.
    let (c0, h0) = pts[0];
    let model0 = flowlens::memory::table_peak_bytes(c0 as u64) as f64;
    let mut worst: f64 = 0.0;
    for &(c, h) in &pts[1..] {
        let measured = (h - h0) / (c - c0);
        let model = (flowlens::memory::table_peak_bytes(c as u64) as f64 - model0) / (c - c0);
        summary.insert(
            format!("flood_table_measured_bytes_per_flow_cap_{c}"),
            measured,
        );
        summary.insert(format!("flood_table_model_bytes_per_flow_cap_{c}"), model);
        worst = worst.max(measured / model);
    }
    summary.insert("flood_table_measured_over_model_max".into(), worst);
    // Peak RSS at the smallest cap minus the model of its table: what `memory::BASE_BYTES`
    // covers (with this bench's 120k-delta drains).
    summary.insert("flood_base_mb_at_cap_4096".into(), (h0 - model0) / 1e6);
    let m = child_fields(&["flow-memory-child", "0"])?;
    summary.insert(
        "flood_synthetic_peak_rss_mb_uncapped".into(),
        m["VmHWM_kB"] * 1024.0 / 1e6,
    );
    summary.insert("flood_synthetic_max_table_uncapped".into(), m["max_table"]);
    let r = child_fields(&["record-memory-child", "200000"])?;
    summary.insert("queued_record_bytes".into(), r["bytes_per_record"]);
    Ok(())
}

/// Records/s each sink takes in 8192-record calls (best of 3).
pub fn sink_rates(summary: &mut BTreeMap<String, f64>) -> Result<()> {
    let records = flowlens_testkit::records::conversations(100_000);
    let n = records.len();
    let base = std::env::temp_dir().join(format!("flowlens-bench-sinkrate-{}", std::process::id()));
    let mut best: BTreeMap<&str, f64> = BTreeMap::new();
    for round in 0..3 {
        for label in ["parquet", "parquet_journal", "stdout_devnull"] {
            let dir = base.join(format!("{round}-{label}"));
            let mut sink: Box<dyn Sink> = match label {
                "stdout_devnull" => Box::new(StdoutSink::with_writer(Box::new(
                    std::fs::File::create("/dev/null")?,
                ))),
                _ => Box::new(ParquetSink::new(ParquetOptions {
                    dir: dir.join("out"),
                    rotate_bytes: 128 << 20,
                    rotate_interval: Duration::from_secs(3600),
                    host: "bench-host".into(),
                    journal: (label == "parquet_journal").then(|| JournalOptions {
                        dir: dir.join("journal"),
                        max_bytes: 1 << 30,
                    }),
                })?),
            };
            let t = Instant::now();
            for c in records.chunks(8192) {
                sink.write(c)?;
            }
            sink.close()?;
            let rate = n as f64 / t.elapsed().as_secs_f64();
            drop(sink);
            std::fs::remove_dir_all(&dir).ok();
            let e = best.entry(label).or_insert(0.0);
            *e = e.max(rate);
        }
    }
    std::fs::remove_dir_all(&base).ok();
    network_sink_rates(&records, &mut best)?;
    for (label, rate) in best {
        summary.insert(format!("sink_{label}_records_per_sec"), rate);
    }
    Ok(())
}

/// The network sinks, each built as `flowlens run` builds it (`build::build`, no spool, no
/// sink thread: the sink alone) against a real peer on loopback: Kafka (a tansu broker),
/// OTLP/gRPC (a tonic `LogsService`), IPFIX over UDP (a socket that reads). Records/s from the
/// first `write` to the end of `close` (everything delivered and acknowledged, except UDP),
/// best of 3.
fn network_sink_rates(records: &[FlowRecord], best: &mut BTreeMap<&str, f64>) -> Result<()> {
    use flowlens_sinks::{SinkSpec, build::BuildOptions};
    let n = records.len() as u64;
    let broker = flowlens_testkit::kafka::Tansu::start()?;
    let (otlp_addr, otlp_count) =
        crate::otlp_transport::start(flowlens_sinks::otlp::OtlpProtocol::Grpc)?;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let udp_port = udp.local_addr()?.port();
    udp.set_read_timeout(Some(Duration::from_millis(200)))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        loop {
            let _ = udp.recv(&mut buf);
        }
    });
    let mut o = BuildOptions::new("bench-host".into());
    o.sink_queue_records = 0;
    o.shutdown_grace = Duration::from_secs(60);
    o.kafka_close_timeout = Duration::from_secs(60);
    for round in 0..3 {
        let topic = format!("rate{round}");
        broker.create_topic(&topic, 1)?;
        let specs: [(&str, SinkSpec); 3] = [
            (
                "kafka",
                format!("kafka:{}/{topic}", broker.bootstrap()).parse()?,
            ),
            ("otlp_grpc", format!("otlp:http://{otlp_addr}").parse()?),
            ("ipfix_udp", format!("ipfix:127.0.0.1:{udp_port}").parse()?),
        ];
        for (label, spec) in specs {
            let before = otlp_count.load(std::sync::atomic::Ordering::Relaxed);
            let mut sink = flowlens_sinks::build::build(&[spec], &o)?.remove(0);
            let t = Instant::now();
            for c in records.chunks(8192) {
                // At the sink's own pace: a sink without a spool drops what its queue cannot
                // take.
                while sink.room() < c.len() as u64 {
                    std::thread::sleep(Duration::from_micros(200));
                }
                sink.write(c)?;
            }
            let closed = sink.close();
            let rate = n as f64 / t.elapsed().as_secs_f64();
            let m = sink.metrics();
            if let Err(e) = closed {
                bail!("{label}: {e:#} ({m:?})");
            }
            match label {
                "kafka" => ensure!(m.acknowledged == n, "kafka acknowledged {m:?}"),
                "otlp_grpc" => ensure!(
                    otlp_count.load(std::sync::atomic::Ordering::Relaxed) - before == n,
                    "otlp receiver got fewer records"
                ),
                _ => ensure!(m.lost == 0, "{label}: {m:?}"),
            }
            eprintln!("sink {label}: {rate:.0} records/s");
            let e = best.entry(label).or_insert(0.0);
            *e = e.max(rate);
        }
    }
    Ok(())
}

/// The `flowlens` binary next to this one (`cargo xtask bench flood` builds both).
fn flowlens_binary() -> Result<PathBuf> {
    let p = std::env::current_exe()?
        .parent()
        .context("bench binary directory")?
        .join("flowlens");
    ensure!(
        p.exists(),
        "{} not found: `cargo xtask bench flood` builds it (cargo build --release -p flowlens)",
        p.display()
    );
    Ok(p)
}

/// `key=value` of a `tracing` line (values unquoted), as f64.
fn log_field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.trim_matches('"').parse().ok())
}

fn find_line<'a>(stderr: &'a str, what: &str) -> Result<&'a str> {
    stderr
        .lines()
        .find(|l| l.contains(what))
        .with_context(|| format!("no {what:?} line in flowlens' log:\n{stderr}"))
}

/// Result of one real flood run.
#[derive(Debug, Default)]
pub struct FloodRun {
    pub sent: u64,
    /// Frames dropped by the veth before the probe (both ends' drop counters).
    pub veth_dropped: u64,
    pub seen: u64,
    pub drained: u64,
    pub lost: u64,
    pub records: u64,
    pub record_packets: u64,
    pub lack_of_resources: u64,
    pub peak_rss_bytes: u64,
    pub cpu_seconds: f64,
    pub flood_seconds: f64,
}

/// Sum of the drop counters of `ifname` in `ns` (`ip -s -j link`).
pub fn veth_drops(ns: &flowlens_testkit::Netns, ifname: &str) -> Result<u64> {
    let out = ns.ip_output(&["-s", "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let s = &v[0]["stats64"];
    Ok(["rx", "tx"]
        .iter()
        .map(|d| s[d]["dropped"].as_u64().unwrap_or(0))
        .sum())
}

/// Waits for `pid` and returns its exit status and resource usage (peak RSS, CPU time).
pub fn wait_rusage(pid: u32) -> Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 on our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    ensure!(
        r == pid as i32,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    Ok((status, ru))
}

/// One flood: `flowlens run` in B with `sink` and `max_memory`, the flood from A for
/// `seconds`, then SIGINT.
pub fn veth_flood_once(
    a: &flowlens_testkit::Netns,
    b: &flowlens_testkit::Netns,
    link: &flowlens_testkit::Link,
    sink: &str,
    max_memory: &str,
    seconds: u64,
    spool: &Path,
) -> Result<FloodRun> {
    let mut child = b
        .command(flowlens_binary()?)
        .args([
            "run",
            "--xdp",
            &link.b_if,
            "--xdp-mode",
            "skb",
            "--sink",
            sink,
        ])
        .args(["--max-memory", max_memory, "--spool-dir"])
        .arg(spool)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut err = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let ready = b.wait_xdp(&link.b_if, true);
    let drops_before = veth_drops(a, &link.a_if)? + veth_drops(b, &link.b_if)?;
    let flood = ready.and_then(|_| {
        flowlens_testkit::syn_flood(
            a,
            link,
            &flowlens_testkit::FloodSpec {
                max_packets: 50_000_000,
                max_duration: Duration::from_secs(seconds),
                rate: 0,
                dst_port: 80,
                seed: 0x5eed,
            },
        )
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let (status, ru) = wait_rusage(pid)?;
    // The child was reaped by wait4: keep `Child` from waiting again.
    std::mem::forget(child);
    let stderr = reader.join().unwrap_or_default();
    let flood = flood?;
    let drops = veth_drops(a, &link.a_if)? + veth_drops(b, &link.b_if)? - drops_before;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("flowlens exited with status {status}:\n{stderr}");
    }
    // The shutdown line (the module's other lines carry its name too).
    let cons = find_line(&stderr, "flowlens::conservation: conservation:")?;
    let stopped = find_line(&stderr, "flowlens stopped")?;
    let f = |l: &str, k: &str| log_field(l, k).unwrap_or(0.0) as u64;
    Ok(FloodRun {
        sent: flood.packets,
        veth_dropped: drops,
        seen: f(cons, "seen_packets"),
        drained: f(cons, "drained_packets"),
        lost: f(cons, "lost_packets"),
        records: f(stopped, "records"),
        record_packets: f(stopped, "packets"),
        lack_of_resources: f(stopped, "flows_ended_lack_of_resources"),
        // flowlens' own VmHWM at stop: `ru_maxrss` of a forked child starts from the parent's
        // RSS at fork (this bench's, after the in-process sink benchmark), so it overstates.
        peak_rss_bytes: f(stopped, "peak_rss_bytes"),
        cpu_seconds: (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) as f64
            + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) as f64 / 1e6,
        flood_seconds: flood.elapsed.as_secs_f64(),
    })
}

/// The real flood, per sink, 3 rounds: medians, and the range in the log.
pub fn veth_flood(seconds: u64, summary: &mut BTreeMap<String, f64>) -> Result<()> {
    use flowlens_testkit::{Netns, temp_dir, veth_pair};
    const MAX_MEMORY: &str = "144MiB";
    let a = Netns::new("floodbench-a")?;
    let b = Netns::new("floodbench-b")?;
    let link = veth_pair(&a, &b)?;
    let dir = temp_dir("floodbench")?;
    for (label, sink) in [
        ("parquet", format!("parquet:{}", dir.join("out").display())),
        ("stdout", "stdout".to_string()),
    ] {
        let mut runs = Vec::new();
        for _ in 0..3 {
            let r = veth_flood_once(
                &a,
                &b,
                &link,
                &sink,
                MAX_MEMORY,
                seconds,
                &dir.join("spool"),
            )?;
            std::fs::remove_dir_all(dir.join("out")).ok();
            eprintln!(
                "flood {label}: sent {} (veth dropped {}), probe saw {}, drained {}, in records {}, lost {}, records {} ({} lack_of_resources), peak RSS {:.1} MB, CPU {:.2} s",
                r.sent,
                r.veth_dropped,
                r.seen,
                r.drained,
                r.record_packets,
                r.lost,
                r.records,
                r.lack_of_resources,
                r.peak_rss_bytes as f64 / 1e6,
                r.cpu_seconds
            );
            ensure!(
                r.peak_rss_bytes
                    <= flowlens::memory::parse_bytes(MAX_MEMORY).map_err(anyhow::Error::msg)?,
                "flood {label}: peak RSS {} over --max-memory {MAX_MEMORY}",
                r.peak_rss_bytes
            );
            // User space is exact whatever the rate; kernel-buffer evictions (a drain cycle too
            // slow for the flood) are counted in `lost` and reported.
            ensure!(
                r.drained == r.record_packets && r.seen > 0,
                "flood {label}: drained packets not all in records: {r:?}"
            );
            runs.push(r);
        }
        let med = |f: &dyn Fn(&FloodRun) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(|x, y| x.total_cmp(y));
            v[v.len() / 2]
        };
        let p = format!("flood_{label}");
        summary.insert(
            format!("{p}_sent_pps"),
            med(&|r| r.sent as f64 / r.flood_seconds),
        );
        summary.insert(format!("{p}_packets_sent"), med(&|r| r.sent as f64));
        summary.insert(format!("{p}_packets_seen"), med(&|r| r.seen as f64));
        summary.insert(
            format!("{p}_packets_counted"),
            med(&|r| r.record_packets as f64),
        );
        summary.insert(format!("{p}_packets_lost"), med(&|r| r.lost as f64));
        summary.insert(
            format!("{p}_records_per_sec"),
            med(&|r| r.records as f64 / r.flood_seconds),
        );
        summary.insert(
            format!("{p}_lack_of_resources_records"),
            med(&|r| r.lack_of_resources as f64),
        );
        summary.insert(
            format!("{p}_peak_rss_mb"),
            med(&|r| r.peak_rss_bytes as f64 / 1e6),
        );
        summary.insert(
            format!("{p}_cpu_ns_per_packet"),
            med(&|r| r.cpu_seconds * 1e9 / r.seen.max(1) as f64),
        );
    }
    summary.insert(
        "flood_max_memory_mb".into(),
        flowlens::memory::parse_bytes(MAX_MEMORY).map_err(anyhow::Error::msg)? as f64 / 1e6,
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
