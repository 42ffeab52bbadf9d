//! IPFIX message encoding (RFC 7011), pure: flow records in, messages (byte vectors) out.
//!
//! What is sent, per observation domain:
//! * **Templates** (set id 2): [`TEMPLATE_V4`] and [`TEMPLATE_V6`], the IANA elements of
//!   [`IANA_V4`]/[`IANA_V6`] followed (unless enterprise fields are off) by the
//!   enterprise-specific elements of [`ENTERPRISE_FIELDS`] under one Private Enterprise Number.
//! * **Options templates** (set id 3): [`TEMPLATE_SAMPLING`] (scope observationDomainId; the
//!   sampling interval 1:1 in the element sets collectors read: samplingInterval(34) +
//!   samplingAlgorithm(35), samplerMode(49) + samplerRandomInterval(50),
//!   samplingPacketInterval(305) + samplingPacketSpace(306)) and [`TEMPLATE_INTERFACE`] (scope
//!   ingressInterface(10), field interfaceName(82)).
//! * **Options data**: one sampling record, and one interface-name record per interface index
//!   seen in the records (all of them with every template refresh, new ones before the first
//!   data record that uses them).
//! * **Data sets**: one record per flow record.
//!
//! Messages never exceed the encoder's `max_message` bytes (records are never split across
//! messages; sets are closed and reopened). The header's sequence number counts the Data Records
//! (flow and options data records, RFC 7011 §3.1) sent before the message; template records do
//! not count.

use std::collections::BTreeMap;
use std::sync::Arc;

use flowlens_schema::{
    flow::{OBS_NF_LOCAL_OUT, OBS_NF_POST_ROUTING},
    record::{EndReason, FlowRecord, observation_point_name},
};

/// IPFIX version number in the message header.
pub const VERSION: u16 = 10;
/// Message header length.
pub const HEADER_LEN: usize = 16;
/// Set header length.
pub const SET_HEADER_LEN: usize = 4;
pub const SET_TEMPLATE: u16 = 2;
pub const SET_OPTIONS_TEMPLATE: u16 = 3;
pub const TEMPLATE_V4: u16 = 256;
pub const TEMPLATE_V6: u16 = 257;
pub const TEMPLATE_SAMPLING: u16 = 258;
pub const TEMPLATE_INTERFACE: u16 = 259;
/// Variable-length field marker in a template (RFC 7011 §7).
pub const VARLEN: u16 = 65535;
/// Variable-length strings are cut to this many bytes (one-byte length form), at a character
/// boundary, so every record fits a message of [`MAX_MESSAGE`] bytes (a record longer than the
/// encoder's `max_message`, possible only with long identity strings, goes alone in a message).
pub const MAX_STRING: usize = 255;
/// The smallest `max_message` the encoder accepts (every record and template fits).
pub const MIN_MESSAGE: usize = 1200;
/// The largest IPFIX message (its length field is 16 bits).
pub const MAX_MESSAGE: usize = 65535;
/// PEN 32473 is reserved for documentation and examples (RFC 5612). flowlens has no registered
/// PEN of its own; this is the default of `--ipfix-enterprise-number` until it has one.
pub const DEFAULT_ENTERPRISE_NUMBER: u32 = 32473;

/// An IANA information element of a data template: (id, length).
type Element = (u16, u16);

/// IANA elements of the IPv4 data template, in record order (see `docs/IPFIX.md`).
pub const IANA_V4: &[Element] = &[
    (152, 8), // flowStartMilliseconds
    (153, 8), // flowEndMilliseconds
    (1, 8),   // octetDeltaCount
    (2, 8),   // packetDeltaCount
    (8, 4),   // sourceIPv4Address
    (12, 4),  // destinationIPv4Address
    (7, 2),   // sourceTransportPort
    (11, 2),  // destinationTransportPort
    (4, 1),   // protocolIdentifier
    (6, 2),   // tcpControlBits
    (5, 1),   // ipClassOfService
    (32, 2),  // icmpTypeCodeIPv4
    (58, 2),  // vlanId
    (10, 4),  // ingressInterface
    (14, 4),  // egressInterface
    (61, 1),  // flowDirection
    (136, 1), // flowEndReason
    (60, 1),  // ipVersion
];

