//! `flowlens report` end to end: a dataset with known contents is written through the real
//! Parquet sink, the real binary produces `--json`, and every number in the JSON is compared
//! with values computed here by plain loops over the generated records (not the report's code).
//! The HTML report is opened in headless Chromium: no script errors, the script ran, and the
//! screenshot shows the charts.

use flowlens_testkit::temp_dir;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use flowlens_schema::{
    flow::{FlowKey, OBS_NF_LOCAL_IN, OBS_NF_LOCAL_OUT, OBS_XDP},
    record::{EndReason, FlowRecord},
};
use flowlens_sinks::{
    Sink,
    parquet::{ParquetOptions, ParquetSink},
};
use serde_json::{Value, json};

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");
/// 2026-11-20T00:00:00Z
const DAY0: i64 = 20_777 * 86_400_000_000;
const HOUR: i64 = 3_600_000_000;
const MIN: i64 = 60_000_000;

/// The generated record as the test sees it (its own text forms, not the schema crate's).
#[derive(Clone, Debug)]
struct Rec {
    start: i64,
    end: i64,
    obs: &'static str,
    dir: &'static str,
    iface: String,
    src: String,
    dst: String,
    transport: &'static str,
    dport: u16,
    packets: u64,
    bytes: u64,
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    }
}

/// Pick an address: IPv4 in 10.1.x (most traffic), 10.2.x, 192.168.1.x, or IPv6.
fn pick_addr(r: &mut Lcg, v6: bool) -> IpAddr {
    if v6 {
        let sub = r.below(2) as u16;
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0xa + sub,
            1,
            0,
            0,
            0,
            1 + r.below(12) as u16,
        ))
    } else {
        match r.below(10) {
            0..=5 => IpAddr::V4(Ipv4Addr::new(
                10,
                1,
                r.below(3) as u8,
                1 + r.below(15) as u8,
            )),
            6..=7 => IpAddr::V4(Ipv4Addr::new(10, 2, 0, 1 + r.below(10) as u8)),
            _ => IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1 + r.below(8) as u8)),
        }
    }
}

/// Generates the dataset: 6 hours from DAY0 (plus records ending a little into hour 6), two
/// named interfaces and one that vanished (empty name, ifindex 9), three observation points.
/// eth1's traffic grows over time so its trend is positive.
fn generate(n: usize) -> (Vec<FlowRecord>, Vec<Rec>) {
    let mut r = Lcg(42);
    let mut recs = Vec::new();
    let mut mine = Vec::new();
    for i in 0..n {
        let start = DAY0 + (r.below(6 * 3600 * 1000) as i64) * 1000;
        // Durations: 0 (single packet), up to 3 minutes (crossing buckets and hours).
        let dur = match r.below(4) {
            0 => 0,
            _ => r.below(180_000_000) as i64,
        };
        let end = start + dur;
        let (obs, obs_name, dir) = match r.below(10) {
            0..=6 => (OBS_XDP, "xdp", "ingress"),
            7..=8 => (OBS_NF_LOCAL_OUT, "nf_local_out", "egress"),
            _ => (OBS_NF_LOCAL_IN, "nf_local_in", "ingress"),
        };
        let (ifname, ifindex) = match r.below(7) {
            0..=3 => ("eth0", 2u32),
            4..=5 => ("eth1", 3),
            _ => ("", 9),
        };
        let v6 = r.below(4) == 0;
        let src = pick_addr(&mut r, v6);
        let dst = pick_addr(&mut r, v6);
        let (proto, tname, dport) = match r.below(8) {
            0..=3 => (6u8, "tcp", [443u16, 80, 22, 8080][r.below(4) as usize]),
            4..=6 => (17, "udp", [53u16, 123, 4789][r.below(3) as usize]),
            _ => {
                if v6 {
                    (58, "ipv6-icmp", 0)
                } else {
                    (1, "icmp", 0)
                }
            }
        };
        let mut packets = 1 + r.below(400);
        if ifname == "eth1" {
            // Growth: later flows are bigger.
            packets += ((start - DAY0) / (10 * MIN)) as u64 * 20;
        }
        let bytes = packets * (60 + r.below(1400));
        let mut key = FlowKey::ZERO;
        key.ip_version = if v6 { 6 } else { 4 };
        key.src_addr = addr16(src);
        key.dst_addr = addr16(dst);
        key.protocol = proto;
        key.src_port = if proto == 6 || proto == 17 {
            30_000 + (i % 20_000) as u16
        } else {
            0
        };
        key.dst_port = dport;
        key.observation_point = obs;
        key.ifindex = ifindex;
        recs.push(FlowRecord {
            flow_start_us: start,
            flow_end_us: end,
            key,
            interface_name: ifname.into(),
            packets,
            bytes,
            tcp_flags: 0,
            dscp: 0,
            end_reason: EndReason::IdleTimeout,
            host: "gen".into(),
            community_id: String::new(),
            ends: Default::default(),
        });
        mine.push(Rec {
            start,
            end,
            obs: obs_name,
            dir,
            iface: if ifname.is_empty() {
                format!("if#{ifindex}")
            } else {
                ifname.to_string()
            },
            src: src.to_string(),
            dst: dst.to_string(),
            transport: tname,
            dport,
            packets,
            bytes,
        });
    }
    (recs, mine)
}

