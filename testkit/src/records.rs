//! Synthetic flow records for sink tests and encoder benchmarks: both directions of each
//! conversation (same Community ID), IPv4 and IPv6, TCP/UDP/ICMP, tagged and untagged, and
//! counters past 2^32 so that a narrowed integer field would show.

use std::sync::Arc;

use flowlens_schema::{
    FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, OBS_XDP, VLAN_NONE,
    community_id::community_id_v1,
    record::{EndIdentity, EndReason, Ends, FlowRecord, key_addr},
};

/// `2 * conversations` records: record `2i` is A→B of conversation `i`, `2i + 1` is B→A.
pub fn conversations(conversations: usize) -> Vec<FlowRecord> {
    let host: Arc<str> = "test-host".into();
    let ifname: Arc<str> = "veth-test".into();
    let t0: i64 = 1_764_140_000_000_000; // 2025-11-26 06:53:20 UTC
    let mut out = Vec::with_capacity(conversations * 2);
    for i in 0..conversations {
        let mut k = FlowKey::ZERO;
        let v6 = i % 3 == 2;
        let (a, b) = if v6 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            a[12..].copy_from_slice(&(i as u32).to_be_bytes());
            let mut b = a;
            b[15] ^= 0xff;
            b[11] = 1;
            (a, b)
        } else {
            let mut a = [0u8; 16];
            a[10..12].copy_from_slice(&[0xff, 0xff]);
            a[12..].copy_from_slice(&[10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            let mut b = a;
            b[12..].copy_from_slice(&[192, 168, (i >> 8) as u8, i as u8]);
            (a, b)
        };
        k.ip_version = if v6 { 6 } else { 4 };
        k.protocol = match i % 5 {
            0 | 1 => IPPROTO_TCP,
            2 | 3 => IPPROTO_UDP,
            _ if v6 => IPPROTO_ICMPV6,
            _ => IPPROTO_ICMP,
        };
        k.observation_point = OBS_XDP;
        k.ifindex = 7;
        k.vlan_id = if i % 4 == 1 {
            100 + i as u16 % 4000
        } else {
            VLAN_NONE
        };
        let ported = matches!(k.protocol, IPPROTO_TCP | IPPROTO_UDP);
        for dir in 0..2 {
            let mut k = k;
            let (src, dst) = if dir == 0 { (a, b) } else { (b, a) };
            k.src_addr = src;
            k.dst_addr = dst;
            if ported {
                let (p1, p2) = (1024 + (i % 60_000) as u16, 443);
                (k.src_port, k.dst_port) = if dir == 0 { (p1, p2) } else { (p2, p1) };
            } else {
                // Echo request / echo reply.
                k.icmp_type = match (v6, dir) {
                    (false, 0) => 8,
                    (false, _) => 0,
                    (true, 0) => 128,
                    (true, _) => 129,
                };
            }
            let community_id = community_id_v1(
                0,
                key_addr(k.ip_version, &k.src_addr),
                key_addr(k.ip_version, &k.dst_addr),
                k.protocol,
                k.src_port,
                k.dst_port,
                k.icmp_type,
                k.icmp_code,
            );
            let start = t0 + i as i64 * 1_000;
            out.push(FlowRecord {
                flow_start_us: start,
                flow_end_us: start + 250_000 + dir as i64,
                key: k,
                interface_name: ifname.clone(),
                packets: 3 + i as u64 + dir as u64,
                // Past 2^32 for some records.
                bytes: if i % 7 == 3 {
                    (5u64 << 32) + i as u64
                } else {
                    180 + 7 * i as u64
                },
                tcp_flags: if k.protocol == IPPROTO_TCP { 0x1b } else { 0 },
                dscp: (i % 64) as u8,
                end_reason: match i % 3 {
                    0 => EndReason::IdleTimeout,
                    1 => EndReason::EndOfFlow,
                    _ => EndReason::ActiveTimeout,
                },
                host: host.clone(),
                community_id,
                ends: ends(i, dir),
            });
        }
    }
    out
}

/// Identity columns (issue 12) on every fourth conversation: the local end (source of the
/// first direction, destination of the reply) named like a containerd pod, a process, and a
/// label on both ends of every eighth one; the rest stay null, as on a host's other traffic.
fn ends(i: usize, dir: usize) -> Ends {
    let mut e = Ends::default();
    if i % 4 == 2 {
        let local = EndIdentity {
            cgroup: Some(
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b5a9f6e_1c2d_4e5f_8a9b_{i:012x}.slice/cri-containerd-{i:064x}.scope"
                )
                .into(),
            ),
            container_id: Some(format!("{i:064x}").into()),
            k8s_pod_uid: Some(format!("0b5a9f6e-1c2d-4e5f-8a9b-{i:012x}").into()),
            process_name: (i % 8 == 2).then(|| "nginx".into()),
            process_pid: (i % 8 == 2).then_some(1000 + i as u32),
            label: None,
            ..Default::default()
        };
        if dir == 0 {
            e.source = local;
        } else {
            e.destination = local;
        }
    }
    if i % 8 == 6 {
        e.source.label = Some("site-a".into());
        e.destination.label = Some("cloud ü".into());
    }
    k8s_names(i, dir, &mut e);
    e
}

/// Workloads of [`k8s_names`]: (namespace, top owner kind, top owner name).
pub const WORKLOADS: [(&str, &str, &str); 5] = [
    ("shop", "Deployment", "checkout"),
    ("shop", "Deployment", "cart"),
    ("db", "StatefulSet", "postgres"),
    ("batch", "CronJob", "nightly-report"),
    ("kube-system", "DaemonSet", "node-agent"),
];

/// Kubernetes names (issue 13): the named local end of every fourth conversation is a pod of
/// one of [`WORKLOADS`] (by `i / 4`), on node `node-{i % 3}` in zone `eu-west-1a`/`1b`; its
/// remote end is a `postgres` pod behind the Service `postgres` on every eighth one; every
/// twelfth conversation (`i % 12 == 0`, no cgroup identity) goes to the ClusterIP of Service
/// `frontend` in `shop` (namespace and service only). The rest stay null.
fn k8s_names(i: usize, dir: usize, e: &mut Ends) {
    let (local, remote) = if dir == 0 {
        (&mut e.source, &mut e.destination)
    } else {
        (&mut e.destination, &mut e.source)
    };
    let zone = |n: usize| -> Arc<str> {
        if n.is_multiple_of(2) {
            "eu-west-1a"
        } else {
            "eu-west-1b"
        }
        .into()
    };
    if i % 4 == 2 {
        let (ns, kind, owner) = WORKLOADS[(i / 4) % WORKLOADS.len()];
        local.k8s_namespace = Some(ns.into());
        local.k8s_pod_name = Some(format!("{owner}-{i:x}").into());
        local.k8s_owner_kind = Some(kind.into());
        local.k8s_owner_name = Some(owner.into());
        local.k8s_node_name = Some(format!("node-{}", i % 3).into());
        local.zone = Some(zone(i % 3));
        if i % 8 == 2 {
            remote.k8s_namespace = Some("db".into());
            remote.k8s_pod_name = Some("postgres-0".into());
            remote.k8s_owner_kind = Some("StatefulSet".into());
            remote.k8s_owner_name = Some("postgres".into());
            remote.k8s_node_name = Some("node-9".into());
            remote.k8s_service_name = Some("postgres".into());
            remote.zone = Some(zone(1));
        }
    }
    if i.is_multiple_of(12) {
        remote.k8s_namespace = Some("shop".into());
        remote.k8s_service_name = Some("frontend".into());
    }
}
