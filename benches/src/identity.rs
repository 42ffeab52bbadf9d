//! Issue 12 benchmarks: what naming the local ends costs.
//!
//! * Probe: the netfilter program attached at `local_out` on real, locally generated UDP
//!   packets (each carries its socket), side by side with and without the socket identity
//!   capture (`NfOffsets::socket_identity` 1 / 0: the verifier removes the branch not taken),
//!   timed by the kernel's own per-program statistics (`kernel.bpf_stats_enabled`:
//!   `run_time_ns / run_cnt` in the program's fdinfo). BPF_PROG_TEST_RUN cannot show this cost:
//!   its skb has no socket.
//! * User space: the identity stage's per-record cost (`annotate`, one core), every record
//!   naming a resolved container cgroup plus `--label-cidrs` lookups on both ends.
//! * Containers behind veths: the per-record cost of naming a record by its interface
//!   (`learn` + `annotate` of XDP deltas on 100 host-side interfaces that name containers,
//!   side by side with the same deltas when no interface has a peer namespace), and the time
//!   of one interface map refresh (link dump, `/proc` scan, `RTM_GETNSID` per namespace) with
//!   100 container namespaces, each behind a veth and holding one process.

use std::{collections::BTreeMap, net::UdpSocket, os::fd::AsRawFd, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use flowlens::{
    identity::{CgroupInfo, CgroupResolver, IdentityStage, LabelTable},
    netfilter::{Hook, btf::Btf, nf_offsets},
    probe::{NF_DIRECT_PROGRAM, Probe},
};
use flowlens_schema::{FlowKey, FlowValue, OBS_XDP};
use flowlens_testkit::Netns;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// (run_time_ns, run_cnt) of a program fd of this process.
fn prog_stats(fd: i32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    let field = |k: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {k} in fdinfo (kernel.bpf_stats_enabled?)"))
    };
    Ok((field("run_time_ns:")?, field("run_cnt:")?))
}

/// ns per packet of the shipped netfilter program at `local_out` for `packets` UDP datagrams
/// sent over loopback in a fresh namespace, with (`identity`) or without socket identity.
fn local_out_ns(ns: &Netns, identity: bool, packets: usize) -> Result<f64> {
    let mut offsets = nf_offsets(&Btf::from_kernel()?)?;
    offsets.socket_identity = u32::from(identity);
    ns.run_in(move || -> Result<f64> {
        let mut probe = Probe::load_with(65_536, Some(offsets))?;
        probe.attach_netfilter(Hook::LocalOut, -450)?;
        let fd = probe.load_netfilter(NF_DIRECT_PROGRAM)?.fd().as_raw_fd();
        let rx = UdpSocket::bind("127.0.0.1:0")?;
        rx.set_nonblocking(true)?;
        let tx = UdpSocket::bind("127.0.0.1:0")?;
        tx.connect(rx.local_addr()?)?;
        let (t0, c0) = prog_stats(fd)?;
        let mut buf = [0u8; 64];
        for i in 0..packets {
            tx.send(&buf[..32])?;
            if i % 64 == 0 {
                while rx.recv(&mut buf).is_ok() {}
            }
        }
        let (t1, c1) = prog_stats(fd)?;
        anyhow::ensure!(c1 - c0 >= packets as u64, "program ran {} times", c1 - c0);
        Ok((t1 - t0) as f64 / (c1 - c0) as f64)
    })?
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Probe ns/packet with and without identity capture (medians of `rounds`, interleaved).
pub fn probe_cost(
    rounds: usize,
    packets: usize,
    summary: &mut BTreeMap<String, f64>,
) -> Result<()> {
    let old = std::fs::read_to_string(STATS_SYSCTL).unwrap_or_else(|_| "0".into());
    std::fs::write(STATS_SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
    let ns = Netns::new("bench-ident")?;
    ns.ip(&["link", "set", "lo", "up"])?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let r = (|| -> Result<()> {
        for _ in 0..rounds {
            with.push(local_out_ns(&ns, true, packets)?);
            without.push(local_out_ns(&ns, false, packets)?);
        }
        Ok(())
    })();
    let _ = std::fs::write(STATS_SYSCTL, old.trim());
    r?;
    let (w, wo) = (median(with.clone()), median(without.clone()));
    eprintln!("identity probe: with {with:.1?} ns/pkt, without {without:.1?} ns/pkt");
    summary.insert("nf_local_out_ns_per_pkt_with_identity".into(), w);
    summary.insert("nf_local_out_ns_per_pkt_without_identity".into(), wo);
    summary.insert("nf_identity_extra_ns_per_pkt".into(), w - wo);
    Ok(())
}

/// Records/s through `IdentityStage::annotate` on one core.
pub fn records_per_sec(summary: &mut BTreeMap<String, f64>) -> Result<()> {
    let mut cg = CgroupResolver::with_root(None);
    for i in 0..1000u64 {
        cg.insert(
            100 + i,
            CgroupInfo::from_path(
                &format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b5a9f6e_1c2d_4e5f_8a9b_{i:012x}.slice/cri-containerd-{i:064x}.scope"),
                Some((Arc::from("nginx"), 1000 + i as u32)),
            ),
        );
    }
    let mut csv = String::new();
    for i in 0..1000u32 {
        csv.push_str(&format!("10.{}.{}.0/24,site-{i}\n", i / 256, i % 256));
    }
    csv.push_str("0.0.0.0/0,internet\n::/0,internet6\n");
    let mut stage = IdentityStage::new(
        cg,
        Some(LabelTable::parse_csv(&csv).map_err(anyhow::Error::msg)?),
    );
    let mut records = flowlens_testkit::records::conversations(50_000);
    for (i, r) in records.iter_mut().enumerate() {
        r.key.observation_point = flowlens_schema::OBS_NF_LOCAL_OUT;
        r.ends = Default::default();
        let _ = i;
    }
    let mut best = 0.0f64;
    for _ in 0..5 {
        let mut rs = records.clone();
        let t = Instant::now();
        for (i, r) in rs.iter_mut().enumerate() {
            stage.annotate(r, 100 + (i as u64 % 1000), 0);
        }
        let rate = rs.len() as f64 / t.elapsed().as_secs_f64();
        anyhow::ensure!(rs[0].ends.source.container_id.is_some(), "not named");
        best = best.max(rate);
    }
    eprintln!("identity stage: {best:.0} records/s");
    summary.insert("identity_records_per_sec".into(), best);
    Ok(())
}

/// Records/s of `learn` + `annotate` for XDP deltas, with every delta's interface naming a
/// container (`named`) or no interface map at all; best of 5 rounds of 50,000 records each.
fn interface_rate(named: bool) -> Result<f64> {
    let mut stage = IdentityStage::new(CgroupResolver::with_root(None), None);
    if named {
        for i in 0..100u32 {
            stage.peers.insert(
                2 + i,
                CgroupInfo::from_path(
                    &format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b5a9f6e_1c2d_4e5f_8a9b_{i:012x}.slice/cri-containerd-{i:064x}.scope"),
                    Some((Arc::from("nginx"), 1000 + i)),
                ),
            );
        }
    }
    let records = flowlens_testkit::records::conversations(50_000);
    let deltas: Vec<(FlowKey, FlowValue)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut k = r.key;
            k.observation_point = OBS_XDP;
            k.ifindex = 2 + (i as u32 % 100);
            let v = FlowValue {
                packets: 1,
                bytes: 100,
                first_seen_ns: 1,
                last_seen_ns: 2,
                ..Default::default()
            };
            (k, v)
        })
        .collect();
    let mut best = 0.0f64;
    for _ in 0..5 {
        let mut d = deltas.clone();
        let mut rs = records.clone();
        let t = Instant::now();
        stage.learn(&mut d);
        for (r, (k, v)) in rs.iter_mut().zip(&d) {
            r.key = *k;
            stage.annotate(r, v.cgroup_id, v.last_seen_ns);
        }
        let rate = rs.len() as f64 / t.elapsed().as_secs_f64();
        anyhow::ensure!(
            rs[0].ends.source.container_id.is_some() == named,
            "interface naming: named = {named}"
        );
        best = best.max(rate);
    }
    Ok(best)
}