/// IANA elements of the IPv6 data template: as IPv4 with the IPv6 address and ICMP elements.
pub const IANA_V6: &[Element] = &[
    (152, 8),
    (153, 8),
    (1, 8),
    (2, 8),
    (27, 16), // sourceIPv6Address
    (28, 16), // destinationIPv6Address
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 2),
    (5, 1),
    (139, 2), // icmpTypeCodeIPv6
    (58, 2),
    (10, 4),
    (14, 4),
    (61, 1),
    (136, 1),
    (60, 1),
];

/// The abstract data type of an enterprise-specific element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// string, variable length.
    Str,
    /// unsigned32.
    U32,
}

/// The value of an enterprise-specific element.
pub enum Value<'a> {
    /// UTF-8 string, variable length (empty when the column is null).
    Str(&'a str),
    /// unsigned32 (0 when the column is null).
    U32(u32),
}

/// One enterprise-specific element: a flowlens column under the enterprise number.
/// Adding a column is one line in [`ENTERPRISE_FIELDS`].
pub struct EnterpriseField {
    /// Element id under the enterprise number (15 bits; the template sets the top bit).
    pub id: u16,
    /// The column it carries (docs/SCHEMA.md).
    pub column: &'static str,
    pub kind: Kind,
    pub get: for<'a> fn(&'a FlowRecord) -> Value<'a>,
}

impl EnterpriseField {
    fn template_len(&self) -> u16 {
        match self.kind {
            Kind::Str => VARLEN,
            Kind::U32 => 4,
        }
    }
}

/// flowlens-specific elements (enterprise number from `--ipfix-enterprise-number`), listed in
/// `docs/IPFIX.md`.
pub const ENTERPRISE_FIELDS: &[EnterpriseField] = &[
    EnterpriseField {
        id: 1,
        column: "community_id",
        kind: Kind::Str,
        get: |r| Value::Str(&r.community_id),
    },
    EnterpriseField {
        id: 2,
        column: "observation_point",
        kind: Kind::Str,
        get: |r| Value::Str(observation_point_name(r.key.observation_point)),
    },
    EnterpriseField {
        id: 3,
        column: "interface_name",
        kind: Kind::Str,
        get: |r| Value::Str(&r.interface_name),
    },
    EnterpriseField {
        id: 4,
        column: "host",
        kind: Kind::Str,
        get: |r| Value::Str(&r.host),
    },
    // Identity of each local end (docs/IDENTITY.md); null is sent as "" or 0.
    EnterpriseField {
        id: 10,
        column: "source_cgroup",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.source.cgroup.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 11,
        column: "source_container_id",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.source.container_id.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 12,
        column: "source_k8s_pod_uid",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.source.k8s_pod_uid.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 13,
        column: "source_process_name",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.source.process_name.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 14,
        column: "source_process_pid",
        kind: Kind::U32,
        get: |r| Value::U32(r.ends.source.process_pid.unwrap_or(0)),
    },
    EnterpriseField {
        id: 15,
        column: "source_label",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.source.label.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 20,
        column: "destination_cgroup",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.destination.cgroup.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 21,
        column: "destination_container_id",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.destination.container_id.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 22,
        column: "destination_k8s_pod_uid",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.destination.k8s_pod_uid.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 23,
        column: "destination_process_name",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.destination.process_name.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 24,
        column: "destination_process_pid",
        kind: Kind::U32,
        get: |r| Value::U32(r.ends.destination.process_pid.unwrap_or(0)),
    },
    EnterpriseField {
        id: 25,
        column: "destination_label",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.destination.label.as_deref().unwrap_or("")),
    }, // Kubernetes names of each end (issue 13): 30-36 source, 40-46 destination, in
    // `K8S_END_FIELDS` order; null is sent as "".
    EnterpriseField {
        id: 30,
        column: "source_k8s_namespace",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.source.k8s_namespace.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 31,
        column: "source_k8s_pod_name",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.source.k8s_pod_name.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 32,
        column: "source_k8s_owner_kind",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.source.k8s_owner_kind.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 33,
        column: "source_k8s_owner_name",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.source.k8s_owner_name.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 34,
        column: "source_k8s_node_name",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.source.k8s_node_name.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 35,
        column: "source_k8s_service_name",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.source.k8s_service_name.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 36,
        column: "source_zone",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.source.zone.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 40,
        column: "destination_k8s_namespace",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.destination.k8s_namespace.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 41,
        column: "destination_k8s_pod_name",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.destination.k8s_pod_name.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 42,
        column: "destination_k8s_owner_kind",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.destination.k8s_owner_kind.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 43,
        column: "destination_k8s_owner_name",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.destination.k8s_owner_name.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 44,
        column: "destination_k8s_node_name",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.destination.k8s_node_name.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 45,
        column: "destination_k8s_service_name",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.destination.k8s_service_name.as_deref().unwrap_or("")),
    },
    EnterpriseField {
        id: 46,
        column: "destination_zone",
        kind: Kind::Str,
        get: |r| Value::Str(r.ends.destination.zone.as_deref().unwrap_or("")),
    },
];

