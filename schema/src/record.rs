//! The exported flow record and its Arrow schema: the single definition every sink derives from.
//!
//! [`COLUMNS`] lists each column with its Arrow type and meaning; [`arrow_schema`] and
//! [`to_record_batch`] are built from it, and `docs/SCHEMA.md` is tested against it.

use std::{net::IpAddr, sync::Arc};

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{
        Int64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt8Builder, UInt16Builder,
        UInt32Builder,
    },
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::flow::*;

/// Why a flow record was emitted (IPFIX flowEndReason, RFC 5102).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    IdleTimeout,
    ActiveTimeout,
    /// TCP FIN or RST seen.
    EndOfFlow,
    /// The exporter stopped.
    ForcedEnd,
    /// The exporter had no room to keep the flow.
    LackOfResources,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::ActiveTimeout => "active_timeout",
            EndReason::EndOfFlow => "end_of_flow",
            EndReason::ForcedEnd => "forced_end",
            EndReason::LackOfResources => "lack_of_resources",
        }
    }
}

/// Name of an observation point (`FlowKey::observation_point`).
pub fn observation_point_name(obs: u8) -> &'static str {
    match obs {
        OBS_XDP => "xdp",
        OBS_NF_PRE_ROUTING => "nf_pre_routing",
        OBS_NF_LOCAL_IN => "nf_local_in",
        OBS_NF_FORWARD => "nf_forward",
        OBS_NF_LOCAL_OUT => "nf_local_out",
        OBS_NF_POST_ROUTING => "nf_post_routing",
        _ => "unknown",
    }
}

/// Direction of traffic relative to the host at an observation point.
pub fn direction_name(obs: u8) -> &'static str {
    match obs {
        OBS_NF_LOCAL_OUT | OBS_NF_POST_ROUTING => "egress",
        _ => "ingress",
    }
}

/// Transport name as in OpenTelemetry's `network.transport` where one exists, otherwise the IANA
/// keyword in lower case, otherwise the protocol number.
pub fn transport_name(proto: u8) -> std::borrow::Cow<'static, str> {
    let name = match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        IPPROTO_ICMPV6 => "ipv6-icmp",
        IPPROTO_SCTP => "sctp",
        IPPROTO_UDPLITE => "udplite",
        2 => "igmp",
        4 => "ipv4",
        41 => "ipv6",
        47 => "gre",
        50 => "esp",
        51 => "ah",
        59 => "ipv6-nonxt",
        89 => "ospf",
        103 => "pim",
        112 => "vrrp",
        _ => return std::borrow::Cow::Owned(proto.to_string()),
    };
    std::borrow::Cow::Borrowed(name)
}

/// Converts a 16-byte key address to an `IpAddr` (IPv4 keys are v4-mapped).
pub fn key_addr(ip_version: u8, a: &[u8; 16]) -> IpAddr {
    if ip_version == 4 {
        IpAddr::from([a[12], a[13], a[14], a[15]])
    } else {
        IpAddr::from(*a)
    }
}

/// One exported flow record (one row).
#[derive(Clone, Debug, PartialEq)]
pub struct FlowRecord {
    /// Microseconds since the Unix epoch, UTC.
    pub flow_start_us: i64,
    pub flow_end_us: i64,
    pub key: FlowKey,
    pub interface_name: Arc<str>,
    pub packets: u64,
    pub bytes: u64,
    pub tcp_flags: u16,
    pub dscp: u8,
    pub end_reason: EndReason,
    pub host: Arc<str>,
    pub community_id: String,
    /// Who is talking at each end (issue 12): all null unless the identity stage named it.
    pub ends: Ends,
}

