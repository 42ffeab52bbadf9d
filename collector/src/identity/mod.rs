//! The identity stage: who is talking at each local end of a flow (issue 12).
//!
//! Data flows one way: drain → [`IdentityStage::learn`] (new cgroup ids of the drain's deltas
//! are resolved while their cgroups still exist) → flow table → export →
//! [`IdentityStage::annotate`] (the record's `source_*` / `destination_*` identity columns) →
//! sinks. This module imports nothing of the collector but its own submodules.
//!
//! Which end a captured cgroup id names (docs/IDENTITY.md has the full table):
//! * `nf_local_out`, `nf_post_routing`: the packet's socket sent it: the **source** end.
//! * `nf_local_in` (and `nf_pre_routing`, where the kernel has not assigned a socket yet, so
//!   never in practice): the socket that receives it (early demux): the **destination** end.
//! * A received flow whose packets carried no socket (no early demux: unconnected UDP, the
//!   first packets of a TCP connection) is named by the **other direction** of the same
//!   conversation seen at `nf_local_out` in this or an earlier drain (see [`Reverse`]).
//! * `xdp`, `nf_forward`: no socket; not named by a cgroup.
//!
//! A container in its own network namespace is named by the host-side interface of its veth
//! ([`netns::PeerMap`]): the interface a packet came in on (`xdp`, `nf_pre_routing`,
//! `nf_local_in`, `nf_forward`) names the **source**, the interface it leaves by
//! (`nf_local_out`, `nf_post_routing`) the **destination** ([`interface_end`]). The name is
//! captured at drain time and travels with the record through the flow table as a *stamp*
//! handle in the cgroup id slot ([`Stamps`]), so a container that goes away keeps its name
//! and a second container on the same interface index and flow key starts a new record.
//!
//! `--label-cidrs` labels both ends of every record by address.
//!
//! `--kubernetes` ([`flowlens_k8s::Names`], filled by watchers on their own thread) names both
//! ends of every record last: an end with a pod UID by it, any end by the address its pod,
//! Service or node held at the record's last packet (docs/KUBERNETES.md).

pub mod cgroup;
pub mod container;
pub mod labels;
pub mod netns;

use std::collections::HashMap;

use flowlens_schema::{
    FlowKey, FlowValue, OBS_NF_FORWARD, OBS_NF_LOCAL_IN, OBS_NF_LOCAL_OUT, OBS_NF_POST_ROUTING,
    OBS_NF_PRE_ROUTING, OBS_XDP,
    record::{EndIdentity, FlowRecord},
};

pub use cgroup::{CgroupInfo, CgroupResolver};
pub use labels::LabelTable;
pub use netns::PeerMap;

/// Which end of a flow the interface in its key names when a container's veth is behind it:
/// `Some(false)` = source (the interface the packet came in on), `Some(true)` = destination
/// (the interface it leaves by), `None` = not recorded.
pub fn interface_end(observation_point: u8) -> Option<bool> {
    match observation_point {
        OBS_XDP | OBS_NF_PRE_ROUTING | OBS_NF_LOCAL_IN | OBS_NF_FORWARD => Some(false),
        OBS_NF_LOCAL_OUT | OBS_NF_POST_ROUTING => Some(true),
        _ => None,
    }
}

/// Marks a stamp handle in the cgroup id slot (kernfs ids never have the top bit set).
const STAMP_BIT: u64 = 1 << 63;
/// Bound on open records carrying a stamp; beyond it the stamps are dropped (those records
/// lose their interface end, nothing is misnamed).
const STAMPS_MAX: usize = 4_000_000;

/// What a record's packets carried when drained: the socket's cgroup id and the container
/// behind the interface (`None`: the interface had none).
#[derive(Clone, Debug)]
struct Stamp {
    cgroup_id: u64,
    peer: Option<netns::PeerEnd>,
}