/// Per-record cost of naming by interface, side by side (see the module doc).
pub fn interface_records_per_sec(summary: &mut BTreeMap<String, f64>) -> Result<()> {
    let without = interface_rate(false)?;
    let with = interface_rate(true)?;
    eprintln!("interface naming: {with:.0} records/s named, {without:.0} without a map");
    summary.insert("interface_named_records_per_sec".into(), with);
    summary.insert("interface_unnamed_records_per_sec".into(), without);
    summary.insert(
        "interface_naming_ns_per_record".into(),
        1e9 / with - 1e9 / without,
    );
    Ok(())
}

/// Milliseconds of one interface map refresh in a namespace with `n` veths to `n` container
/// namespaces, each holding a `sleep` process (median of 5; the first refresh, at start, not
/// counted). Also the number of processes the `/proc` scan went through.
pub fn netns_refresh(n: usize, summary: &mut BTreeMap<String, f64>) -> Result<()> {
    let host = Netns::new("bnh")?;
    let mut nss = Vec::new();
    let mut sleepers = Vec::new();
    let pid = std::process::id();
    let result = (|| -> Result<()> {
        for i in 0..n {
            let c = Netns::new("bnc")?;
            let name = format!("fb{pid:x}n{i}");
            host.ip(&[
                "link",
                "add",
                &name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                c.name(),
            ])?;
            host.ip(&["link", "set", "dev", &name, "up"])?;
            let child = std::process::Command::new("nsenter")
                .arg(format!("--net={}", c.path().display()))
                .args(["sleep", "120"])
                .stdin(std::process::Stdio::null())
                .spawn()
                .context("nsenter sleep")?;
            sleepers.push(child);
            nss.push(c);
        }
        std::thread::sleep(std::time::Duration::from_millis(300)); // the sleepers entered
        let (named, times) = host.run_in(|| {
            let mut m = flowlens::identity::PeerMap::from_system();
            let mut times = Vec::new();
            for _ in 0..5 {
                m.refresh();
                times.push(m.stats.last_refresh.as_secs_f64() * 1e3);
            }
            (m.stats.named, times)
        })?;
        anyhow::ensure!(named == n, "{named} of {n} interfaces named");
        let mut times = times;
        times.sort_by(f64::total_cmp);
        let procs = std::fs::read_dir("/proc")?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .count();
        eprintln!(
            "interface map refresh, {n} netns, {procs} processes: {:.2} ms (median of 5)",
            times[2]
        );
        summary.insert(format!("netns_refresh_ms_{n}_netns"), times[2]);
        summary.insert("netns_refresh_processes_scanned".into(), procs as f64);
        Ok(())
    })();
    for mut c in sleepers {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(nss);
    drop(host);
    result
}