/// The identity of one end of a flow (`source_*` / `destination_*` columns). Every field is
/// null when the end is not local or could not be resolved (docs/IDENTITY.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndIdentity {
    /// cgroup v2 path relative to the cgroup root, e.g. `/system.slice/nginx.service`.
    pub cgroup: Option<Arc<str>>,
    /// Full container id (64 hex digits for Docker/containerd/CRI-O/Podman).
    pub container_id: Option<Arc<str>>,
    /// Kubernetes pod UID with dashes.
    pub k8s_pod_uid: Option<Arc<str>>,
    /// `comm` of a process in the end's cgroup (best effort).
    pub process_name: Option<Arc<str>>,
    pub process_pid: Option<u32>,
    /// Label of the longest `--label-cidrs` prefix containing the end's address.
    pub label: Option<Arc<str>>,
    // Kubernetes names (issue 13, `--kubernetes`): local ends by pod UID, remote ends by the
    // address the pod (or Service, or node) held at the flow's time.
    /// Namespace of the end's pod (or Service).
    pub k8s_namespace: Option<Arc<str>>,
    pub k8s_pod_name: Option<Arc<str>>,
    /// Kind of the pod's top owner: `Deployment` (via its ReplicaSet), `CronJob` (via its
    /// Job), else the direct owner's kind (`StatefulSet`, `DaemonSet`, ...), else `Pod`.
    pub k8s_owner_kind: Option<Arc<str>>,
    pub k8s_owner_name: Option<Arc<str>>,
    /// Node of the pod (a host-network pod's address, or a node's address: that node).
    pub k8s_node_name: Option<Arc<str>>,
    /// Service whose ClusterIP the end's address is.
    pub k8s_service_name: Option<Arc<str>>,
    /// `topology.kubernetes.io/zone` label of the end's node.
    pub zone: Option<Arc<str>>,
}

impl EndIdentity {
    pub fn is_empty(&self) -> bool {
        *self == EndIdentity::default()
    }
    /// The Kubernetes name fields, in [`K8S_END_FIELDS`] order.
    pub fn k8s_fields(&self) -> [&Option<Arc<str>>; 7] {
        [
            &self.k8s_namespace,
            &self.k8s_pod_name,
            &self.k8s_owner_kind,
            &self.k8s_owner_name,
            &self.k8s_node_name,
            &self.k8s_service_name,
            &self.zone,
        ]
    }
    /// The Kubernetes name fields, mutable, in [`K8S_END_FIELDS`] order.
    pub fn k8s_fields_mut(&mut self) -> [&mut Option<Arc<str>>; 7] {
        [
            &mut self.k8s_namespace,
            &mut self.k8s_pod_name,
            &mut self.k8s_owner_kind,
            &mut self.k8s_owner_name,
            &mut self.k8s_node_name,
            &mut self.k8s_service_name,
            &mut self.zone,
        ]
    }
}

/// Identity of both ends of a flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ends {
    pub source: EndIdentity,
    pub destination: EndIdentity,
}

impl Ends {
    pub fn end(&self, destination: bool) -> &EndIdentity {
        if destination {
            &self.destination
        } else {
            &self.source
        }
    }
}

/// The suffixes of the per-end identity columns, in column order (`source_` then
/// `destination_` prefix).
pub const END_FIELDS: [&str; 6] = [
    "cgroup",
    "container_id",
    "k8s_pod_uid",
    "process_name",
    "process_pid",
    "label",
];

/// The suffixes of the per-end Kubernetes name columns (issue 13), in column order: all
/// `source_` ones, then all `destination_` ones, after the [`END_FIELDS`] columns (appended, so
/// readers of the older columns by position keep working).
pub const K8S_END_FIELDS: [&str; 7] = [
    "k8s_namespace",
    "k8s_pod_name",
    "k8s_owner_kind",
    "k8s_owner_name",
    "k8s_node_name",
    "k8s_service_name",
    "zone",
];

impl FlowRecord {
    pub fn source_address(&self) -> IpAddr {
        key_addr(self.key.ip_version, &self.key.src_addr)
    }
    pub fn destination_address(&self) -> IpAddr {
        key_addr(self.key.ip_version, &self.key.dst_addr)
    }
    pub fn vlan_id(&self) -> Option<u16> {
        (self.key.vlan_id != VLAN_NONE).then_some(self.key.vlan_id)
    }
}