/// Stamps of open records: a handle (`STAMP_BIT | n`, never reused) replaces the delta's
/// cgroup id, so the flow table keeps it with the record, and splits the record (like for
/// another socket's cgroup) when the same key arrives with another stamp: another container
/// behind the interface index. A delta with the same interface end and the same (or an
/// unknown) socket cgroup gets the record's handle. Handles are removed when their record is
/// exported.
#[derive(Default)]
struct Stamps {
    by_handle: HashMap<u64, Stamp, foldhash::fast::RandomState>,
    by_key: HashMap<FlowKey, u64, foldhash::fast::RandomState>,
    next: u64,
}

impl Stamps {
    fn stamp(&mut self, key: &FlowKey, cgroup_id: u64, peer: Option<&netns::PeerEnd>) -> u64 {
        let end_id = peer.map(|p| p.end_id);
        if let Some(h) = self.by_key.get(key)
            && let Some(s) = self.by_handle.get_mut(h)
            && s.peer.as_ref().map(|p| p.end_id) == end_id
            && (s.cgroup_id == cgroup_id || cgroup_id == 0 || s.cgroup_id == 0)
        {
            if s.cgroup_id == 0 {
                s.cgroup_id = cgroup_id;
            }
            return *h;
        }
        if self.by_handle.len() >= STAMPS_MAX {
            self.by_handle.clear();
            self.by_key.clear();
        }
        self.next += 1;
        let h = STAMP_BIT | self.next;
        self.by_handle.insert(
            h,
            Stamp {
                cgroup_id,
                peer: peer.cloned(),
            },
        );
        self.by_key.insert(*key, h);
        h
    }

    /// The stamp of an exported record (removed).
    fn take(&mut self, key: &FlowKey, h: u64) -> Option<Stamp> {
        if self.by_key.get(key) == Some(&h) {
            self.by_key.remove(key);
        }
        self.by_handle.remove(&h)
    }
}

/// Which end of a flow a cgroup id captured at `observation_point` belongs to:
/// `Some(false)` = source, `Some(true)` = destination, `None` = no socket there.
pub fn socket_end(observation_point: u8) -> Option<bool> {
    match observation_point {
        OBS_NF_LOCAL_OUT | OBS_NF_POST_ROUTING => Some(false),
        OBS_NF_LOCAL_IN | OBS_NF_PRE_ROUTING => Some(true),
        _ => None,
    }
}

/// A local socket's end of a conversation: (local address, local port, remote address, remote
/// port, protocol).
type Conv = ([u8; 16], u16, [u8; 16], u16, u8);

/// Cgroup ids of local sockets by conversation, learned from sent packets, to name the
/// destination of received packets that carried no socket (no early demux: unconnected UDP,
/// the first packets of a TCP connection). An entry names a received packet only if the
/// socket's first reply was sent at most [`REPLY_WINDOW_NS`] after that packet, so when a
/// second socket (a second container) takes over the same addresses and ports, the first
/// one's traffic is never named after it, nor the other way round. Entries live for
/// [`REVERSE_DRAINS`] drains after the last delta that carried them; bounded by
/// [`REVERSE_MAX`].
#[derive(Default)]
struct Reverse {
    by_conv: HashMap<Conv, Sender>,
    drain: u64,
}

#[derive(Clone, Copy)]
struct Sender {
    cgroup_id: u64,
    /// Monotonic ns of the first packet this socket sent in the conversation.
    first_sent_ns: u64,
    /// Drain that last saw it.
    drain: u64,
}

const REVERSE_DRAINS: u64 = 64;
const REVERSE_MAX: usize = 262_144;
/// How long after a received packet a reply may start and still name its receiver.
pub const REPLY_WINDOW_NS: u64 = 250_000_000;

impl Reverse {
    fn learn(&mut self, key: &FlowKey, v: &FlowValue) {
        if self.by_conv.len() >= REVERSE_MAX {
            let d = self.drain;
            self.by_conv.retain(|_, s| d - s.drain < REVERSE_DRAINS / 4);
            if self.by_conv.len() >= REVERSE_MAX {
                self.by_conv.clear();
            }
        }
        let conv = (
            key.src_addr,
            key.src_port,
            key.dst_addr,
            key.dst_port,
            key.protocol,
        );
        let drain = self.drain;
        self.by_conv
            .entry(conv)
            .and_modify(|s| {
                if s.cgroup_id == v.cgroup_id {
                    s.drain = drain;
                    s.first_sent_ns = s.first_sent_ns.min(v.first_seen_ns);
                } else {
                    *s = Sender {
                        cgroup_id: v.cgroup_id,
                        first_sent_ns: v.first_seen_ns,
                        drain,
                    };
                }
            })
            .or_insert(Sender {
                cgroup_id: v.cgroup_id,
                first_sent_ns: v.first_seen_ns,
                drain,
            });
    }