/// Elements of the sampling options record after its scope (observationDomainId(149), 4):
/// (id, length, value). Every value says "every packet is counted" (1:1).
const SAMPLING: &[(u16, u16, u32)] = &[
    (34, 4, 1),  // samplingInterval: 1 (every packet)
    (35, 1, 1),  // samplingAlgorithm: 1 = deterministic
    (49, 1, 1),  // samplerMode: 1 = deterministic
    (50, 4, 1),  // samplerRandomInterval: 1
    (305, 4, 1), // samplingPacketInterval: select 1 packet ...
    (306, 4, 0), // samplingPacketSpace: ... and skip none
];

/// IPFIX flowEndReason (IANA registry): 1 idle, 2 active, 3 end of flow, 4 forced, 5 lack of
/// resources.
pub fn end_reason_code(r: EndReason) -> u8 {
    match r {
        EndReason::IdleTimeout => 1,
        EndReason::ActiveTimeout => 2,
        EndReason::EndOfFlow => 3,
        EndReason::ForcedEnd => 4,
        EndReason::LackOfResources => 5,
    }
}

/// flowDirection: 0 ingress, 1 egress (`direction` column).
pub fn flow_direction(obs: u8) -> u8 {
    matches!(obs, OBS_NF_LOCAL_OUT | OBS_NF_POST_ROUTING) as u8
}

/// Cuts `s` to at most [`MAX_STRING`] bytes at a character boundary.
fn cut(s: &str) -> &[u8] {
    if s.len() <= MAX_STRING {
        return s.as_bytes();
    }
    let mut n = MAX_STRING;
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s.as_bytes()[..n]
}

/// Encoder settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderConfig {
    pub domain_id: u32,
    /// Largest message in bytes ([`MIN_MESSAGE`]..=[`MAX_MESSAGE`]).
    pub max_message: usize,
    /// `Some(PEN)`: flowlens-specific elements under this enterprise number; `None`: IANA only.
    pub enterprise: Option<u32>,
}

/// Builds IPFIX messages for one transport session (see the module documentation).
pub struct Encoder {
    cfg: EncoderConfig,
    /// Data records sent so far (the next message's sequence number), modulo 2^32.
    seq: u32,
    /// Interface names already announced, by index.
    interfaces: BTreeMap<u32, Arc<str>>,
    /// Finished messages and the flow records in each.
    out: Vec<(Vec<u8>, u64)>,
    cur: Vec<u8>,
    cur_flows: u64,
    /// Offset of the open set's header in `cur` and its id (0: no open set).
    set_at: usize,
    set_id: u16,
    export_time: u32,
}

