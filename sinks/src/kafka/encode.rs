//! Records to Kafka message bytes: pure (no I/O), unit-tested against `schema/proto/flow.proto`
//! and benchmarked by `flowlens-bench`.
//!
//! * Protobuf (default): [`FlowMessage`], the Rust twin of `flowlens.v1.FlowRecord` in
//!   `schema/proto/flow.proto` (hand-written prost derive, so no `protoc` at build time; a test
//!   parses the `.proto` file and decodes our bytes with it).
//! * JSON: one object per record, keys = the export schema's column names, timestamps in
//!   RFC 3339 with microseconds (UTC), `vlan_id` null when untagged.
//! * Key: [`message_key`], 8 bytes, a stable hash of the record's Community ID, which is the same
//!   for both directions of a conversation, so both land in the same partition.

use std::fmt::Write as _;

use flowlens_schema::record::{
    EndIdentity, FlowRecord, direction_name, observation_point_name, transport_name,
};
use serde::Serialize;

use flowlens_schema::layout::civil_from_days;

/// Message value format (`--kafka-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KafkaFormat {
    /// `flowlens.v1.FlowRecord` from `schema/proto/flow.proto`.
    #[default]
    Protobuf,
    /// One JSON object, keys = column names.
    Json,
}

impl std::str::FromStr for KafkaFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "protobuf" => Ok(KafkaFormat::Protobuf),
            "json" => Ok(KafkaFormat::Json),
            _ => Err(format!(
                "unknown Kafka format {s:?}; expected `protobuf` or `json`"
            )),
        }
    }
}

impl std::fmt::Display for KafkaFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KafkaFormat::Protobuf => "protobuf",
            KafkaFormat::Json => "json",
        })
    }
}

/// `flowlens.v1.FlowRecord` (schema/proto/flow.proto). Field numbers are column positions + 1.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FlowMessage {
    #[prost(int64, tag = "1")]
    pub flow_start: i64,
    #[prost(int64, tag = "2")]
    pub flow_end: i64,
    #[prost(string, tag = "3")]
    pub observation_point: String,
    #[prost(string, tag = "4")]
    pub interface_name: String,
    #[prost(uint32, tag = "5")]
    pub interface_index: u32,
    #[prost(string, tag = "6")]
    pub direction: String,
    #[prost(string, tag = "7")]
    pub network_type: String,
    #[prost(uint32, tag = "8")]
    pub protocol: u32,
    #[prost(string, tag = "9")]
    pub network_transport: String,
    #[prost(string, tag = "10")]
    pub source_address: String,
    #[prost(string, tag = "11")]
    pub destination_address: String,
    #[prost(uint32, tag = "12")]
    pub source_port: u32,
    #[prost(uint32, tag = "13")]
    pub destination_port: u32,
    #[prost(uint32, tag = "14")]
    pub icmp_type: u32,
    #[prost(uint32, tag = "15")]
    pub icmp_code: u32,
    #[prost(uint32, optional, tag = "16")]
    pub vlan_id: Option<u32>,
    #[prost(int64, tag = "17")]
    pub packets: i64,
    #[prost(int64, tag = "18")]
    pub bytes: i64,
    #[prost(uint32, tag = "19")]
    pub tcp_flags: u32,
    #[prost(uint32, tag = "20")]
    pub dscp: u32,
    #[prost(string, tag = "21")]
    pub flow_end_reason: String,
    #[prost(string, tag = "22")]
    pub host: String,
    #[prost(string, tag = "23")]
    pub community_id: String,
    // Identity of each end (issue 12): absent when null.
    #[prost(string, optional, tag = "24")]
    pub source_cgroup: Option<String>,
    #[prost(string, optional, tag = "25")]
    pub source_container_id: Option<String>,
    #[prost(string, optional, tag = "26")]
    pub source_k8s_pod_uid: Option<String>,
    #[prost(string, optional, tag = "27")]
    pub source_process_name: Option<String>,
    #[prost(uint32, optional, tag = "28")]
    pub source_process_pid: Option<u32>,
    #[prost(string, optional, tag = "29")]
    pub source_label: Option<String>,
    #[prost(string, optional, tag = "30")]
    pub destination_cgroup: Option<String>,
    #[prost(string, optional, tag = "31")]
    pub destination_container_id: Option<String>,
    #[prost(string, optional, tag = "32")]
    pub destination_k8s_pod_uid: Option<String>,
    #[prost(string, optional, tag = "33")]
    pub destination_process_name: Option<String>,
    #[prost(uint32, optional, tag = "34")]
    pub destination_process_pid: Option<u32>,
    #[prost(string, optional, tag = "35")]
    pub destination_label: Option<String>,
    // Kubernetes names of each end (issue 13): absent when null.
    #[prost(string, optional, tag = "36")]
    pub source_k8s_namespace: Option<String>,
    #[prost(string, optional, tag = "37")]
    pub source_k8s_pod_name: Option<String>,
    #[prost(string, optional, tag = "38")]
    pub source_k8s_owner_kind: Option<String>,
    #[prost(string, optional, tag = "39")]
    pub source_k8s_owner_name: Option<String>,
    #[prost(string, optional, tag = "40")]
    pub source_k8s_node_name: Option<String>,
    #[prost(string, optional, tag = "41")]
    pub source_k8s_service_name: Option<String>,
    #[prost(string, optional, tag = "42")]
    pub source_zone: Option<String>,
    #[prost(string, optional, tag = "43")]
    pub destination_k8s_namespace: Option<String>,
    #[prost(string, optional, tag = "44")]
    pub destination_k8s_pod_name: Option<String>,
    #[prost(string, optional, tag = "45")]
    pub destination_k8s_owner_kind: Option<String>,
    #[prost(string, optional, tag = "46")]
    pub destination_k8s_owner_name: Option<String>,
    #[prost(string, optional, tag = "47")]
    pub destination_k8s_node_name: Option<String>,
    #[prost(string, optional, tag = "48")]
    pub destination_k8s_service_name: Option<String>,
    #[prost(string, optional, tag = "49")]
    pub destination_zone: Option<String>,
}