/// One written file: its path and the flow_end range of its rows.
struct FileInfo {
    path: PathBuf,
    min_end: i64,
    max_end: i64,
}

/// Writes the records through the real sink, one file per half hour of flow_end (the sink is
/// closed after each half hour), so that row-group statistics can prune half-hour files.
fn write_dataset(dir: &Path, recs: &[FlowRecord]) -> Vec<FileInfo> {
    let mut sorted = recs.to_vec();
    sorted.sort_by_key(|r| r.flow_end_us);
    let mut sink = ParquetSink::new(ParquetOptions {
        dir: dir.to_path_buf(),
        rotate_bytes: u64::MAX,
        rotate_interval: Duration::from_secs(3600),
        host: Arc::from("gen"),
        journal: None,
    })
    .unwrap();
    let mut files = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let half = sorted[i].flow_end_us.div_euclid(30 * MIN);
        let j = sorted[i..]
            .iter()
            .position(|r| r.flow_end_us.div_euclid(30 * MIN) != half)
            .map_or(sorted.len(), |p| i + p);
        let chunk = &sorted[i..j];
        for part in chunk.chunks(97) {
            sink.write(part).unwrap();
        }
        let before = sink.completed.len();
        sink.close().unwrap();
        assert_eq!(sink.completed.len(), before + 1, "one file per half hour");
        files.push(FileInfo {
            path: sink.completed[before].clone(),
            min_end: chunk[0].flow_end_us,
            max_end: chunk[chunk.len() - 1].flow_end_us,
        });
        i = j;
    }
    assert_eq!(sink.metrics().lost, 0);
    files
}

