//! Issue 13 benchmarks: the Kubernetes name store (`flowlens-k8s`) at 10k and 100k pods.
//!
//! * Memory: a child process (`flowlens-bench k8s-memory-child N`) builds the store of a
//!   cluster of N pods (one IPv4 each, 10 pods per ReplicaSet of a Deployment, N/20 Services,
//!   200 nodes in 3 zones, 50 namespaces) and reports its RSS growth (VmRSS after minus before,
//!   the store only: the watchers' transient API objects are not kept), and bytes per pod.
//! * Lookup: `Names::fill` of both ends of a record (one pod address, one Service or unknown
//!   address), best of 5 rounds of 1,000,000 records, ns per record; and the cost of applying
//!   the initial list (µs per pod).

use std::{collections::BTreeMap, net::IpAddr, process::Command, time::Instant};

use anyhow::{Context, Result};
use flowlens_k8s::{Kind, Names, NodeMeta, OwnedMeta, PodMeta, ServiceMeta};
use flowlens_schema::record::Ends;

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn pod_ip(i: usize) -> IpAddr {
    IpAddr::from([10, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

fn svc_ip(i: usize) -> IpAddr {
    IpAddr::from([10, 96, (i >> 8) as u8, i as u8])
}

/// Fills `names` with a cluster of `n` pods; returns the time per pod applied (µs).
fn cluster(names: &Names, n: usize) -> f64 {
    let t0 = Instant::now();
    let mut s = names.lock();
    let now = 1_800_000_000_000_000;
    for z in 0..200 {
        s.apply_node(
            NodeMeta {
                name: format!("ip-10-0-{z}-17.eu-west-1.compute.internal"),
                zone: Some(format!("eu-west-1{}", ["a", "b", "c"][z % 3])),
                ips: vec![IpAddr::from([172, 31, (z >> 8) as u8, z as u8])],
                created_us: 0,
            },
            now,
        );
    }
    for d in 0..n / 10 {
        s.apply_owned(
            Kind::ReplicaSet,
            OwnedMeta {
                namespace: format!("team-{}", d % 50),
                name: format!("workload-{d}-7d4f8b9c6"),
                owner: Some(("Deployment".into(), format!("workload-{d}"))),
            },
        );
    }
    for i in 0..n / 20 {
        s.apply_service(
            ServiceMeta {
                namespace: format!("team-{}", i % 50),
                name: format!("workload-{i}"),
                ips: vec![svc_ip(i)],
                created_us: 0,
            },
            now,
        );
    }
    for i in 0..n {
        let d = i / 10;
        s.apply_pod(
            PodMeta {
                uid: format!("{:08x}-1c2d-4e5f-8a9b-{:012x}", d, i),
                namespace: format!("team-{}", d % 50),
                name: format!("workload-{d}-7d4f8b9c6-{:05x}", i & 0xfffff),
                owner: Some(("ReplicaSet".into(), format!("workload-{d}-7d4f8b9c6"))),
                node: Some(format!("ip-10-0-{}-17.eu-west-1.compute.internal", i % 200)),
                host_network: false,
                ips: vec![pod_ip(i)],
                created_us: 0,
                finished: false,
            },
            now,
        );
    }
    drop(s);
    t0.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// The child: builds the store of `n` pods, prints `rss_kib apply_us_per_pod`.
pub fn memory_child(n: usize) -> Result<()> {
    let names = Names::new(std::time::Duration::from_secs(300));
    let before = vm_rss_kib();
    let apply_us = cluster(&names, n);
    let after = vm_rss_kib();
    anyhow::ensure!(names.counts().pods == n, "store has {:?}", names.counts());
    println!("{} {apply_us}", after.saturating_sub(before));
    Ok(())
}

/// ns per record of `Names::fill` on both ends, best of 5 rounds of `m` records.
fn lookup_ns(names: &Names, n: usize, m: usize) -> Result<f64> {
    let mut best = f64::MAX;
    let mut named = 0u64;
    for round in 0..5 {
        let t = Instant::now();
        for j in 0..m {
            let i = (j.wrapping_mul(2_654_435_761) + round) % n;
            let mut ends = Ends::default();
            // Destination: a Service for every 4th record, an unknown address for every 8th.
            let dst = match j % 8 {
                0 => IpAddr::from([192, 0, 2, 1]),
                1 | 5 => svc_ip(i % (n / 20)),
                _ => pod_ip((i + 1) % n),
            };
            names.fill(&mut ends, pod_ip(i), dst, 1_800_000_000_000_000);
            named += ends.source.k8s_pod_name.is_some() as u64;
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e9 / m as f64);
    }
    anyhow::ensure!(named == 5 * m as u64, "not every source was named");
    Ok(best)
}

pub fn store(summary: &mut BTreeMap<String, f64>) -> Result<()> {
    let exe = std::env::current_exe()?;
    for n in [10_000usize, 100_000] {
        let o = Command::new(&exe)
            .args(["k8s-memory-child", &n.to_string()])
            .output()
            .context("k8s memory child")?;
        anyhow::ensure!(
            o.status.success(),
            "child: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8(o.stdout)?;
        let mut f = out.split_whitespace();
        let kib: f64 = f.next().context("rss")?.parse()?;
        let apply_us: f64 = f.next().context("apply")?.parse()?;
        let names = Names::new(std::time::Duration::from_secs(300));
        cluster(&names, n);
        let ns = lookup_ns(&names, n, 1_000_000)?;
        let k = n / 1000;
        eprintln!(
            "k8s store, {n} pods: {:.1} MiB ({:.0} B/pod), apply {apply_us:.2} µs/pod, \
             fill both ends {ns:.0} ns/record",
            kib / 1024.0,
            kib * 1024.0 / n as f64
        );
        summary.insert(format!("k8s_store_{k}k_pods_mib"), kib / 1024.0);
        summary.insert(
            format!("k8s_store_{k}k_bytes_per_pod"),
            kib * 1024.0 / n as f64,
        );
        summary.insert(format!("k8s_apply_{k}k_us_per_pod"), apply_us);
        summary.insert(format!("k8s_fill_{k}k_ns_per_record"), ns);
    }
    Ok(())
}