    /// The cgroup of the local socket that received flow `key`, whose last packet (so far)
    /// arrived at `last_seen_ns`.
    fn receiver(&self, key: &FlowKey, last_seen_ns: u64) -> Option<u64> {
        let conv = (
            key.dst_addr,
            key.dst_port,
            key.src_addr,
            key.src_port,
            key.protocol,
        );
        self.by_conv
            .get(&conv)
            .filter(|s| self.drain - s.drain < REVERSE_DRAINS)
            .filter(|s| s.first_sent_ns <= last_seen_ns.saturating_add(REPLY_WINDOW_NS))
            .map(|s| s.cgroup_id)
    }

    fn next_drain(&mut self) {
        self.drain += 1;
        if self.drain.is_multiple_of(REVERSE_DRAINS) {
            let d = self.drain;
            self.by_conv.retain(|_, s| d - s.drain < REVERSE_DRAINS);
        }
    }
}

/// Counters of the identity stage (for logs and the benchmark).
#[derive(Default, Debug, Clone, Copy)]
pub struct IdentityStats {
    /// Record ends named by a cgroup.
    pub named_ends: u64,
    /// Record ends whose cgroup id could not be resolved to a path.
    pub unresolved_ends: u64,
    /// Record ends named by the container behind an interface.
    pub interface_ends: u64,
}

/// How long a deleted pod (or an address it let go) still names records: records are exported
/// up to the active timeout after their last packet.
pub const K8S_GRACE: std::time::Duration = std::time::Duration::from_secs(300);

pub struct IdentityStage {
    pub cgroups: CgroupResolver,
    /// `--kubernetes`: the Kubernetes names (a snapshot read under a short lock; never waits
    /// for the API server).
    pub k8s: Option<flowlens_k8s::Names>,
    labels: Option<LabelTable>,
    reverse: Reverse,
    pub peers: PeerMap,
    stamps: Stamps,
    pub stats: IdentityStats,
    ids: Vec<u64>,
}

impl IdentityStage {
    pub fn new(cgroups: CgroupResolver, labels: Option<LabelTable>) -> IdentityStage {
        IdentityStage {
            cgroups,
            k8s: None,
            labels,
            reverse: Reverse::default(),
            peers: PeerMap::disabled(),
            stamps: Stamps::default(),
            stats: IdentityStats::default(),
            ids: Vec::new(),
        }
    }

    /// Sees one drain's deltas before they are merged: remembers sending sockets by
    /// conversation, names received deltas without a socket after their conversation's
    /// sender (so the flow table keeps two sockets' records apart), and resolves the new
    /// cgroup ids now, while their cgroups exist.
    pub fn learn(&mut self, deltas: &mut [(FlowKey, FlowValue)]) {
        self.reverse.next_drain();
        self.ids.clear();
        for (k, v) in deltas.iter() {
            if v.cgroup_id != 0 && socket_end(k.observation_point) == Some(false) {
                self.reverse.learn(k, v);
            }
        }
        for (k, v) in deltas.iter_mut() {
            if v.cgroup_id == 0 && socket_end(k.observation_point) == Some(true) {
                v.cgroup_id = self.reverse.receiver(k, v.last_seen_ns).unwrap_or(0);
            }
            if v.cgroup_id != 0 {
                self.ids.push(v.cgroup_id);
            }
        }
        if !self.ids.is_empty() {
            let ids = std::mem::take(&mut self.ids);
            self.cgroups.learn(ids.iter().copied());
            self.ids = ids;
        }
        self.stamp_interfaces(deltas);
    }