/// Replaces the contents of `s` without giving up its allocation.
fn set(s: &mut String, v: &str) {
    s.clear();
    s.push_str(v);
}

impl FlowMessage {
    /// Fills `self` from `r`, reusing the string buffers (no allocation once they are warm).
    pub fn fill(&mut self, r: &FlowRecord) {
        let k = &r.key;
        self.flow_start = r.flow_start_us;
        self.flow_end = r.flow_end_us;
        set(
            &mut self.observation_point,
            observation_point_name(k.observation_point),
        );
        set(&mut self.interface_name, &r.interface_name);
        self.interface_index = k.ifindex;
        set(&mut self.direction, direction_name(k.observation_point));
        set(
            &mut self.network_type,
            if k.ip_version == 4 { "ipv4" } else { "ipv6" },
        );
        self.protocol = k.protocol.into();
        set(&mut self.network_transport, &transport_name(k.protocol));
        self.source_address.clear();
        let _ = write!(self.source_address, "{}", r.source_address());
        self.destination_address.clear();
        let _ = write!(self.destination_address, "{}", r.destination_address());
        self.source_port = k.src_port.into();
        self.destination_port = k.dst_port.into();
        self.icmp_type = k.icmp_type.into();
        self.icmp_code = k.icmp_code.into();
        self.vlan_id = r.vlan_id().map(u32::from);
        self.packets = r.packets as i64;
        self.bytes = r.bytes as i64;
        self.tcp_flags = r.tcp_flags.into();
        self.dscp = r.dscp.into();
        set(&mut self.flow_end_reason, r.end_reason.as_str());
        set(&mut self.host, &r.host);
        set(&mut self.community_id, &r.community_id);
        fill_end(
            [
                &mut self.source_cgroup,
                &mut self.source_container_id,
                &mut self.source_k8s_pod_uid,
                &mut self.source_process_name,
                &mut self.source_label,
            ],
            &mut self.source_process_pid,
            &r.ends.source,
        );
        fill_end(
            [
                &mut self.destination_cgroup,
                &mut self.destination_container_id,
                &mut self.destination_k8s_pod_uid,
                &mut self.destination_process_name,
                &mut self.destination_label,
            ],
            &mut self.destination_process_pid,
            &r.ends.destination,
        );
        for (slots, e) in [
            (
                [
                    &mut self.source_k8s_namespace,
                    &mut self.source_k8s_pod_name,
                    &mut self.source_k8s_owner_kind,
                    &mut self.source_k8s_owner_name,
                    &mut self.source_k8s_node_name,
                    &mut self.source_k8s_service_name,
                    &mut self.source_zone,
                ],
                &r.ends.source,
            ),
            (
                [
                    &mut self.destination_k8s_namespace,
                    &mut self.destination_k8s_pod_name,
                    &mut self.destination_k8s_owner_kind,
                    &mut self.destination_k8s_owner_name,
                    &mut self.destination_k8s_node_name,
                    &mut self.destination_k8s_service_name,
                    &mut self.destination_zone,
                ],
                &r.ends.destination,
            ),
        ] {
            for (slot, v) in slots.into_iter().zip(e.k8s_fields()) {
                set_opt(slot, v.as_deref());
            }
        }
    }
}