/// A column of the export schema.
pub struct Column {
    pub name: &'static str,
    pub data_type: fn() -> DataType,
    pub nullable: bool,
    pub description: &'static str,
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Every exported column, in order.
pub const COLUMNS: &[Column] = &[
    Column {
        name: "flow_start",
        data_type: ts,
        nullable: false,
        description: "First packet of the flow in this record (µs, UTC). Stamps have one scheduler tick's resolution (e.g. 4 ms: XDP reads the kernel's coarse clock, netfilter hooks the precise clock once per tick per CPU) unless `--precise-timestamps`.",
    },
    Column {
        name: "flow_end",
        data_type: ts,
        nullable: false,
        description: "Last packet of the flow in this record (µs, UTC); same clock as `flow_start`.",
    },
    Column {
        name: "observation_point",
        data_type: || DataType::Utf8,
        nullable: false,
        description: "Where the packets were seen: `xdp` (ingress, before the stack), or a netfilter hook: `nf_pre_routing`, `nf_local_in`, `nf_forward`, `nf_local_out`, `nf_post_routing`. A packet seen at two points is in one record per point: filter on one point when summing traffic.",
    },
    Column {
        name: "interface_name",
        data_type: || DataType::Utf8,
        nullable: false,
        description: "Interface the packets were seen on (name at export time; empty if it is gone): the ingress interface for `xdp`, `nf_pre_routing`, `nf_local_in` and `nf_forward`, the output interface for `nf_local_out` and `nf_post_routing`.",
    },
    Column {
        name: "interface_index",
        data_type: || DataType::UInt32,
        nullable: false,
        description: "Interface index the packets were seen on.",
    },
    Column {
        name: "direction",
        data_type: || DataType::Utf8,
        nullable: false,
        description: "`ingress` or `egress` relative to this host: `egress` for `nf_local_out` and `nf_post_routing`, `ingress` otherwise (`nf_forward` reports the interface the packet came in on).",
    },
    Column {
        name: "network_type",
        data_type: || DataType::Utf8,
        nullable: false,
        description: "`ipv4` or `ipv6`.",
    },
    Column {
        name: "protocol",
        data_type: || DataType::UInt8,
        nullable: false,
        description: "IANA protocol number of the transport (after IPv6 extension headers).",
    },
    Column {
        name: "network_transport",
        data_type: || DataType::Utf8,
        nullable: false,
        description: "Transport name: `tcp`, `udp`, `icmp`, `ipv6-icmp`, `sctp`, ... (the number if unnamed).",
    },
    Column {
        name: "source_address",
        data_type: || DataType::Utf8,
        nullable: false,
        description: "Source IP address, text form.",
    },
    Column {
        name: "destination_address",
        data_type: || DataType::Utf8,
        nullable: false,
        description: "Destination IP address, text form.",
    },
    Column {
        name: "source_port",
        data_type: || DataType::UInt16,
        nullable: false,
        description: "TCP/UDP/UDP-Lite/SCTP source port; 0 otherwise and for non-first fragments.",
    },
    Column {
        name: "destination_port",
        data_type: || DataType::UInt16,
        nullable: false,
        description: "TCP/UDP/UDP-Lite/SCTP destination port; 0 otherwise and for non-first fragments.",
    },
    Column {
        name: "icmp_type",
        data_type: || DataType::UInt8,
        nullable: false,
        description: "ICMP/ICMPv6 type; 0 for other protocols.",
    },
    Column {
        name: "icmp_code",
        data_type: || DataType::UInt8,
        nullable: false,
        description: "ICMP/ICMPv6 code; 0 for other protocols.",
    },
    Column {
        name: "vlan_id",
        data_type: || DataType::UInt16,
        nullable: true,
        description: "Outer VLAN id (802.1Q/802.1ad); null when untagged.",
    },
    Column {
        name: "packets",
        data_type: || DataType::Int64,
        nullable: false,
        description: "Packets in this record.",
    },
    Column {
        name: "bytes",
        data_type: || DataType::Int64,
        nullable: false,
        description: "IP-layer bytes in this record (IPFIX octetDeltaCount: IPv4 total length, IPv6 40 + payload length).",
    },
    Column {
        name: "tcp_flags",
        data_type: || DataType::UInt16,
        nullable: false,
        description: "OR of the TCP flags of all packets (FIN=1, SYN=2, RST=4, PSH=8, ACK=16, URG=32, ECE=64, CWR=128, NS=256).",
    },
    Column {
        name: "dscp",
        data_type: || DataType::UInt8,
        nullable: false,
        description: "DSCP of the last packet.",
    },
    Column {
        name: "flow_end_reason",
        data_type: || DataType::Utf8,
        nullable: false,
        description: "`idle_timeout`, `active_timeout`, `end_of_flow` (TCP FIN/RST), `forced_end` (exporter stopped) or `lack_of_resources`.",
    },
    Column {
        name: "host",
        data_type: || DataType::Utf8,
        nullable: false,
        description: "Hostname of the exporter.",
    },
    Column {
        name: "community_id",
        data_type: || DataType::Utf8,
        nullable: false,
        description: "Community ID v1 (seed 0) of the flow, to join with Zeek/Suricata data.",
    },
    Column {
        name: "source_cgroup",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "cgroup v2 path (relative to the cgroup root, e.g. `/system.slice/nginx.service`) of the source end when it is a local socket or a local container's network namespace; null otherwise (docs/IDENTITY.md says which ends are named).",
    },
    Column {
        name: "source_container_id",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Full container id of the source end when its cgroup is a container's (Docker, containerd/CRI, CRI-O, Podman naming); null otherwise.",
    },
    Column {
        name: "source_k8s_pod_uid",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Kubernetes pod UID (with dashes) of the source end when its cgroup path carries one (`kubepods…pod<uid>…`); null otherwise.",
    },
    Column {
        name: "source_process_name",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Best effort: the name (`comm`) of the lowest-pid process in the source end's cgroup when the flow was exported; null when the cgroup had no process then.",
    },
    Column {
        name: "source_process_pid",
        data_type: || DataType::UInt32,
        nullable: true,
        description: "Best effort: the pid (in the collector's pid namespace) of that process; null with `source_process_name`.",
    },
    Column {
        name: "source_label",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Label of the longest `--label-cidrs` prefix containing `source_address`; null when none does.",
    },
    Column {
        name: "destination_cgroup",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "cgroup v2 path (relative to the cgroup root, e.g. `/system.slice/nginx.service`) of the destination end when it is a local socket or a local container's network namespace; null otherwise (docs/IDENTITY.md says which ends are named).",
    },
    Column {
        name: "destination_container_id",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Full container id of the destination end when its cgroup is a container's (Docker, containerd/CRI, CRI-O, Podman naming); null otherwise.",
    },
    Column {
        name: "destination_k8s_pod_uid",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Kubernetes pod UID (with dashes) of the destination end when its cgroup path carries one (`kubepods…pod<uid>…`); null otherwise.",
    },
    Column {
        name: "destination_process_name",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Best effort: the name (`comm`) of the lowest-pid process in the destination end's cgroup when the flow was exported; null when the cgroup had no process then.",
    },
    Column {
        name: "destination_process_pid",
        data_type: || DataType::UInt32,
        nullable: true,
        description: "Best effort: the pid (in the collector's pid namespace) of that process; null with `destination_process_name`.",
    },
    Column {
        name: "destination_label",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Label of the longest `--label-cidrs` prefix containing `destination_address`; null when none does.",
    },
    // Kubernetes names of each end (issue 13, `--kubernetes`, docs/IDENTITY.md), appended after
    // the older identity columns.
    Column {
        name: "source_k8s_namespace",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Kubernetes namespace of the source end's pod (or of the Service whose ClusterIP `source_address` is), with `--kubernetes`; null when unknown.",
    },
    Column {
        name: "source_k8s_pod_name",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Name of the source end's pod: a local end by its pod UID, a remote end by the pod that held `source_address` at the flow's time; null when no pod did (or `--kubernetes` is off).",
    },
    Column {
        name: "source_k8s_owner_kind",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Kind of the top owner of the source end's pod: `Deployment` (via its ReplicaSet), `CronJob` (via its Job), else the direct owner's kind (`StatefulSet`, `DaemonSet`, `Job`, ...), else `Pod`; null with `source_k8s_pod_name`.",
    },
    Column {
        name: "source_k8s_owner_name",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Name of that top owner (the workload); with `source_k8s_namespace` and `source_k8s_owner_kind` it names the workload (`flowlens report --group-by workload`).",
    },
    Column {
        name: "source_k8s_node_name",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Kubernetes node of the source end's pod; for a host-network pod's or a node's own address, that node; null when unknown.",
    },
    Column {
        name: "source_k8s_service_name",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Service whose ClusterIP `source_address` is; null otherwise.",
    },
    Column {
        name: "source_zone",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "`topology.kubernetes.io/zone` label of the source end's node; null when the node has none or is unknown.",
    },
    Column {
        name: "destination_k8s_namespace",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Kubernetes namespace of the destination end's pod (or of the Service whose ClusterIP `destination_address` is), with `--kubernetes`; null when unknown.",
    },
    Column {
        name: "destination_k8s_pod_name",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Name of the destination end's pod: a local end by its pod UID, a remote end by the pod that held `destination_address` at the flow's time; null when no pod did (or `--kubernetes` is off).",
    },
    Column {
        name: "destination_k8s_owner_kind",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Kind of the top owner of the destination end's pod: `Deployment` (via its ReplicaSet), `CronJob` (via its Job), else the direct owner's kind (`StatefulSet`, `DaemonSet`, `Job`, ...), else `Pod`; null with `destination_k8s_pod_name`.",
    },
    Column {
        name: "destination_k8s_owner_name",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Name of that top owner (the workload); with `destination_k8s_namespace` and `destination_k8s_owner_kind` it names the workload (`flowlens report --group-by workload`).",
    },
    Column {
        name: "destination_k8s_node_name",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Kubernetes node of the destination end's pod; for a host-network pod's or a node's own address, that node; null when unknown.",
    },
    Column {
        name: "destination_k8s_service_name",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "Service whose ClusterIP `destination_address` is; null otherwise.",
    },
    Column {
        name: "destination_zone",
        data_type: || DataType::Utf8,
        nullable: true,
        description: "`topology.kubernetes.io/zone` label of the destination end's node; null when the node has none or is unknown.",
    },
];

/// The Arrow schema of [`FlowRecord`] rows.
pub fn arrow_schema() -> SchemaRef {
    Arc::new(Schema::new(
        COLUMNS
            .iter()
            .map(|c| Field::new(c.name, (c.data_type)(), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// Builds one Arrow batch from records, columns in [`COLUMNS`] order.
pub fn to_record_batch(
    schema: &SchemaRef,
    records: &[FlowRecord],
) -> Result<RecordBatch, ArrowError> {
    let n = records.len();
    let mut start = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut end = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut obs = StringBuilder::with_capacity(n, n * 4);
    let mut ifname = StringBuilder::with_capacity(n, n * 8);
    let mut ifindex = UInt32Builder::with_capacity(n);
    let mut dir = StringBuilder::with_capacity(n, n * 7);
    let mut nettype = StringBuilder::with_capacity(n, n * 4);
    let mut proto = UInt8Builder::with_capacity(n);
    let mut transport = StringBuilder::with_capacity(n, n * 4);
    let mut src = StringBuilder::with_capacity(n, n * 16);
    let mut dst = StringBuilder::with_capacity(n, n * 16);
    let mut sport = UInt16Builder::with_capacity(n);
    let mut dport = UInt16Builder::with_capacity(n);
    let mut itype = UInt8Builder::with_capacity(n);
    let mut icode = UInt8Builder::with_capacity(n);
    let mut vlan = UInt16Builder::with_capacity(n);
    let mut packets = Int64Builder::with_capacity(n);
    let mut bytes = Int64Builder::with_capacity(n);
    let mut flags = UInt16Builder::with_capacity(n);
    let mut dscp = UInt8Builder::with_capacity(n);
    let mut reason = StringBuilder::with_capacity(n, n * 12);
    let mut host = StringBuilder::with_capacity(n, n * 8);
    let mut cid = StringBuilder::with_capacity(n, n * 30);
    let mut buf = String::with_capacity(40);
    let mut ends = [EndBuilders::new(n), EndBuilders::new(n)];
    let mut k8s = [K8sBuilders::new(n), K8sBuilders::new(n)];
    for r in records {
        use std::fmt::Write as _;
        let k = &r.key;
        start.append_value(r.flow_start_us);
        end.append_value(r.flow_end_us);
        obs.append_value(observation_point_name(k.observation_point));
        ifname.append_value(&*r.interface_name);
        ifindex.append_value(k.ifindex);
        dir.append_value(direction_name(k.observation_point));
        nettype.append_value(if k.ip_version == 4 { "ipv4" } else { "ipv6" });
        proto.append_value(k.protocol);
        transport.append_value(transport_name(k.protocol));
        buf.clear();
        let _ = write!(buf, "{}", r.source_address());
        src.append_value(&buf);
        buf.clear();
        let _ = write!(buf, "{}", r.destination_address());
        dst.append_value(&buf);
        sport.append_value(k.src_port);
        dport.append_value(k.dst_port);
        itype.append_value(k.icmp_type);
        icode.append_value(k.icmp_code);
        vlan.append_option(r.vlan_id());
        packets.append_value(r.packets as i64);
        bytes.append_value(r.bytes as i64);
        flags.append_value(r.tcp_flags);
        dscp.append_value(r.dscp);
        reason.append_value(r.end_reason.as_str());
        host.append_value(&*r.host);
        cid.append_value(&r.community_id);
        ends[0].append(&r.ends.source);
        ends[1].append(&r.ends.destination);
        k8s[0].append(&r.ends.source);
        k8s[1].append(&r.ends.destination);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(obs.finish()),
        Arc::new(ifname.finish()),
        Arc::new(ifindex.finish()),
        Arc::new(dir.finish()),
        Arc::new(nettype.finish()),
        Arc::new(proto.finish()),
        Arc::new(transport.finish()),
        Arc::new(src.finish()),
        Arc::new(dst.finish()),
        Arc::new(sport.finish()),
        Arc::new(dport.finish()),
        Arc::new(itype.finish()),
        Arc::new(icode.finish()),
        Arc::new(vlan.finish()),
        Arc::new(packets.finish()),
        Arc::new(bytes.finish()),
        Arc::new(flags.finish()),
        Arc::new(dscp.finish()),
        Arc::new(reason.finish()),
        Arc::new(host.finish()),
        Arc::new(cid.finish()),
    ];
    let mut columns = columns;
    for e in &mut ends {
        e.finish_into(&mut columns);
    }
    for e in &mut k8s {
        e.finish_into(&mut columns);
    }
    RecordBatch::try_new(schema.clone(), columns)
}

/// Builders of one end's identity columns ([`END_FIELDS`] order).
struct EndBuilders {
    cgroup: StringBuilder,
    container: StringBuilder,
    pod: StringBuilder,
    pname: StringBuilder,
    pid: UInt32Builder,
    label: StringBuilder,
}

impl EndBuilders {
    fn new(n: usize) -> Self {
        EndBuilders {
            cgroup: StringBuilder::with_capacity(n, 0),
            container: StringBuilder::with_capacity(n, 0),
            pod: StringBuilder::with_capacity(n, 0),
            pname: StringBuilder::with_capacity(n, 0),
            pid: UInt32Builder::with_capacity(n),
            label: StringBuilder::with_capacity(n, 0),
        }
    }
    fn append(&mut self, e: &EndIdentity) {
        self.cgroup.append_option(e.cgroup.as_deref());
        self.container.append_option(e.container_id.as_deref());
        self.pod.append_option(e.k8s_pod_uid.as_deref());
        self.pname.append_option(e.process_name.as_deref());
        self.pid.append_option(e.process_pid);
        self.label.append_option(e.label.as_deref());
    }
    fn finish_into(&mut self, columns: &mut Vec<ArrayRef>) {
        columns.push(Arc::new(self.cgroup.finish()));
        columns.push(Arc::new(self.container.finish()));
        columns.push(Arc::new(self.pod.finish()));
        columns.push(Arc::new(self.pname.finish()));
        columns.push(Arc::new(self.pid.finish()));
        columns.push(Arc::new(self.label.finish()));
    }
}

/// Builders of one end's Kubernetes name columns ([`K8S_END_FIELDS`] order).
struct K8sBuilders([StringBuilder; 7]);

impl K8sBuilders {
    fn new(n: usize) -> Self {
        K8sBuilders(std::array::from_fn(|_| StringBuilder::with_capacity(n, 0)))
    }
    fn append(&mut self, e: &EndIdentity) {
        for (b, v) in self.0.iter_mut().zip(e.k8s_fields()) {
            b.append_option(v.as_deref());
        }
    }
    fn finish_into(&mut self, columns: &mut Vec<ArrayRef>) {
        for b in &mut self.0 {
            columns.push(Arc::new(b.finish()));
        }
    }
}

/// `docs/SCHEMA.md`'s column table, generated from [`COLUMNS`].
pub fn markdown_table() -> String {
    let mut s = String::from("| column | type | nullable | meaning |\n|---|---|---|---|\n");
    for c in COLUMNS {
        s.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            c.name,
            (c.data_type)(),
            if c.nullable { "yes" } else { "no" },
            c.description
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FlowRecord {
        let mut key = FlowKey::ZERO;
        key.ip_version = 4;
        key.src_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        key.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
        key.protocol = IPPROTO_TCP;
        key.src_port = 40000;
        key.dst_port = 443;
        key.observation_point = OBS_XDP;
        key.ifindex = 7;
        FlowRecord {
            flow_start_us: 1_700_000_000_000_000,
            flow_end_us: 1_700_000_001_000_000,
            key,
            interface_name: "eth0".into(),
            packets: 3,
            bytes: 180,
            tcp_flags: 0x12,
            dscp: 46,
            end_reason: EndReason::IdleTimeout,
            host: "h".into(),
            community_id: "1:x".into(),
            ends: Ends::default(),
        }
    }

    #[test]
    fn batch_matches_schema_and_values() {
        use arrow_array::Array as _;
        let schema = arrow_schema();
        let mut r2 = sample();
        r2.key.vlan_id = 42;
        r2.key.ip_version = 6;
        r2.key.src_addr = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        r2.ends.source.container_id = Some("abc".into());
        r2.ends.destination.process_pid = Some(7);
        for (end, e) in [
            ("source", &mut r2.ends.source),
            ("destination", &mut r2.ends.destination),
        ] {
            for (j, v) in e.k8s_fields_mut().into_iter().enumerate() {
                *v = Some(format!("{end}-{j}").into());
            }
        }
        let b = to_record_batch(&schema, &[sample(), r2]).unwrap();
        assert_eq!(b.num_columns(), COLUMNS.len());
        assert_eq!(b.num_rows(), 2);
        let col = |n: &str| b.column(schema.index_of(n).unwrap()).clone();
        let src = col("source_address");
        let src = src
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        assert_eq!(src.value(0), "10.0.0.1");
        assert_eq!(src.value(1), "2001:db8::1");
        let vlan = col("vlan_id");
        assert!(vlan.is_null(0));
        assert!(!vlan.is_null(1));
        let c = col("source_container_id");
        assert!(c.is_null(0));
        assert_eq!(
            c.as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap()
                .value(1),
            "abc"
        );
        assert!(col("source_cgroup").is_null(1));
        let pid = col("destination_process_pid");
        assert_eq!(
            pid.as_any()
                .downcast_ref::<arrow_array::UInt32Array>()
                .unwrap()
                .value(1),
            7
        );
        for (i, end) in ["source", "destination"].iter().enumerate() {
            for (j, f) in END_FIELDS.iter().enumerate() {
                let at = COLUMNS.len() - 26 + 6 * i + j;
                assert_eq!(COLUMNS[at].name, format!("{end}_{f}"));
            }
            for (j, f) in K8S_END_FIELDS.iter().enumerate() {
                let at = COLUMNS.len() - 14 + 7 * i + j;
                assert_eq!(COLUMNS[at].name, format!("{end}_{f}"));
                assert!(COLUMNS[at].nullable);
            }
        }
        // The Kubernetes names land in their own columns.
        for (i, end) in ["source", "destination"].iter().enumerate() {
            for (j, f) in K8S_END_FIELDS.iter().enumerate() {
                let c = col(&format!("{end}_{f}"));
                let c = c
                    .as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .unwrap();
                assert!(c.is_null(0));
                assert_eq!(c.value(1), format!("{end}-{j}"), "{end}_{f}");
                let _ = i;
            }
        }
        let t = col("network_transport");
        assert_eq!(
            t.as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap()
                .value(0),
            "tcp"
        );
    }

    #[test]
    fn names_cover_the_documented_values() {
        assert_eq!(transport_name(58), "ipv6-icmp");
        assert_eq!(transport_name(253), "253");
        assert_eq!(observation_point_name(OBS_XDP), "xdp");
        assert_eq!(EndReason::LackOfResources.as_str(), "lack_of_resources");
    }

    /// docs/SCHEMA.md must contain the generated table verbatim (between the `columns` markers).
    /// `FLOWLENS_BLESS=1 cargo test -p flowlens-schema --features record` rewrites it.
    #[test]
    fn schema_doc_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/SCHEMA.md");
        let doc = std::fs::read_to_string(path).expect("docs/SCHEMA.md");
        let (begin, end) = ("<!-- columns:begin -->\n", "<!-- columns:end -->");
        let b = doc.find(begin).expect("begin marker") + begin.len();
        let e = doc.find(end).expect("end marker");
        if std::env::var_os("FLOWLENS_BLESS").is_some() {
            let new = format!("{}{}{}", &doc[..b], markdown_table(), &doc[e..]);
            std::fs::write(path, new).unwrap();
            return;
        }
        assert_eq!(
            &doc[b..e],
            markdown_table(),
            "docs/SCHEMA.md is out of date; run FLOWLENS_BLESS=1 cargo test -p flowlens-schema --features record"
        );
    }
}