    /// Names the interface end of the deltas seen on a host-side veth (see [`Stamps`]); the
    /// socket cgroup ids of those deltas move into their stamps.
    fn stamp_interfaces(&mut self, deltas: &mut [(FlowKey, FlowValue)]) {
        self.peers.next_drain();
        if self.peers.is_empty() && self.stamps.by_key.is_empty() {
            return;
        }
        for (k, v) in deltas.iter_mut() {
            if v.packets == 0 {
                continue; // the flow table drops it: no record would take the stamp
            }
            let peer = match interface_end(k.observation_point) {
                Some(_) => self.peers.end(k.ifindex),
                None => None,
            };
            // A key that had a stamp keeps getting one (a new one if the interface lost its
            // container), so its records split rather than merge across containers.
            if peer.is_some() || self.stamps.by_key.contains_key(k) {
                v.cgroup_id = self.stamps.stamp(k, v.cgroup_id, peer);
            }
        }
    }

    /// Fills the identity columns of `r`, whose flow's packets carried socket cgroup
    /// `cgroup_id` (0: none) and whose last packet was seen at `last_seen_ns` (monotonic).
    pub fn annotate(&mut self, r: &mut FlowRecord, cgroup_id: u64, last_seen_ns: u64) {
        let mut cgroup_id = cgroup_id;
        if cgroup_id & STAMP_BIT != 0 {
            let stamp = self.stamps.take(&r.key, cgroup_id);
            cgroup_id = stamp.as_ref().map_or(0, |s| s.cgroup_id);
            if let (Some(p), Some(destination)) = (
                stamp.and_then(|s| s.peer),
                interface_end(r.key.observation_point),
            ) {
                let e = if destination {
                    &mut r.ends.destination
                } else {
                    &mut r.ends.source
                };
                fill(e, &p.info);
                self.stats.interface_ends += 1;
            }
        }
        let end = socket_end(r.key.observation_point);
        let (end, id) = match (end, cgroup_id) {
            (Some(end), id) if id != 0 => (Some(end), id),
            // A received flow whose reply was sent only in a later drain.
            (Some(true), _) => (
                Some(true),
                self.reverse.receiver(&r.key, last_seen_ns).unwrap_or(0),
            ),
            _ => (None, 0),
        };
        if let (Some(destination), true) = (end, id != 0) {
            let e = if destination {
                &mut r.ends.destination
            } else {
                &mut r.ends.source
            };
            match self.cgroups.get(id) {
                Some(info) => {
                    fill(e, info);
                    self.stats.named_ends += 1;
                }
                None => self.stats.unresolved_ends += 1,
            }
        }
        if let Some(t) = &self.labels {
            r.ends.source.label = t.lookup(r.source_address()).cloned();
            r.ends.destination.label = t.lookup(r.destination_address()).cloned();
        }
        if let Some(k) = &self.k8s {
            let (src, dst) = (r.source_address(), r.destination_address());
            k.fill(&mut r.ends, src, dst, r.flow_end_us);
        }
    }
}