impl Encoder {
    pub fn new(cfg: EncoderConfig) -> Self {
        let max = cfg.max_message.clamp(MIN_MESSAGE, MAX_MESSAGE);
        Encoder {
            cfg: EncoderConfig {
                max_message: max,
                ..cfg
            },
            seq: 0,
            interfaces: BTreeMap::new(),
            out: Vec::new(),
            cur: Vec::with_capacity(max),
            cur_flows: 0,
            set_at: 0,
            set_id: 0,
            export_time: 0,
        }
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// Data records encoded so far (modulo 2^32): the next message's sequence number.
    pub fn sequence(&self) -> u32 {
        self.seq
    }

    /// Takes the finished messages.
    pub fn take(&mut self) -> Vec<Vec<u8>> {
        self.take_counted().into_iter().map(|(m, _)| m).collect()
    }

    /// Takes the finished messages, each with the number of flow records in it.
    pub fn take_counted(&mut self) -> Vec<(Vec<u8>, u64)> {
        self.finish();
        std::mem::take(&mut self.out)
    }

    /// Templates, options templates, the sampling record and every known interface name: what a
    /// collector needs before data (sent first on a session and with every refresh).
    pub fn templates(&mut self, export_time: u32) {
        self.export_time = export_time;
        for (id, iana) in [(TEMPLATE_V4, IANA_V4), (TEMPLATE_V6, IANA_V6)] {
            let mut t = Vec::with_capacity(128);
            let n_ent = if self.cfg.enterprise.is_some() {
                ENTERPRISE_FIELDS.len()
            } else {
                0
            };
            put16(&mut t, id);
            put16(&mut t, (iana.len() + n_ent) as u16);
            for &(e, l) in iana {
                put16(&mut t, e);
                put16(&mut t, l);
            }
            if let Some(pen) = self.cfg.enterprise {
                for f in ENTERPRISE_FIELDS {
                    put16(&mut t, 0x8000 | f.id);
                    put16(&mut t, f.template_len());
                    put32(&mut t, pen);
                }
            }
            self.record(SET_TEMPLATE, &t, false);
        }
        // Options templates: id, field count, scope field count, scope fields, fields.
        let mut t = Vec::with_capacity(64);
        put16(&mut t, TEMPLATE_SAMPLING);
        put16(&mut t, 1 + SAMPLING.len() as u16);
        put16(&mut t, 1);
        put16(&mut t, 149); // observationDomainId
        put16(&mut t, 4);
        for &(e, l, _) in SAMPLING {
            put16(&mut t, e);
            put16(&mut t, l);
        }
        self.record(SET_OPTIONS_TEMPLATE, &t, false);
        t.clear();
        put16(&mut t, TEMPLATE_INTERFACE);
        put16(&mut t, 2);
        put16(&mut t, 1);
        put16(&mut t, 10); // ingressInterface (scope)
        put16(&mut t, 4);
        put16(&mut t, 82); // interfaceName
        put16(&mut t, VARLEN);
        self.record(SET_OPTIONS_TEMPLATE, &t, false);

        t.clear();
        put32(&mut t, self.cfg.domain_id);
        for &(_, l, v) in SAMPLING {
            match l {
                1 => t.push(v as u8),
                _ => put32(&mut t, v),
            }
        }
        self.record(TEMPLATE_SAMPLING, &t, true);
        let known: Vec<(u32, Arc<str>)> = self
            .interfaces
            .iter()
            .map(|(i, n)| (*i, n.clone()))
            .collect();
        for (index, name) in known {
            self.interface_record(index, &name);
        }
        self.finish();
    }

    fn interface_record(&mut self, index: u32, name: &str) {
        let mut t = Vec::with_capacity(24);
        put32(&mut t, index);
        put_str(&mut t, name);
        self.record(TEMPLATE_INTERFACE, &t, true);
    }

    /// Encodes flow records (after an interface-name record for each interface index not
    /// announced yet, or whose name changed).
    pub fn records(&mut self, records: &[FlowRecord], export_time: u32) {
        self.export_time = export_time;
        for r in records {
            let name = &r.interface_name;
            if name.is_empty() {
                continue;
            }
            let i = r.key.ifindex;
            if self.interfaces.get(&i).is_none_or(|n| n != name) {
                self.interfaces.insert(i, name.clone());
                self.interface_record(i, name);
            }
        }
        let mut rec = Vec::with_capacity(256);
        for r in records {
            rec.clear();
            let set = self.encode_record(r, &mut rec);
            self.record(set, &rec, true);
        }
        self.finish();
    }

    /// One data record of `r` into `out`; returns its template id.
    pub fn encode_record(&self, r: &FlowRecord, out: &mut Vec<u8>) -> u16 {
        let k = &r.key;
        let v4 = k.ip_version == 4;
        put64(out, (r.flow_start_us.max(0) / 1000) as u64);
        put64(out, (r.flow_end_us.max(0) / 1000) as u64);
        put64(out, r.bytes);
        put64(out, r.packets);
        if v4 {
            out.extend_from_slice(&k.src_addr[12..]);
            out.extend_from_slice(&k.dst_addr[12..]);
        } else {
            out.extend_from_slice(&k.src_addr);
            out.extend_from_slice(&k.dst_addr);
        }
        put16(out, k.src_port);
        put16(out, k.dst_port);
        out.push(k.protocol);
        put16(out, r.tcp_flags);
        // ipClassOfService is the whole TOS/traffic class byte; the record keeps the DSCP.
        out.push(r.dscp << 2);
        put16(out, (k.icmp_type as u16) << 8 | k.icmp_code as u16);
        put16(out, r.vlan_id().unwrap_or(0));
        let egress = flow_direction(k.observation_point);
        let (ingress_if, egress_if) = if egress == 1 {
            (0, k.ifindex)
        } else {
            (k.ifindex, 0)
        };
        put32(out, ingress_if);
        put32(out, egress_if);
        out.push(egress);
        out.push(end_reason_code(r.end_reason));
        out.push(k.ip_version);
        if self.cfg.enterprise.is_some() {
            for f in ENTERPRISE_FIELDS {
                // The value's type is the declared kind (a mismatch would corrupt the record).
                match ((f.get)(r), f.kind) {
                    (Value::Str(s), Kind::Str) => put_str(out, s),
                    (Value::U32(v), Kind::U32) => put32(out, v),
                    (_, Kind::Str) => put_str(out, ""),
                    (_, Kind::U32) => put32(out, 0),
                }
            }
        }
        if v4 { TEMPLATE_V4 } else { TEMPLATE_V6 }
    }

    /// Appends one record to set `set` of the current message, starting a new message or set
    /// as needed. `data`: a Data Record (counts in the sequence number).
    fn record(&mut self, set: u16, rec: &[u8], data: bool) {
        let need = rec.len()
            + if self.set_id == set {
                0
            } else {
                SET_HEADER_LEN
            };
        if !self.cur.is_empty() && self.cur.len() + need > self.cfg.max_message {
            self.finish();
        }
        if self.cur.is_empty() {
            // Header: version, length (set at finish), export time, sequence, domain.
            put16(&mut self.cur, VERSION);
            put16(&mut self.cur, 0);
            put32(&mut self.cur, self.export_time);
            put32(&mut self.cur, self.seq);
            put32(&mut self.cur, self.cfg.domain_id);
        }
        if self.set_id != set {
            self.close_set();
            self.set_at = self.cur.len();
            self.set_id = set;
            put16(&mut self.cur, set);
            put16(&mut self.cur, 0);
        }
        self.cur.extend_from_slice(rec);
        if set == TEMPLATE_V4 || set == TEMPLATE_V6 {
            self.cur_flows += 1;
        }
        if data {
            self.seq = self.seq.wrapping_add(1);
        }
    }

    fn close_set(&mut self) {
        if self.set_id != 0 {
            let len = (self.cur.len() - self.set_at) as u16;
            self.cur[self.set_at + 2..self.set_at + 4].copy_from_slice(&len.to_be_bytes());
            self.set_id = 0;
        }
    }

    fn finish(&mut self) {
        if self.cur.is_empty() {
            return;
        }
        self.close_set();
        let len = self.cur.len() as u16;
        self.cur[2..4].copy_from_slice(&len.to_be_bytes());
        let next = Vec::with_capacity(self.cfg.max_message);
        let m = std::mem::replace(&mut self.cur, next);
        self.out.push((m, std::mem::take(&mut self.cur_flows)));
    }
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_be_bytes());
}
/// A variable-length string in the one-byte length form (RFC 7011 §7; cut to 255 bytes).
fn put_str(b: &mut Vec<u8>, s: &str) {
    let s = cut(s);
    b.push(s.len() as u8);
    b.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlens_schema::flow::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, OBS_XDP};

    fn rec(v4: bool) -> FlowRecord {
        let mut key = FlowKey::ZERO;
        if v4 {
            key.ip_version = 4;
            key.src_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
            key.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
        } else {
            key.ip_version = 6;
            key.src_addr = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            key.dst_addr = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        }
        key.protocol = IPPROTO_TCP;
        key.src_port = 40000;
        key.dst_port = 443;
        key.observation_point = OBS_XDP;
        key.ifindex = 7;
        FlowRecord {
            flow_start_us: 1_700_000_000_123_456,
            flow_end_us: 1_700_000_001_999_999,
            key,
            interface_name: "eth0".into(),
            packets: 3,
            bytes: 180,
            tcp_flags: 0x12,
            dscp: 46,
            end_reason: EndReason::EndOfFlow,
            host: "h".into(),
            community_id: "1:x".into(),
            ends: Default::default(),
        }
    }

    fn enc(enterprise: Option<u32>, max: usize) -> Encoder {
        Encoder::new(EncoderConfig {
            domain_id: 0x01020304,
            max_message: max,
            enterprise,
        })
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// One IPv4 record, IANA elements only: the message is byte for byte RFC 7011's layout
    /// (header §3.1, set header §3.3.2, fields in template order, network byte order).
    #[test]
    fn ipv4_data_message_is_byte_exact() {
        let mut e = enc(None, 1400);
        e.records(&[rec(true)], 0x65000000);
        let m = e.take();
        // The interface-name options record comes first, in its own set.
        let want = hex("000a 0060 65000000 00000000 01020304
             0103 000d 00000007 04 65746830
             0100 0043
             0000018bcfe5687b 0000018bcfe56fcf
             00000000000000b4 0000000000000003
             0a000001 0a000002 9c40 01bb 06 0012 b8 0000 0000
             00000007 00000000 00 03 04");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0], want, "\n{:02x?}\n{:02x?}", m[0], want);
        // Set lengths: options set 4 + 4 + 1 + 4 = 13, data set 4 + 63 = 67 (no padding).
        assert_eq!(m[0].len(), 16 + 13 + 67);
        // Sequence numbers count data records: the options record and the flow record.
        assert_eq!(e.sequence(), 2);
    }

    /// The template set: header, then template 256 with its field specifiers and template 257;
    /// enterprise elements carry the top bit and the PEN.
    #[test]
    fn templates_are_byte_exact() {
        let mut e = enc(Some(32473), 1400);
        e.templates(7);
        let m = e.take();
        assert_eq!(m.len(), 1);
        let m = &m[0];
        let header = [
            hex("000a"),
            (m.len() as u16).to_be_bytes().to_vec(),
            hex("00000007 00000000 01020304"),
        ]
        .concat();
        assert_eq!(&m[..16], &header[..]);
        let n4 = IANA_V4.len() + ENTERPRISE_FIELDS.len();
        let t4 = 4 + 4 * IANA_V4.len() + 8 * ENTERPRISE_FIELDS.len();
        let t6 = 4 + 4 * IANA_V6.len() + 8 * ENTERPRISE_FIELDS.len();
        // Template set: id 2, length.
        assert_eq!(&m[16..18], &[0, 2]);
        assert_eq!(u16::from_be_bytes([m[18], m[19]]) as usize, 4 + t4 + t6);
        assert_eq!(&m[20..24], &[1, 0, 0, n4 as u8]);
        assert_eq!(&m[24..28], &hex("0098 0008")[..]); // flowStartMilliseconds, 8
        let ent = 24 + 4 * IANA_V4.len();
        assert_eq!(&m[ent..ent + 8], &hex("8001 ffff 00007ed9")[..]);
        let o = 20 + t4;
        assert_eq!(&m[o..o + 4], &[1, 1, 0, n4 as u8]);
        assert_eq!(&m[o + 4 + 16..o + 4 + 24], &hex("001b 0010 001c 0010")[..]);
        // Options template set: 258 (scope observationDomainId) and 259 (scope
        // ingressInterface, interfaceName variable length).
        let o = 16 + 4 + t4 + t6;
        let ot_len = 4 + (6 + 4 + 4 * SAMPLING.len()) + 14;
        let want = [
            hex("0003"),
            (ot_len as u16).to_be_bytes().to_vec(),
            hex("0102 0007 0001 0095 0004 0022 0004 0023 0001 0031 0001 0032 0004 0131 0004 0132 0004"),
            hex("0103 0002 0001 000a 0004 0052 ffff"),
        ]
        .concat();
        assert_eq!(&m[o..o + ot_len], &want[..]);
        // Sampling record: 1:1 in every form.
        let o = o + ot_len;
        assert_eq!(
            &m[o..],
            &hex("0102 001a 01020304 00000001 01 01 00000001 00000001 00000000")[..]
        );
        assert_eq!(e.sequence(), 1, "the sampling record is a data record");
    }

    /// Enterprise fields are appended as variable-length strings.
    #[test]
    fn enterprise_fields_follow_the_iana_elements() {
        let e = enc(Some(1), 1400);
        let mut with = Vec::new();
        e.encode_record(&rec(false), &mut with);
        let mut without = Vec::new();
        enc(None, 1400).encode_record(&rec(false), &mut without);
        assert_eq!(without.len(), 87);
        assert_eq!(&with[..without.len()], &without[..]);
        assert_eq!(
            &with[without.len()..],
            &[
                &[3u8][..],
                b"1:x",
                &[3],
                b"xdp",
                &[4],
                b"eth0",
                &[1],
                b"h",
                // Identity of both ends, all null: four empty strings, pid 0, empty label.
                &[0, 0, 0, 0, 0, 0, 0, 0, 0],
                &[0, 0, 0, 0, 0, 0, 0, 0, 0],
                // Kubernetes names of both ends, all null: 14 empty strings.
                &[0; 14],
            ]
            .concat()[..]
        );
        // Long strings are cut at a character boundary to 255 bytes.
        let mut r = rec(true);
        r.host = "é".repeat(200).into();
        let mut b = Vec::new();
        e.encode_record(&r, &mut b);
        // (followed by the 18 bytes of the two null identities and 14 of null Kubernetes names)
        assert_eq!(b[b.len() - 18 - 14 - 255], 254);
    }

    /// Messages never exceed the limit; records are never split; sequence numbers in the
    /// headers count the data records before each message.
    #[test]
    fn splits_at_the_message_limit_with_sequence_numbers() {
        let mut e = enc(Some(32473), MIN_MESSAGE);
        e.templates(1);
        let mut records = Vec::new();
        for i in 0..100u16 {
            let mut r = rec(i % 3 != 0);
            r.key.src_port = i;
            r.key.protocol = IPPROTO_UDP;
            records.push(r);
        }
        e.records(&records, 2);
        let msgs = e.take();
        assert!(msgs.len() > 5, "{}", msgs.len());
        let mut expect_seq = 0u32;
        let mut ports = Vec::new();
        for m in &msgs {
            assert!(m.len() <= MIN_MESSAGE, "{}", m.len());
            assert_eq!(u16::from_be_bytes([m[2], m[3]]) as usize, m.len());
            assert_eq!(u32::from_be_bytes([m[8], m[9], m[10], m[11]]), expect_seq);
            // Walk the sets; count data records.
            let mut o = HEADER_LEN;
            while o < m.len() {
                let id = u16::from_be_bytes([m[o], m[o + 1]]);
                let len = u16::from_be_bytes([m[o + 2], m[o + 3]]) as usize;
                assert!(len >= 4 && o + len <= m.len());
                let mut p = o + 4;
                while p < o + len {
                    let rl = match id {
                        TEMPLATE_V4 | TEMPLATE_V6 => {
                            let fixed = if id == TEMPLATE_V4 { 63 } else { 87 };
                            let mut q = p + fixed;
                            for f in ENTERPRISE_FIELDS {
                                q += match f.kind {
                                    Kind::Str => 1 + m[q] as usize,
                                    Kind::U32 => 4,
                                };
                            }
                            let at = p + 32 + if id == TEMPLATE_V4 { 8 } else { 32 };
                            ports.push(u16::from_be_bytes([m[at], m[at + 1]]));
                            q - p
                        }
                        TEMPLATE_SAMPLING => 4 + 4 + 1 + 1 + 12,
                        TEMPLATE_INTERFACE => 4 + 1 + m[p + 4] as usize,
                        _ => {
                            p = o + len;
                            continue;
                        }
                    };
                    p += rl;
                    expect_seq += 1;
                }
                assert_eq!(p, o + len, "records fill their set exactly");
                o += len;
            }
        }
        assert_eq!(ports, (0..100).collect::<Vec<u16>>());
        // 100 flow records + the sampling record (the interface was new: one more).
        assert_eq!(expect_seq, 102);
        assert_eq!(e.sequence(), 102);
    }

    /// Every enterprise field's value has its declared type, and ids are unique.
    #[test]
    fn enterprise_table_is_consistent() {
        let r = rec(true);
        let mut ids = std::collections::BTreeSet::new();
        for f in ENTERPRISE_FIELDS {
            assert!(ids.insert(f.id), "duplicate id {}", f.id);
            assert!(f.id < 0x8000);
            let ok = matches!(
                ((f.get)(&r), f.kind),
                (Value::Str(_), Kind::Str) | (Value::U32(_), Kind::U32)
            );
            assert!(ok, "{} is not of its declared kind", f.column);
        }
    }

    #[test]
    fn end_reasons_and_directions_map_to_iana_codes() {
        assert_eq!(end_reason_code(EndReason::IdleTimeout), 1);
        assert_eq!(end_reason_code(EndReason::ActiveTimeout), 2);
        assert_eq!(end_reason_code(EndReason::EndOfFlow), 3);
        assert_eq!(end_reason_code(EndReason::ForcedEnd), 4);
        assert_eq!(end_reason_code(EndReason::LackOfResources), 5);
        assert_eq!(flow_direction(OBS_XDP), 0);
        assert_eq!(flow_direction(OBS_NF_LOCAL_OUT), 1);
        assert_eq!(flow_direction(OBS_NF_POST_ROUTING), 1);
    }
}