/// Sets an optional message string, reusing its buffer.
fn set_opt(slot: &mut Option<String>, v: Option<&str>) {
    match (slot.as_mut(), v) {
        (Some(s), Some(v)) => set(s, v),
        (None, Some(v)) => *slot = Some(v.to_string()),
        (_, None) => *slot = None,
    }
}

/// One end's identity fields: (cgroup, container id, pod uid, process name, label), pid.
fn fill_end(texts: [&mut Option<String>; 5], pid: &mut Option<u32>, e: &EndIdentity) {
    let [cgroup, container, pod, pname, label] = texts;
    set_opt(cgroup, e.cgroup.as_deref());
    set_opt(container, e.container_id.as_deref());
    set_opt(pod, e.k8s_pod_uid.as_deref());
    set_opt(pname, e.process_name.as_deref());
    set_opt(label, e.label.as_deref());
    *pid = e.process_pid;
}

/// `2026-11-26T07:30:08.123456Z` for microseconds since the epoch.
pub fn rfc3339_micros(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// The JSON object of one record; field names are the column names (tested against `COLUMNS`).
#[derive(Serialize)]
struct JsonFlow<'a> {
    flow_start: String,
    flow_end: String,
    observation_point: &'a str,
    interface_name: &'a str,
    interface_index: u32,
    direction: &'a str,
    network_type: &'a str,
    protocol: u8,
    network_transport: &'a str,
    source_address: &'a str,
    destination_address: &'a str,
    source_port: u16,
    destination_port: u16,
    icmp_type: u8,
    icmp_code: u8,
    vlan_id: Option<u16>,
    packets: u64,
    bytes: u64,
    tcp_flags: u16,
    dscp: u8,
    flow_end_reason: &'a str,
    host: &'a str,
    community_id: &'a str,
    source_cgroup: Option<&'a str>,
    source_container_id: Option<&'a str>,
    source_k8s_pod_uid: Option<&'a str>,
    source_process_name: Option<&'a str>,
    source_process_pid: Option<u32>,
    source_label: Option<&'a str>,
    destination_cgroup: Option<&'a str>,
    destination_container_id: Option<&'a str>,
    destination_k8s_pod_uid: Option<&'a str>,
    destination_process_name: Option<&'a str>,
    destination_process_pid: Option<u32>,
    destination_label: Option<&'a str>,
    source_k8s_namespace: Option<&'a str>,
    source_k8s_pod_name: Option<&'a str>,
    source_k8s_owner_kind: Option<&'a str>,
    source_k8s_owner_name: Option<&'a str>,
    source_k8s_node_name: Option<&'a str>,
    source_k8s_service_name: Option<&'a str>,
    source_zone: Option<&'a str>,
    destination_k8s_namespace: Option<&'a str>,
    destination_k8s_pod_name: Option<&'a str>,
    destination_k8s_owner_kind: Option<&'a str>,
    destination_k8s_owner_name: Option<&'a str>,
    destination_k8s_node_name: Option<&'a str>,
    destination_k8s_service_name: Option<&'a str>,
    destination_zone: Option<&'a str>,
}

/// Encodes records into message values, reusing its buffers.
pub struct Encoder {
    format: KafkaFormat,
    msg: FlowMessage,
    src: String,
    dst: String,
}

impl Encoder {
    pub fn new(format: KafkaFormat) -> Self {
        Encoder {
            format,
            msg: FlowMessage::default(),
            src: String::with_capacity(40),
            dst: String::with_capacity(40),
        }
    }