fn fill(e: &mut EndIdentity, info: &CgroupInfo) {
    e.cgroup = Some(info.path.clone());
    e.container_id = info.container_id.clone();
    e.k8s_pod_uid = info.k8s_pod_uid.clone();
    if let Some((name, pid)) = &info.process {
        e.process_name = Some(name.clone());
        e.process_pid = Some(*pid);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flowlens_schema::record::EndReason;

    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn key(obs: u8, src: u8, sport: u16, dst: u8, dport: u16) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.ip_version = 4;
        k.protocol = 17;
        k.src_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, src]);
        k.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, dst]);
        (k.src_port, k.dst_port) = (sport, dport);
        k.observation_point = obs;
        k
    }

    fn record(key: FlowKey) -> FlowRecord {
        FlowRecord {
            flow_start_us: 0,
            flow_end_us: 0,
            key,
            interface_name: "x".into(),
            packets: 1,
            bytes: 1,
            tcp_flags: 0,
            dscp: 0,
            end_reason: EndReason::IdleTimeout,
            host: "h".into(),
            community_id: String::new(),
            ends: Default::default(),
        }
    }

    fn stage() -> IdentityStage {
        let mut c = CgroupResolver::with_root(None);
        c.insert(
            7,
            CgroupInfo::from_path(
                &format!("/system.slice/docker-{ID}.scope"),
                Some((Arc::from("nginx"), 42)),
            ),
        );
        c.insert(8, CgroupInfo::from_path("/odd/name", None));
        IdentityStage::new(c, None)
    }

    #[test]
    fn the_captured_cgroup_names_the_right_end() {
        let mut s = stage();
        let mut out = record(key(OBS_NF_LOCAL_OUT, 1, 1000, 2, 53));
        s.annotate(&mut out, 7, 0);
        assert_eq!(out.ends.source.container_id.as_deref(), Some(ID));
        assert_eq!(out.ends.source.process_name.as_deref(), Some("nginx"));
        assert_eq!(out.ends.source.process_pid, Some(42));
        assert!(out.ends.destination.is_empty());
        let mut inn = record(key(OBS_NF_LOCAL_IN, 2, 53, 1, 1000));
        s.annotate(&mut inn, 7, 0);
        assert_eq!(
            inn.ends.destination.cgroup.as_deref(),
            Some(format!("/system.slice/docker-{ID}.scope").as_str())
        );
        assert!(inn.ends.source.is_empty());
        // Unknown names keep the path, no container id.
        let mut odd = record(key(OBS_NF_LOCAL_OUT, 1, 1, 2, 2));
        s.annotate(&mut odd, 8, 0);
        assert_eq!(odd.ends.source.cgroup.as_deref(), Some("/odd/name"));
        assert_eq!(odd.ends.source.container_id, None);
        // No socket points, unresolvable ids: nothing, counted.
        for obs in [OBS_XDP, OBS_NF_FORWARD] {
            let mut r = record(key(obs, 1, 1, 2, 2));
            s.annotate(&mut r, 7, 0);
            assert_eq!(r.ends, Default::default());
        }
        let mut r = record(key(OBS_NF_LOCAL_OUT, 1, 1, 2, 2));
        s.annotate(&mut r, 99, 0);
        assert_eq!(r.ends, Default::default());
        assert_eq!(s.stats.unresolved_ends, 1);
    }

    fn sent(cg: u64, at: u64) -> FlowValue {
        FlowValue {
            packets: 1,
            first_seen_ns: at,
            last_seen_ns: at,
            cgroup_id: cg,
            ..Default::default()
        }
    }

    #[test]
    fn a_received_flow_without_socket_is_named_by_its_reply() {
        let mut s = stage();
        let reply = key(OBS_NF_LOCAL_OUT, 1, 53, 2, 40000);
        let request = key(OBS_NF_LOCAL_IN, 2, 40000, 1, 53);
        let other = key(OBS_NF_LOCAL_IN, 2, 40001, 1, 53);
        let mut d = [
            (request, sent(0, 1_000)),
            (reply, sent(7, 2_000)),
            (other, sent(0, 1_000)),
        ];
        s.learn(&mut d);
        assert_eq!(
            d[0].1.cgroup_id, 7,
            "the request is stamped with its receiver"
        );
        assert_eq!(
            d[2].1.cgroup_id, 0,
            "another client port is another conversation"
        );
        // At export, a request drained before its reply was sent is named too.
        let mut r = record(request);
        s.annotate(&mut r, 0, 1_500);
        assert_eq!(r.ends.destination.container_id.as_deref(), Some(ID));
        // The entry expires after REVERSE_DRAINS drains without the conversation.
        for _ in 0..REVERSE_DRAINS {
            s.learn(&mut []);
        }
        let mut late = record(request);
        s.annotate(&mut late, 0, 1_500);
        assert!(late.ends.destination.is_empty());
    }

    /// A second socket (cgroup 8) takes over the conversation of the first (cgroup 7) well after
    /// the first's last packet: the first's received packets are never named after the second.
    #[test]
    fn a_reused_conversation_names_no_packet_after_the_wrong_socket() {
        let mut s = stage();
        let reply = key(OBS_NF_LOCAL_OUT, 1, 53, 2, 40000);
        let request = key(OBS_NF_LOCAL_IN, 2, 40000, 1, 53);
        s.learn(&mut [(request, sent(0, 1_000)), (reply, sent(7, 2_000))]);
        let later = 2_000 + 10 * REPLY_WINDOW_NS;
        let mut d = [(request, sent(0, later)), (reply, sent(8, later + 1))];
        s.learn(&mut d);
        assert_eq!(d[0].1.cgroup_id, 8);
        // The first socket's request record, exported now: the entry is the second socket's,
        // which started long after: not named (rather than misnamed).
        let mut r = record(request);
        s.annotate(&mut r, 0, 1_000);
        assert!(r.ends.destination.is_empty());
    }

    #[test]
    fn labels_fill_both_ends() {
        let mut s = IdentityStage::new(
            CgroupResolver::with_root(None),
            Some(LabelTable::parse_csv("10.0.0.1/32,a\n10.0.0.0/24,net\n").unwrap()),
        );
        let mut r = record(key(OBS_XDP, 1, 1, 2, 2));
        s.annotate(&mut r, 0, 0);
        assert_eq!(r.ends.source.label.as_deref(), Some("a"));
        assert_eq!(r.ends.destination.label.as_deref(), Some("net"));
    }

    /// `--kubernetes`: the local end by its pod UID (its pod has another address here), the
    /// remote end by the address its pod held at the record's time.
    #[test]
    fn kubernetes_names_the_local_end_by_uid_and_the_remote_by_address() {
        use flowlens_k8s::{Names, PodMeta};
        let uid = "3f2a1b4c-0d5e-4f60-8a7b-9c0d1e2f3a4b";
        let mut c = CgroupResolver::with_root(None);
        c.insert(
            9,
            CgroupInfo::from_path(
                &format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
                    uid.replace('-', "_")
                ),
                None,
            ),
        );
        let mut s = IdentityStage::new(c, None);
        let names = Names::new(std::time::Duration::from_secs(300));
        let pod = |uid: &str, name: &str, ip: &str| PodMeta {
            uid: uid.into(),
            namespace: "shop".into(),
            name: name.into(),
            node: Some("n1".into()),
            ips: vec![ip.parse().unwrap()],
            created_us: 1_000_000,
            ..Default::default()
        };
        names
            .lock()
            .apply_pod(pod(uid, "local", "10.9.9.9"), 5_000_000);
        names
            .lock()
            .apply_pod(pod("r", "remote", "10.0.0.2"), 5_000_000);
        s.k8s = Some(names.clone());
        let mut r = record(key(OBS_NF_LOCAL_OUT, 1, 1000, 2, 53));
        r.flow_end_us = 10_000_000;
        s.annotate(&mut r, 9, 0);
        assert_eq!(r.ends.source.k8s_pod_uid.as_deref(), Some(uid));
        assert_eq!(r.ends.source.k8s_pod_name.as_deref(), Some("local"));
        assert_eq!(r.ends.source.k8s_owner_kind.as_deref(), Some("Pod"));
        assert_eq!(r.ends.destination.k8s_pod_name.as_deref(), Some("remote"));
        assert_eq!(r.ends.destination.k8s_node_name.as_deref(), Some("n1"));
        // A record whose last packet came before the remote pod existed: not named after it.
        let mut early = record(key(OBS_NF_LOCAL_OUT, 1, 1000, 2, 53));
        early.flow_end_us = 500_000;
        s.annotate(&mut early, 0, 0);
        assert!(early.ends.destination.is_empty());
        assert_eq!(
            names
                .counters
                .named_ends
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    fn at(obs: u8, ifindex: u32, src: u8, dst: u8) -> FlowKey {
        let mut k = key(obs, src, 1000, dst, 53);
        k.ifindex = ifindex;
        k
    }

    fn info(id: &str) -> CgroupInfo {
        CgroupInfo::from_path(
            &format!("/system.slice/docker-{id}.scope"),
            Some((Arc::from("app"), 9)),
        )
    }

    /// Drains `d` and exports each delta as its own record (what the flow table does for a
    /// new key), returning the records.
    fn through(s: &mut IdentityStage, d: &mut [(FlowKey, FlowValue)]) -> Vec<FlowRecord> {
        s.learn(d);
        d.iter()
            .map(|(k, v)| {
                let mut r = record(*k);
                s.annotate(&mut r, v.cgroup_id, v.last_seen_ns);
                r
            })
            .collect()
    }

    #[test]
    fn the_interface_names_its_container_at_the_right_end() {
        let mut s = stage();
        s.peers.insert(5, info(ID));
        let mut d = [
            (at(OBS_XDP, 5, 2, 1), sent(0, 1)),
            (at(OBS_NF_FORWARD, 5, 2, 3), sent(0, 1)),
            (at(OBS_NF_LOCAL_IN, 5, 2, 1), sent(0, 1)),
            (at(OBS_NF_LOCAL_OUT, 5, 1, 2), sent(8, 1)),
            (at(OBS_NF_POST_ROUTING, 5, 1, 2), sent(0, 1)),
            (at(OBS_NF_LOCAL_OUT, 6, 1, 4), sent(0, 1)), // another interface: nothing
        ];
        let r = through(&mut s, &mut d);
        for r in &r[..3] {
            assert_eq!(r.ends.source.container_id.as_deref(), Some(ID), "{r:?}");
            assert_eq!(r.ends.source.process_pid, Some(9));
            assert!(r.ends.destination.is_empty());
        }
        assert_eq!(r[3].ends.destination.container_id.as_deref(), Some(ID));
        assert_eq!(
            r[3].ends.source.cgroup.as_deref(),
            Some("/odd/name"),
            "socket end kept"
        );
        assert_eq!(r[4].ends.destination.container_id.as_deref(), Some(ID));
        assert!(r[4].ends.source.is_empty());
        assert_eq!(r[5].ends, Default::default());
        assert_eq!(s.stats.interface_ends, 5);
        assert!(s.stamps.by_key.is_empty() && s.stamps.by_handle.is_empty());
    }

    /// A record stays one record while its interface keeps its container (a socket cgroup that
    /// shows up later joins it); a container gone keeps its name for the open record; a new
    /// container on the same interface index gets a new record.
    #[test]
    fn stamps_follow_the_container_not_the_interface_index() {
        let mut s = stage();
        let k = at(OBS_NF_LOCAL_OUT, 5, 1, 2);
        s.peers.insert(5, info(ID));
        let mut d1 = [(k, sent(0, 1))];
        s.learn(&mut d1);
        let h = d1[0].1.cgroup_id;
        assert_ne!(h & STAMP_BIT, 0);
        let mut d2 = [(k, sent(7, 2))];
        s.learn(&mut d2);
        assert_eq!(
            d2[0].1.cgroup_id, h,
            "same container, socket now known: same record"
        );
        let mut d3 = [(k, sent(0, 3))];
        s.learn(&mut d3);
        assert_eq!(d3[0].1.cgroup_id, h);
        // The container goes away; packets drained within TOMBSTONE_DRAINS still name it.
        s.peers.remove(5);
        let mut d4 = [(k, sent(0, 4))];
        s.learn(&mut d4);
        assert_eq!(d4[0].1.cgroup_id, h);
        for _ in 0..netns::TOMBSTONE_DRAINS + 1 {
            s.learn(&mut []);
        }
        // A new container takes the index: another stamp, so the flow table splits.
        let other = "b".repeat(64);
        s.peers.insert(5, info(&other));
        let mut d5 = [(k, sent(0, 5))];
        s.learn(&mut d5);
        let h2 = d5[0].1.cgroup_id;
        assert_ne!(h2, h);
        let mut old = record(k);
        s.annotate(&mut old, h, 4);
        assert_eq!(old.ends.destination.container_id.as_deref(), Some(ID));
        assert_eq!(
            old.ends.source.container_id.as_deref(),
            Some(ID),
            "socket 7"
        );
        let mut new = record(k);
        s.annotate(&mut new, h2, 5);
        assert_eq!(
            new.ends.destination.container_id.as_deref(),
            Some(other.as_str())
        );
        assert!(new.ends.source.is_empty());
        // Another socket on the same key and container: a new stamp too.
        let mut d6 = [(k, sent(7, 6))];
        s.learn(&mut d6);
        let mut d7 = [(k, sent(8, 7))];
        s.learn(&mut d7);
        assert_ne!(d6[0].1.cgroup_id, d7[0].1.cgroup_id);
    }
}