fn fmt_time(us: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_micros(us as u64);
    if us % 1_000_000 == 0 {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_micros(t).to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Independent expectations.

#[derive(Clone, Copy, Default)]
struct C {
    records: u64,
    packets: u64,
    bytes: u64,
}
impl C {
    fn add(&mut self, r: &Rec) {
        self.records += 1;
        self.packets += r.packets;
        self.bytes += r.bytes;
    }
    fn json(&self) -> Value {
        json!({"records": self.records, "packets": self.packets, "bytes": self.bytes})
    }
}

fn ranking(map: &BTreeMap<String, C>, n: usize, total: C) -> Value {
    let entry = |k: &String, c: &C| {
        json!({
            "key": k, "records": c.records, "packets": c.packets, "bytes": c.bytes,
            "bytes_share": c.bytes as f64 / total.bytes as f64,
            "packets_share": c.packets as f64 / total.packets as f64,
        })
    };
    let mut v: Vec<(&String, &C)> = map.iter().collect();
    // BTreeMap iteration is key-ascending; a stable sort keeps that order among ties.
    v.sort_by_key(|a| std::cmp::Reverse(a.1.bytes));
    let by_bytes: Vec<Value> = v.iter().take(n).map(|(k, c)| entry(k, c)).collect();
    let mut v: Vec<(&String, &C)> = map.iter().collect();
    v.sort_by_key(|a| std::cmp::Reverse(a.1.packets));
    let by_packets: Vec<Value> = v.iter().take(n).map(|(k, c)| entry(k, c)).collect();
    json!({"distinct": map.len(), "by_bytes": by_bytes, "by_packets": by_packets})
}

enum Group {
    Prefix(u32, u32),
    Cidrs(Vec<(&'static str, u32)>),
}

fn subnet(g: &Group, a: &str) -> String {
    let ip: IpAddr = a.parse().unwrap();
    let masked = |ip: IpAddr, len: u32| -> IpAddr {
        match ip {
            IpAddr::V4(v) => {
                let x = u32::from(v);
                let keep = if len == 0 { 0 } else { !0u32 << (32 - len) };
                IpAddr::V4(Ipv4Addr::from(x & keep))
            }
            IpAddr::V6(v) => {
                let x = u128::from(v);
                let keep = if len == 0 { 0 } else { !0u128 << (128 - len) };
                IpAddr::V6(Ipv6Addr::from(x & keep))
            }
        }
    };
    match g {
        Group::Prefix(v4, v6) => {
            let l = if ip.is_ipv4() { *v4 } else { *v6 };
            format!("{}/{l}", masked(ip, l))
        }
        Group::Cidrs(list) => {
            let mut best: Option<(&str, u32)> = None;
            for (net, len) in list {
                let n: IpAddr = net.parse().unwrap();
                if n.is_ipv4() == ip.is_ipv4()
                    && masked(ip, *len) == n
                    && best.is_none_or(|(_, l)| *len > l)
                {
                    best = Some((net, *len));
                }
            }
            best.map_or("other".to_string(), |(n, l)| format!("{n}/{l}"))
        }
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = (p / 100.0 * s.len() as f64).ceil() as usize;
    s[rank.max(1) - 1]
}

struct SeriesExp {
    iface: String,
    dir: String,
    c: C,
    bps: Vec<f64>,
    pps: Vec<f64>,
}

/// Buckets any record touches (positive overlap, or the end bucket of a zero-length record).
fn touched(recs: &[&Rec], b: i64) -> (i64, i64) {
    let mut lo = i64::MAX;
    let mut hi = i64::MIN;
    for r in recs {
        if r.end == r.start {
            lo = lo.min(r.end.div_euclid(b));
            hi = hi.max(r.end.div_euclid(b));
            continue;
        }
        let mut k = r.start.div_euclid(b);
        while k * b < r.end {
            if r.end.min((k + 1) * b) > r.start.max(k * b) {
                lo = lo.min(k);
                hi = hi.max(k);
            }
            k += 1;
        }
    }
    (lo, hi)
}

fn series(recs: &[&Rec], b: i64, first: i64, last: i64) -> Vec<SeriesExp> {
    let keys: BTreeSet<(String, String)> = recs
        .iter()
        .map(|r| (r.iface.clone(), r.dir.to_string()))
        .collect();
    let secs = b as f64 / 1e6;
    keys.into_iter()
        .map(|(iface, dir)| {
            let mine: Vec<&&Rec> = recs
                .iter()
                .filter(|r| r.iface == iface && r.dir == dir)
                .collect();
            let mut c = C::default();
            let n = (last - first + 1) as usize;
            let (mut by, mut pk) = (vec![0.0; n], vec![0.0; n]);
            for r in &mine {
                c.add(r);
                for (i, k) in (first..=last).enumerate() {
                    let share = if r.end == r.start {
                        if r.end.div_euclid(b) == k { 1.0 } else { 0.0 }
                    } else {
                        let ov = r.end.min((k + 1) * b) - r.start.max(k * b);
                        if ov > 0 {
                            ov as f64 / (r.end - r.start) as f64
                        } else {
                            0.0
                        }
                    };
                    by[i] += r.bytes as f64 * share;
                    pk[i] += r.packets as f64 * share;
                }
            }
            SeriesExp {
                iface,
                dir,
                c,
                bps: by.iter().map(|x| x / secs).collect(),
                pps: pk.iter().map(|x| x / secs).collect(),
            }
        })
        .collect()
}

fn stats(v: &[f64]) -> Value {
    json!({
        "mean": v.iter().sum::<f64>() / v.len() as f64,
        "peak": v.iter().cloned().fold(f64::MIN, f64::max),
        "p95": percentile(v, 95.0),
        "p99": percentile(v, 99.0),
    })
}

/// Buckets (index into the series, count) wholly inside [from, to); all if none is.
fn whole(first: i64, last: i64, b: i64, from: i64, to: i64) -> (usize, usize) {
    let inside: Vec<usize> = (first..=last)
        .enumerate()
        .filter(|(_, k)| k * b >= from && (k + 1) * b <= to)
        .map(|(i, _)| i)
        .collect();
    match (inside.first(), inside.last()) {
        (Some(a), Some(z)) => (*a, z - a + 1),
        _ => (0, (last - first + 1) as usize),
    }
}

/// (intercept, slope per second) of the least-squares line through (bucket midpoint, rate),
/// for buckets `s0..s0 + n` of a series (x measured from the series start).
fn fit(all: &[f64], (s0, n): (usize, usize), secs: f64) -> (f64, f64) {
    let v = &all[s0..s0 + n];
    let n = v.len() as f64;
    let x: Vec<f64> = (s0..s0 + v.len())
        .map(|i| secs * (i as f64 + 0.5))
        .collect();
    let sx: f64 = x.iter().sum();
    let sy: f64 = v.iter().sum();
    let xm = sx / n;
    let ym = sy / n;
    let num: f64 = x.iter().zip(v).map(|(a, b)| (a - xm) * (b - ym)).sum();
    let den: f64 = x.iter().map(|a| (a - xm) * (a - xm)).sum();
    let slope = num / den;
    (ym - slope * xm, slope)
}

struct Case<'a> {
    input: &'a Path,
    from: Option<i64>,
    to: Option<i64>,
    bucket: i64,
    obs: &'static str,
    top: usize,
    group: Group,
    caps: Vec<(&'static str, f64)>,
    threshold: f64,
}

fn expected(all: &[Rec], files: &[FileInfo], case: &Case) -> Value {
    let (lo, hi) = (case.from.unwrap_or(i64::MIN), case.to.unwrap_or(i64::MAX));
    let in_range: Vec<&Rec> = all.iter().filter(|r| r.end >= lo && r.end < hi).collect();
    let sel: Vec<&Rec> = in_range
        .iter()
        .copied()
        .filter(|r| r.obs == case.obs)
        .collect();
    let mut total = C::default();
    for r in &sel {
        total.add(r);
    }
    let from = case
        .from
        .unwrap_or_else(|| sel.iter().map(|r| r.end).min().unwrap());
    let to = case
        .to
        .unwrap_or_else(|| sel.iter().map(|r| r.end).max().unwrap() + 1);
    let b = case.bucket;
    let secs = b as f64 / 1e6;

    // Observation points in range.
    let mut points: BTreeMap<&str, C> = BTreeMap::new();
    for r in &in_range {
        points.entry(r.obs).or_default().add(r);
    }
    let points: Vec<Value> = points
        .iter()
        .map(|(k, c)| {
            json!({"name": k, "selected": *k == case.obs, "records": c.records,
                   "packets": c.packets, "bytes": c.bytes})
        })
        .collect();

    // Scan statistics from what the test wrote.
    let mut hours: BTreeSet<i64> = BTreeSet::new();
    for f in files {
        hours.insert(f.min_end.div_euclid(HOUR));
    }
    let partitions_pruned = hours
        .iter()
        .filter(|h| (*h + 1) * HOUR <= lo || **h * HOUR >= hi)
        .count();
    let kept: Vec<&FileInfo> = files
        .iter()
        .filter(|f| {
            let h = f.min_end.div_euclid(HOUR);
            !((h + 1) * HOUR <= lo || h * HOUR >= hi)
        })
        .collect();
    let read: Vec<&&FileInfo> = kept
        .iter()
        .filter(|f| !(f.max_end < lo || f.min_end >= hi))
        .collect();
    let rows_read = all
        .iter()
        .filter(|r| {
            read.iter()
                .any(|f| r.end >= f.min_end && r.end <= f.max_end)
        })
        .count();

    // Series.
    let (mut first, mut last) = touched(&sel, b);
    if let Some(f) = case.from {
        first = first.min(f.div_euclid(b));
    }
    if let Some(t) = case.to {
        last = last.max((t - 1).div_euclid(b));
    }
    let ser = series(&sel, b, first, last);
    let w = whole(first, last, b, from, to);
    let part = |v: &[f64]| v[w.0..w.0 + w.1].to_vec();
    let ser_json: Vec<Value> = ser
        .iter()
        .map(|s| {
            let (a, k) = fit(&s.bps, w, secs);
            json!({
                "interface": s.iface, "direction": s.dir,
                "records": s.c.records, "packets": s.c.packets, "bytes": s.c.bytes,
                "bytes_per_sec": s.bps, "packets_per_sec": s.pps,
                "bytes_per_sec_stats": stats(&part(&s.bps)),
                "packets_per_sec_stats": stats(&part(&s.pps)),
                "trend": {"bytes_per_sec_intercept": a, "bytes_per_sec_slope_per_day": k * 86400.0},
            })
        })
        .collect();

    // Top talkers.
    let mut m: [BTreeMap<String, C>; 7] = Default::default();
    for r in &sel {
        let (lo_a, hi_a) = if r.src <= r.dst {
            (&r.src, &r.dst)
        } else {
            (&r.dst, &r.src)
        };
        let keys = [
            r.src.clone(),
            r.dst.clone(),
            subnet(&case.group, &r.src),
            subnet(&case.group, &r.dst),
            format!("{lo_a} <-> {hi_a}"),
            format!("{}/{}", r.transport, r.dport),
            r.transport.to_string(),
        ];
        for (map, k) in m.iter_mut().zip(keys) {
            map.entry(k).or_default().add(r);
        }
    }
    let n = case.top;
    let top = json!({
        "n": n,
        "sources": ranking(&m[0], n, total),
        "destinations": ranking(&m[1], n, total),
        "source_subnets": ranking(&m[2], n, total),
        "destination_subnets": ranking(&m[3], n, total),
        "conversations": ranking(&m[4], n, total),
        "services": ranking(&m[5], n, total),
        "transports": ranking(&m[6], n, total),
    });

    // Previous period.
    let previous = case.from.and_then(|f| {
        let (pf, pt) = (f - (to - f), f);
        let prev: Vec<&Rec> = all
            .iter()
            .filter(|r| r.end >= pf && r.end < pt && r.obs == case.obs)
            .collect();
        if prev.is_empty() {
            return None;
        }
        let mut pc = C::default();
        for r in &prev {
            pc.add(r);
        }
        let (a, z) = touched(&prev, b);
        let (pfirst, plast) = (a.min(pf.div_euclid(b)), z.max((pt - 1).div_euclid(b)));
        let ps = series(&prev, b, pfirst, plast);
        let pw = whole(pfirst, plast, b, pf, pt);
        let ifs: Vec<Value> = ps
            .iter()
            .map(|s| {
                let p95 = percentile(&s.bps[pw.0..pw.0 + pw.1], 95.0);
                let now = ser
                    .iter()
                    .find(|c| c.iface == s.iface && c.dir == s.dir)
                    .map_or(0.0, |c| percentile(&part(&c.bps), 95.0));
                json!({"interface": s.iface, "direction": s.dir, "bytes": s.c.bytes,
                       "packets": s.c.packets, "p95_bytes_per_sec": p95,
                       "p95_change": if p95 == 0.0 { Value::Null } else { json!(now / p95 - 1.0) }})
            })
            .collect();
        Some(json!({
            "from_us": pf, "to_us": pt, "from": fmt_time(pf), "to": fmt_time(pt),
            "totals": pc.json(),
            "bytes_change": total.bytes as f64 / pc.bytes as f64 - 1.0,
            "packets_change": total.packets as f64 / pc.packets as f64 - 1.0,
            "interfaces": ifs,
        }))
    });

    // Capacity.
    let capacity: Vec<Value> = case
        .caps
        .iter()
        .map(|(ifn, cap)| {
            let dirs: Vec<Value> = ser
                .iter()
                .filter(|s| s.iface == *ifn)
                .map(|s| {
                    let p95 = percentile(&part(&s.bps), 95.0) * 8.0;
                    let peak = part(&s.bps).iter().cloned().fold(0.0, f64::max) * 8.0;
                    let slope = fit(&s.bps, w, secs).1 * 86400.0 * 8.0;
                    let lim = case.threshold * cap;
                    let (status, days) = if p95 >= lim {
                        ("above_threshold", None)
                    } else if slope > 0.0 {
                        ("growing", Some((lim - p95) / slope))
                    } else {
                        ("not_growing", None)
                    };
                    json!({
                        "direction": s.dir, "p95_bits_per_sec": p95, "peak_bits_per_sec": peak,
                        "utilisation_p95": p95 / cap, "utilisation_peak": peak / cap,
                        "trend_bits_per_sec_per_day": slope, "status": status,
                        "days_to_threshold": days,
                        "reaches_threshold_at": days.and_then(|d| {
                            let us = (to as f64 + d * 86_400e6) as i64;
                            // null past 9999-12-31T23:59:59Z (not writable in RFC 3339)
                            (us < 253_402_300_799_000_000).then(|| fmt_time(us / 1_000_000 * 1_000_000))
                        }),
                    })
                })
                .collect();
            json!({"interface": ifn, "capacity_bits_per_sec": cap, "threshold": case.threshold,
                   "directions": dirs})
        })
        .collect();

    json!({
        "format": "flowlens-report/1",
        "input": case.input.display().to_string(),
        "range": {"from_us": from, "to_us": to, "from": fmt_time(from), "to": fmt_time(to),
                  "seconds": (to - from) as f64 / 1e6,
                  "from_given": case.from.is_some(), "to_given": case.to.is_some()},
        "observation_point": case.obs,
        "observation_points": points,
        // Every record of the generated lake was written by host "gen".
        "hosts": [{"host": "gen", "records": total.records, "packets": total.packets,
                   "bytes": total.bytes}],
        "scan": {
            "partitions_pruned": partitions_pruned,
            "files": kept.len(),
            "files_pruned": kept.len() - read.len(),
            "row_groups": kept.len(),
            "row_groups_pruned": kept.len() - read.len(),
            "rows_read": rows_read,
            "rows_selected": sel.len(),
            "rows_rejected": 0,
            "rows_clamped": 0,
        },
        "totals": total.json(),
        "series": {"start_us": first * b, "start": fmt_time(first * b),
                   "bucket_seconds": b / 1_000_000, "buckets": last - first + 1,
                   "stats_first": w.0, "stats_buckets": w.1,
                   "interfaces": ser_json},
        "top": top,
        "growth": {"previous": previous},
        "capacity": capacity,
    })
}

/// Compares two JSON trees; numbers within a relative 1e-9 (floats) or exactly (integers).
/// Returns the number of numeric leaves compared.
fn compare(path: &str, want: &Value, got: &Value) -> usize {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            let ka: BTreeSet<&String> = a.keys().collect();
            let kb: BTreeSet<&String> = b.keys().collect();
            assert_eq!(ka, kb, "keys differ at {path}");
            a.iter()
                .map(|(k, v)| compare(&format!("{path}.{k}"), v, &b[k]))
                .sum()
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "array length differs at {path}");
            a.iter()
                .zip(b)
                .enumerate()
                .map(|(i, (x, y))| compare(&format!("{path}[{i}]"), x, y))
                .sum()
        }
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                assert_eq!(x, y, "at {path}");
            } else {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                let tol = 1e-9 * x.abs().max(y.abs()).max(1e-3);
                assert!((x - y).abs() <= tol, "at {path}: want {x}, got {y}");
            }
            1
        }
        (a, b) => {
            assert_eq!(a, b, "at {path}");
            0
        }
    }
}