    pub fn format(&self) -> KafkaFormat {
        self.format
    }

    /// Replaces `out` with the message value of `r`.
    pub fn encode(&mut self, r: &FlowRecord, out: &mut Vec<u8>) {
        out.clear();
        match self.format {
            KafkaFormat::Protobuf => {
                self.msg.fill(r);
                // Encoding into a Vec cannot run out of space.
                let _ = prost::Message::encode(&self.msg, out);
            }
            KafkaFormat::Json => {
                let k = &r.key;
                self.src.clear();
                let _ = write!(self.src, "{}", r.source_address());
                self.dst.clear();
                let _ = write!(self.dst, "{}", r.destination_address());
                let transport = transport_name(k.protocol);
                let j = JsonFlow {
                    flow_start: rfc3339_micros(r.flow_start_us),
                    flow_end: rfc3339_micros(r.flow_end_us),
                    observation_point: observation_point_name(k.observation_point),
                    interface_name: &r.interface_name,
                    interface_index: k.ifindex,
                    direction: direction_name(k.observation_point),
                    network_type: if k.ip_version == 4 { "ipv4" } else { "ipv6" },
                    protocol: k.protocol,
                    network_transport: &transport,
                    source_address: &self.src,
                    destination_address: &self.dst,
                    source_port: k.src_port,
                    destination_port: k.dst_port,
                    icmp_type: k.icmp_type,
                    icmp_code: k.icmp_code,
                    vlan_id: r.vlan_id(),
                    packets: r.packets,
                    bytes: r.bytes,
                    tcp_flags: r.tcp_flags,
                    dscp: r.dscp,
                    flow_end_reason: r.end_reason.as_str(),
                    host: &r.host,
                    community_id: &r.community_id,
                    source_cgroup: r.ends.source.cgroup.as_deref(),
                    source_container_id: r.ends.source.container_id.as_deref(),
                    source_k8s_pod_uid: r.ends.source.k8s_pod_uid.as_deref(),
                    source_process_name: r.ends.source.process_name.as_deref(),
                    source_process_pid: r.ends.source.process_pid,
                    source_label: r.ends.source.label.as_deref(),
                    destination_cgroup: r.ends.destination.cgroup.as_deref(),
                    destination_container_id: r.ends.destination.container_id.as_deref(),
                    destination_k8s_pod_uid: r.ends.destination.k8s_pod_uid.as_deref(),
                    destination_process_name: r.ends.destination.process_name.as_deref(),
                    destination_process_pid: r.ends.destination.process_pid,
                    destination_label: r.ends.destination.label.as_deref(),
                    source_k8s_namespace: r.ends.source.k8s_namespace.as_deref(),
                    source_k8s_pod_name: r.ends.source.k8s_pod_name.as_deref(),
                    source_k8s_owner_kind: r.ends.source.k8s_owner_kind.as_deref(),
                    source_k8s_owner_name: r.ends.source.k8s_owner_name.as_deref(),
                    source_k8s_node_name: r.ends.source.k8s_node_name.as_deref(),
                    source_k8s_service_name: r.ends.source.k8s_service_name.as_deref(),
                    source_zone: r.ends.source.zone.as_deref(),
                    destination_k8s_namespace: r.ends.destination.k8s_namespace.as_deref(),
                    destination_k8s_pod_name: r.ends.destination.k8s_pod_name.as_deref(),
                    destination_k8s_owner_kind: r.ends.destination.k8s_owner_kind.as_deref(),
                    destination_k8s_owner_name: r.ends.destination.k8s_owner_name.as_deref(),
                    destination_k8s_node_name: r.ends.destination.k8s_node_name.as_deref(),
                    destination_k8s_service_name: r.ends.destination.k8s_service_name.as_deref(),
                    destination_zone: r.ends.destination.zone.as_deref(),
                };
                // Serializing plain strings and integers into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &j);
            }
        }
    }
}

/// The message key: FNV-1a (64 bit) of the Community ID, big-endian. Community ID is
/// direction-independent, so both directions of a conversation get the same key and (with
/// librdkafka's key-hash partitioner) the same partition. Stable across versions and hosts.
pub fn message_key(r: &FlowRecord) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in r.community_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.to_be_bytes()
}

#[cfg(test)]
mod tests;