fn count_numbers(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.values().map(count_numbers).sum(),
        Value::Array(a) => a.iter().map(count_numbers).sum(),
        Value::Number(_) => 1,
        _ => 0,
    }
}

fn report(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(FLOWLENS)
        .arg("report")
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn run_case(all: &[Rec], files: &[FileInfo], case: &Case, extra: &[&str], out: &Path) -> Value {
    let mut args: Vec<String> = vec![
        "--input".into(),
        case.input.display().to_string(),
        "--json".into(),
        out.display().to_string(),
        "--bucket".into(),
        format!("{}s", case.bucket / 1_000_000),
        "--top".into(),
        case.top.to_string(),
        "--threads".into(),
        "2".into(),
    ];
    if let Some(f) = case.from {
        args.extend(["--from".into(), fmt_time(f)]);
    }
    if let Some(t) = case.to {
        args.extend(["--to".into(), fmt_time(t)]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = report(&a);
    assert!(ok, "report failed: {stderr}");
    assert!(
        stdout.contains("Throughput per interface"),
        "terminal table: {stdout}"
    );
    assert!(
        stderr.contains("scanned"),
        "progress/summary on stderr: {stderr}"
    );
    let got: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let want = expected(all, files, case);
    let n = compare("$", &want, &got);
    assert_eq!(
        n,
        count_numbers(&got),
        "every number in the JSON was compared"
    );
    assert!(n > 500, "the report has substance ({n} numbers)");
    got
}

#[test]
fn json_numbers_match_independent_computation() {
    let dir = temp_dir("report-json").unwrap();
    let data = dir.join("flows");
    let (recs, mine) = generate(4000);
    let files = write_dataset(&data, &recs);
    assert!(files.len() >= 12, "{} files", files.len());
    // A hidden in-progress file must be skipped (it is not valid Parquet).
    let some_part = files[3].path.parent().unwrap();
    std::fs::write(
        some_part.join(".flows-x.parquet.inprogress"),
        b"not parquet",
    )
    .unwrap();

    // 1: a range inside the data (partitions pruned by name; the 02:00-02:30 file by its
    // statistics), explicit subnets, capacities, previous period.
    let case = Case {
        input: &data,
        from: Some(DAY0 + 2 * HOUR + 30 * MIN),
        to: Some(DAY0 + 5 * HOUR),
        bucket: 10 * MIN,
        obs: "xdp",
        top: 5,
        group: Group::Cidrs(vec![("10.0.0.0", 8), ("10.1.0.0", 16), ("2001:db8::", 32)]),
        caps: vec![("eth0", 1e5), ("eth1", 1e9), ("wlan9", 1e9)],
        threshold: 0.75,
    };
    let got = run_case(
        &mine,
        &files,
        &case,
        &[
            "--group-by-cidr",
            "10.0.0.0/8,10.1.0.0/16,2001:db8::/32",
            "--link-capacity",
            "eth0=100Kbit",
            "--link-capacity",
            "eth1=1Gbit",
            "--link-capacity",
            "wlan9=1Gbit",
            "--threshold",
            "75%",
        ],
        &dir.join("r1.json"),
    );
    // The interesting paths were exercised.
    assert!(got["scan"]["partitions_pruned"].as_u64().unwrap() >= 3);
    assert_eq!(got["scan"]["row_groups_pruned"], 1);
    // Records ending after --from but starting before it spill into a bucket before it, which
    // the statistics leave out.
    assert_eq!(got["series"]["stats_first"], 1);
    assert_eq!(got["series"]["stats_buckets"], 15);
    assert!(!got["growth"]["previous"].is_null());
    assert_eq!(got["observation_points"].as_array().unwrap().len(), 3);
    let statuses: BTreeSet<&str> = got["capacity"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["directions"].as_array().unwrap().iter())
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.contains("above_threshold") && statuses.contains("growing"),
        "{statuses:?} {}",
        got["capacity"]
    );
    assert!(
        got["top"]["source_subnets"]["by_bytes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["key"] == "other")
    );

    // 2: whole dataset, another observation point (egress), prefix grouping, no previous.
    let case = Case {
        input: &data,
        from: None,
        to: None,
        bucket: 5 * MIN,
        obs: "nf_local_out",
        top: 3,
        group: Group::Prefix(16, 48),
        caps: vec![],
        threshold: 0.8,
    };
    let got = run_case(
        &mine,
        &files,
        &case,
        &[
            "--observation-point",
            "nf_local_out",
            "--group-by-prefix",
            "16,/48",
        ],
        &dir.join("r2.json"),
    );
    assert!(got["growth"]["previous"].is_null());
    assert_eq!(got["series"]["interfaces"][0]["direction"], "egress");

    // 3: default bucket/prefix, --to only, previous period absent; JSON to stdout.
    let (ok, stdout, stderr) = report(&[
        "--input",
        data.to_str().unwrap(),
        "--to",
        &fmt_time(DAY0 + HOUR),
        "--json",
        "-",
        "-q",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.is_empty(), "--quiet: {stderr}");
    let got: Value = serde_json::from_str(&stdout).unwrap();
    let case = Case {
        input: &data,
        from: None,
        to: Some(DAY0 + HOUR),
        bucket: 5 * MIN,
        obs: "xdp",
        top: 10,
        group: Group::Prefix(24, 64),
        caps: vec![],
        threshold: 0.8,
    };
    let want = expected(&mine, &files, &case);
    assert_eq!(compare("$", &want, &got), count_numbers(&got));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = temp_dir("report-errors").unwrap();
    let data = dir.join("flows");
    let (recs, _) = generate(50);
    write_dataset(&data, &recs);
    let d = data.to_str().unwrap();
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--input", "/nonexistent/flows"], "no such directory"),
        (
            vec!["--input", "gs://bucket/flows"],
            "only s3:// URLs are supported",
        ),
        (
            vec!["--input", empty.to_str().unwrap()],
            "no .parquet files",
        ),
        (
            vec!["--input", d, "--from", "yesterday"],
            "--from \"yesterday\"",
        ),
        (vec!["--input", d, "--to", "2026-13-01T00:00:00Z"], "--to"),
        (vec!["--input", d, "--bucket", "5 parsecs"], "--bucket"),
        (
            vec!["--input", d, "--bucket", "500ms"],
            "whole number of seconds",
        ),
        (
            vec!["--input", d, "--from", "2030-01-01T00:00:00Z"],
            "no flow records in",
        ),
        // A relative time is accepted (the data is older than a day, so nothing is in range).
        (vec!["--input", d, "--from", "-24h"], "no flow records in ["),
        (
            vec![
                "--input",
                d,
                "--from",
                "2026-11-20T02:00:00Z",
                "--to",
                "2026-11-20T01:00:00Z",
            ],
            "must be before",
        ),
        (
            vec!["--input", d, "--link-capacity", "eth0=10GB"],
            "unknown unit",
        ),
        (vec!["--input", d, "--link-capacity", "eth0"], "IFACE=RATE"),
        (
            vec!["--input", d, "--group-by-cidr", "10.0.0.1/8"],
            "host bits set",
        ),
        (vec!["--input", d, "--threshold", "180%"], "--threshold"),
        (
            vec!["--input", d, "--observation-point", "nf_forward"],
            "no records at observation point",
        ),
    ];
    for (args, needle) in cases {
        let (ok, _, stderr) = report(&args);
        assert!(!ok, "{args:?} should fail");
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("flowlens report:"))
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line expected: {stderr}");
        assert!(
            lines[0].starts_with("flowlens: error: "),
            "{args:?}: {stderr}"
        );
        assert!(
            lines[0].contains(needle),
            "{args:?}: {stderr} lacks {needle:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Files written without statistics (another writer): nothing can be pruned by statistics, the
/// default observation point is found by reading that column, and the numbers still add up.
#[test]
fn files_without_statistics() {
    use parquet::{
        arrow::ArrowWriter,
        file::properties::{EnabledStatistics, WriterProperties},
    };
    let dir = temp_dir("report-nostats").unwrap();
    let data = dir.join("flows");
    let (recs, mine) = generate(600);
    let part = data.join("date=2026-11-20/hour=00");
    std::fs::create_dir_all(&part).unwrap();
    let schema = flowlens_schema::record::arrow_schema();
    let props = WriterProperties::builder()
        .set_statistics_enabled(EnabledStatistics::None)
        .set_max_row_group_row_count(Some(100))
        .build();
    let f = std::fs::File::create(part.join("foreign.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(f, schema.clone(), Some(props)).unwrap();
    w.write(&flowlens_schema::record::to_record_batch(&schema, &recs).unwrap())
        .unwrap();
    w.close().unwrap();
    let md = parquet::file::reader::FileReader::metadata(
        &parquet::file::reader::SerializedFileReader::new(
            std::fs::File::open(part.join("foreign.parquet")).unwrap(),
        )
        .unwrap(),
    )
    .clone();
    assert!(
        md.row_groups()
            .iter()
            .all(|rg| rg.columns().iter().all(|c| c.statistics().is_none())),
        "the file really has no statistics"
    );
    let (ok, stdout, stderr) = report(&["--input", data.to_str().unwrap(), "--json", "-", "-q"]);
    assert!(ok, "{stderr}");
    let got: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(got["observation_point"], "xdp");
    let xdp: Vec<&Rec> = mine.iter().filter(|r| r.obs == "xdp").collect();
    assert_eq!(got["totals"]["records"], xdp.len());
    assert_eq!(
        got["totals"]["bytes"],
        xdp.iter().map(|r| r.bytes).sum::<u64>()
    );
    assert_eq!(got["scan"]["row_groups"], 6);
    assert_eq!(got["scan"]["rows_read"], 600);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Counts pixels in the PNG that are far from white, and distinct colours.
#[cfg(feature = "peer-tests")]
fn png_stats(path: &Path) -> (usize, usize, usize, (u32, u32)) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    assert!(ch >= 3, "RGB(A) expected, got {:?}", info.color_type);
    let (w, h) = (info.width, info.height);
    let mut colours = BTreeSet::new();
    let (mut non_white, mut chart_blue) = (0, 0);
    for px in buf[..info.buffer_size()].chunks(ch) {
        let (r, g, b) = (px[0], px[1], px[2]);
        colours.insert((r, g, b));
        if (r as u32 + g as u32 + b as u32) < 600 {
            non_white += 1;
        }
        // The ingress line colour #2563eb (anti-aliased neighbours included).
        if b > 180 && r < 90 && g < 140 {
            chart_blue += 1;
        }
    }
    (colours.len(), non_white, chart_blue, (w, h))
}

/// Needs Debian's chromium (`cargo xtask setup`): peer tier.
#[cfg(feature = "peer-tests")]
#[test]
fn html_report_renders_in_headless_chromium() {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is missing: run `cargo xtask setup` (installs Debian's chromium)");
    let dir = temp_dir("report-html").unwrap();
    let data = dir.join("flows");
    let (recs, _) = generate(3000);
    write_dataset(&data, &recs);
    let html = dir.join("report.html");
    let (ok, _, stderr) = report(&[
        "--input",
        data.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
        "--from",
        "2026-11-20T03:00:00Z",
        "--to",
        "2026-11-20T06:00:00Z",
        "--link-capacity",
        "eth1=4Mbit",
        "-q",
    ]);
    assert!(ok, "{stderr}");
    let page = std::fs::read_to_string(&html).unwrap();
    // Self-contained: nothing to fetch.
    for bad in ["http://", "https://", "<link", "src=\""] {
        assert!(!page.contains(bad), "the page references {bad}");
    }
    let chrome = |extra: &[&str]| {
        let profile = temp_dir(&format!("report-chrome-{}", extra.len())).unwrap();
        // Bounded: a browser that hangs fails the test instead of blocking the run.
        let o = Command::new("timeout")
            .args(["120", chromium])
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(format!("file://{}", html.display()))
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&profile);
        o
    };
    let o = chrome(&["--dump-dom", "--virtual-time-budget=3000"]);
    let dom = String::from_utf8_lossy(&o.stdout);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium failed: {log}");
    assert!(!log.contains("Uncaught"), "script error: {log}");
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page script did not finish: {log}"
    );
    assert!(
        dom.contains("id=\"tip\""),
        "the script's tooltip element is missing"
    );
    assert!(
        dom.matches("class=\"series\"").count() >= 3,
        "a line per interface series"
    );
    assert!(dom.matches("class=\"bar\"").count() >= 20, "top-N bars");

    let shot = dir.join("shot.png");
    let o = chrome(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1280,2000",
        "--hide-scrollbars",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (colours, non_white, blue, (w, h)) = png_stats(&shot);
    assert_eq!((w, h), (1280, 2000));
    assert!(colours > 200, "{colours} distinct colours: blank page?");
    assert!(
        non_white > (w * h / 20) as usize,
        "{non_white} non-white pixels"
    );
    assert!(
        blue > 500,
        "{blue} pixels of the ingress line colour: charts missing?"
    );
    if let Ok(keep) = std::env::var("FLOWLENS_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
        std::fs::copy(
            &html,
            format!(
                "{}.html",
                std::env::var("FLOWLENS_KEEP_SCREENSHOT").unwrap()
            ),
        )
        .unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
