//! The spool's record encoding: fixed-width little-endian fields, then three length-prefixed
//! strings. Hand-written (no serde format crate): about 130 bytes per record, one copy.
//!
//! ```text
//! flow_start_us i64 | flow_end_us i64 | src_addr [16] | dst_addr [16] | src_port u16 |
//! dst_port u16 | vlan_id u16 | ip_version u8 | protocol u8 | icmp_type u8 | icmp_code u8 |
//! observation_point u8 | ifindex u32 | packets u64 | bytes u64 | tcp_flags u16 | dscp u8 |
//! end_reason u8 | interface_name (u16 len, UTF-8) | host (u16 len, UTF-8) | community_id (same)
//! [ identity: present u16 (bit i = field i of source then destination, `END_FIELDS` order;
//!   bit 15 = Kubernetes names follow) |
//!   each present field: strings (u16 len, UTF-8), process_pid u32 |
//!   [ k8s: present u16 (bit i = field i of source then destination, `K8S_END_FIELDS` order) |
//!     each present field: string (u16 len, UTF-8) ] ]
//! ```
//!
//! The identity part (issue 12) is absent when every identity field is null, and the Kubernetes
//! part (issue 13) when every name is null (bit 15 clear), so records spooled by an older
//! flowlens decode unchanged (`records_spooled_before_kubernetes_names_still_decode` keeps one
//! such record as bytes), and a record without Kubernetes names is encoded as before.

use std::sync::Arc;

use flowlens_schema::{
    flow::FlowKey,
    record::{EndIdentity, EndReason, Ends, FlowRecord},
};

const FIXED: usize = 8 + 8 + 16 + 16 + 2 + 2 + 2 + 1 + 1 + 1 + 1 + 1 + 4 + 8 + 8 + 2 + 1 + 1;

fn reason_code(r: EndReason) -> u8 {
    match r {
        EndReason::IdleTimeout => 1,
        EndReason::ActiveTimeout => 2,
        EndReason::EndOfFlow => 3,
        EndReason::ForcedEnd => 4,
        EndReason::LackOfResources => 5,
    }
}

fn reason_of(c: u8) -> Option<EndReason> {
    Some(match c {
        1 => EndReason::IdleTimeout,
        2 => EndReason::ActiveTimeout,
        3 => EndReason::EndOfFlow,
        4 => EndReason::ForcedEnd,
        5 => EndReason::LackOfResources,
        _ => return None,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names and Community IDs are short; a longer string is cut at a char boundary.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Appends the encoding of `r` to `out`.
pub fn encode(r: &FlowRecord, out: &mut Vec<u8>) {
    let k = &r.key;
    out.reserve(FIXED + 6 + r.interface_name.len() + r.host.len() + r.community_id.len());
    out.extend_from_slice(&r.flow_start_us.to_le_bytes());
    out.extend_from_slice(&r.flow_end_us.to_le_bytes());
    out.extend_from_slice(&k.src_addr);
    out.extend_from_slice(&k.dst_addr);
    out.extend_from_slice(&k.src_port.to_le_bytes());
    out.extend_from_slice(&k.dst_port.to_le_bytes());
    out.extend_from_slice(&k.vlan_id.to_le_bytes());
    out.extend_from_slice(&[
        k.ip_version,
        k.protocol,
        k.icmp_type,
        k.icmp_code,
        k.observation_point,
    ]);
    out.extend_from_slice(&k.ifindex.to_le_bytes());
    out.extend_from_slice(&r.packets.to_le_bytes());
    out.extend_from_slice(&r.bytes.to_le_bytes());
    out.extend_from_slice(&r.tcp_flags.to_le_bytes());
    out.extend_from_slice(&[r.dscp, reason_code(r.end_reason)]);
    put_str(out, &r.interface_name);
    put_str(out, &r.host);
    put_str(out, &r.community_id);
    put_ends(out, &r.ends);
}

fn put_ends(out: &mut Vec<u8>, ends: &Ends) {
    if ends.source.is_empty() && ends.destination.is_empty() {
        return;
    }
    let mut mask = 0u16;
    for (i, e) in [&ends.source, &ends.destination].into_iter().enumerate() {
        let present = [
            e.cgroup.is_some(),
            e.container_id.is_some(),
            e.k8s_pod_uid.is_some(),
            e.process_name.is_some(),
            e.process_pid.is_some(),
            e.label.is_some(),
        ];
        for (j, p) in present.into_iter().enumerate() {
            if p {
                mask |= 1 << (6 * i + j);
            }
        }
    }
    let mut k8s = 0u16;
    for (i, e) in [&ends.source, &ends.destination].into_iter().enumerate() {
        for (j, v) in e.k8s_fields().into_iter().enumerate() {
            if v.is_some() {
                k8s |= 1 << (7 * i + j);
            }
        }
    }
    if k8s != 0 {
        mask |= K8S_FOLLOW;
    }
    out.extend_from_slice(&mask.to_le_bytes());
    for e in [&ends.source, &ends.destination] {
        for s in [&e.cgroup, &e.container_id, &e.k8s_pod_uid, &e.process_name]
            .into_iter()
            .flatten()
        {
            put_str(out, s);
        }
        if let Some(pid) = e.process_pid {
            out.extend_from_slice(&pid.to_le_bytes());
        }
        if let Some(l) = &e.label {
            put_str(out, l);
        }
    }
    if k8s != 0 {
        out.extend_from_slice(&k8s.to_le_bytes());
        for e in [&ends.source, &ends.destination] {
            for s in e.k8s_fields().into_iter().flatten() {
                put_str(out, s);
            }
        }
    }
}

/// Bit of the identity mask saying a Kubernetes names part follows (issue 13).
const K8S_FOLLOW: u16 = 1 << 15;

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let (h, t) = self.0.split_at_checked(N).ok_or("record too short")?;
        self.0 = t;
        h.try_into().map_err(|_| "record too short")
    }
    fn ends(&mut self) -> Result<Ends, &'static str> {
        let mask = u16::from_le_bytes(self.take()?);
        if (mask & !K8S_FOLLOW) >> 12 != 0 {
            return Err("unknown identity fields");
        }
        let mut ends = [EndIdentity::default(), EndIdentity::default()];
        for (i, e) in ends.iter_mut().enumerate() {
            let has = |j: usize| mask & (1 << (6 * i + j)) != 0;
            let text = |c: &mut Self, j: usize| -> Result<Option<Arc<str>>, &'static str> {
                Ok(if has(j) { Some(c.str()?.into()) } else { None })
            };
            e.cgroup = text(self, 0)?;
            e.container_id = text(self, 1)?;
            e.k8s_pod_uid = text(self, 2)?;
            e.process_name = text(self, 3)?;
            if has(4) {
                e.process_pid = Some(u32::from_le_bytes(self.take()?));
            }
            e.label = text(self, 5)?;
        }
        if mask & K8S_FOLLOW != 0 {
            let k8s = u16::from_le_bytes(self.take()?);
            if k8s >> 14 != 0 || k8s == 0 {
                return Err("unknown Kubernetes name fields");
            }
            for (i, e) in ends.iter_mut().enumerate() {
                for (j, v) in e.k8s_fields_mut().into_iter().enumerate() {
                    if k8s & (1 << (7 * i + j)) != 0 {
                        *v = Some(self.str()?.into());
                    }
                }
            }
        }
        let [source, destination] = ends;
        Ok(Ends {
            source,
            destination,
        })
    }
    fn str(&mut self) -> Result<&'a str, &'static str> {
        let n = u16::from_le_bytes(self.take()?) as usize;
        let (h, t) = self.0.split_at_checked(n).ok_or("record too short")?;
        self.0 = t;
        std::str::from_utf8(h).map_err(|_| "string not UTF-8")
    }
}

/// Decodes records, sharing one allocation per distinct interface and host name (as the
/// exporter does).
#[derive(Default)]
pub struct Decoder {
    iface: Option<Arc<str>>,
    host: Option<Arc<str>>,
}

fn intern(slot: &mut Option<Arc<str>>, s: &str) -> Arc<str> {
    match slot {
        Some(a) if &**a == s => a.clone(),
        _ => {
            let a: Arc<str> = s.into();
            *slot = Some(a.clone());
            a
        }
    }
}

impl Decoder {
    pub fn decode(&mut self, b: &[u8]) -> Result<FlowRecord, &'static str> {
        let mut c = Cursor(b);
        let flow_start_us = i64::from_le_bytes(c.take()?);
        let flow_end_us = i64::from_le_bytes(c.take()?);
        let mut key = FlowKey::ZERO;
        key.src_addr = c.take()?;
        key.dst_addr = c.take()?;
        key.src_port = u16::from_le_bytes(c.take()?);
        key.dst_port = u16::from_le_bytes(c.take()?);
        key.vlan_id = u16::from_le_bytes(c.take()?);
        let [v, p, t, code, obs] = c.take()?;
        (key.ip_version, key.protocol, key.icmp_type, key.icmp_code) = (v, p, t, code);
        key.observation_point = obs;
        key.ifindex = u32::from_le_bytes(c.take()?);
        let packets = u64::from_le_bytes(c.take()?);
        let bytes = u64::from_le_bytes(c.take()?);
        let tcp_flags = u16::from_le_bytes(c.take()?);
        let [dscp, reason] = c.take()?;
        let end_reason = reason_of(reason).ok_or("unknown end reason")?;
        let interface_name = intern(&mut self.iface, c.str()?);
        let host = intern(&mut self.host, c.str()?);
        let community_id = c.str()?.to_string();
        let ends = if c.0.is_empty() {
            Ends::default()
        } else {
            c.ends()?
        };
        if !c.0.is_empty() {
            return Err("trailing bytes after the record");
        }
        Ok(FlowRecord {
            flow_start_us,
            flow_end_us,
            key,
            interface_name,
            packets,
            bytes,
            tcp_flags,
            dscp,
            end_reason,
            host,
            community_id,
            ends,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        let mut key = FlowKey::ZERO;
        key.src_addr = [1; 16];
        key.dst_addr[15] = 9;
        key.src_port = 40_000;
        key.dst_port = 443;
        key.vlan_id = 100;
        key.ip_version = 6;
        key.protocol = 58;
        key.icmp_type = 128;
        key.icmp_code = 3;
        key.observation_point = 4;
        key.ifindex = 7;
        for reason in [
            EndReason::IdleTimeout,
            EndReason::ActiveTimeout,
            EndReason::EndOfFlow,
            EndReason::ForcedEnd,
            EndReason::LackOfResources,
        ] {
            let r = FlowRecord {
                flow_start_us: -5,
                flow_end_us: i64::MAX,
                key,
                interface_name: "veth-é".into(),
                packets: u64::MAX,
                bytes: 1 << 40,
                tcp_flags: 0x1ff,
                dscp: 46,
                end_reason: reason,
                host: "node-1".into(),
                community_id: "1:abcdefghijklmnopqrstuvwxyz0=".into(),
                ends: Default::default(),
            };
            let mut b = Vec::new();
            encode(&r, &mut b);
            assert_eq!(Decoder::default().decode(&b).unwrap(), r);
            for cut in 0..b.len() {
                assert!(Decoder::default().decode(&b[..cut]).is_err(), "cut {cut}");
            }
        }
    }

    #[test]
    fn round_trips_identity_and_reads_records_without_it() {
        let mut r = Decoder::default()
            .decode(&{
                let mut b = Vec::new();
                let mut key = FlowKey::ZERO;
                key.ip_version = 4;
                encode(
                    &FlowRecord {
                        flow_start_us: 1,
                        flow_end_us: 2,
                        key,
                        interface_name: "eth0".into(),
                        packets: 1,
                        bytes: 60,
                        tcp_flags: 0,
                        dscp: 0,
                        end_reason: EndReason::IdleTimeout,
                        host: "h".into(),
                        community_id: "1:x".into(),
                        ends: Ends::default(),
                    },
                    &mut b,
                );
                b
            })
            .unwrap();
        let plain_len = {
            let mut b = Vec::new();
            encode(&r, &mut b);
            b.len()
        };
        r.ends.source.cgroup = Some("/kubepods.slice/x.scope".into());
        r.ends.source.container_id = Some("ab".repeat(32).into());
        r.ends.source.k8s_pod_uid = Some("0b5a9f6e-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into());
        r.ends.destination.process_name = Some("nginx".into());
        r.ends.destination.process_pid = Some(4242);
        r.ends.destination.label = Some("site-a".into());
        let mut b = Vec::new();
        encode(&r, &mut b);
        assert_eq!(Decoder::default().decode(&b).unwrap(), r);
        // Every Kubernetes name of both ends round-trips, alone and all together.
        for end in 0..2 {
            for j in 0..7 {
                let mut k = r.clone();
                let e = if end == 0 {
                    &mut k.ends.source
                } else {
                    &mut k.ends.destination
                };
                *e.k8s_fields_mut()[j] = Some(format!("name-{end}-{j}").into());
                let mut kb = Vec::new();
                encode(&k, &mut kb);
                assert_eq!(
                    Decoder::default().decode(&kb).unwrap(),
                    k,
                    "end {end} field {j}"
                );
            }
        }
        let mut all = r.clone();
        for (end, e) in [&mut all.ends.source, &mut all.ends.destination]
            .into_iter()
            .enumerate()
        {
            for (j, v) in e.k8s_fields_mut().into_iter().enumerate() {
                *v = Some(format!("ns-é-{end}-{j}").into());
            }
        }
        let mut kb = Vec::new();
        encode(&all, &mut kb);
        assert_eq!(Decoder::default().decode(&kb).unwrap(), all);
        for cut in plain_len + 1..kb.len() {
            assert!(Decoder::default().decode(&kb[..cut]).is_err(), "cut {cut}");
        }
        // Only Kubernetes names (no older identity field): still an identity part.
        let mut only = r.clone();
        only.ends = Ends::default();
        only.ends.destination.zone = Some("eu-west-1b".into());
        let mut ob = Vec::new();
        encode(&only, &mut ob);
        assert_eq!(Decoder::default().decode(&ob).unwrap(), only);
        // A cut inside the identity part fails; a cut right before it is an older record.
        for cut in plain_len + 1..b.len() {
            assert!(Decoder::default().decode(&b[..cut]).is_err(), "cut {cut}");
        }
        let mut old = r.clone();
        old.ends = Ends::default();
        assert_eq!(Decoder::default().decode(&b[..plain_len]).unwrap(), old);
        // Unknown presence bits are refused, not skipped.
        let mut bad = b[..plain_len].to_vec();
        bad.extend_from_slice(&(1u16 << 13).to_le_bytes());
        assert!(Decoder::default().decode(&bad).is_err());
        let mut bad = b[..plain_len].to_vec();
        bad.extend_from_slice(&K8S_FOLLOW.to_le_bytes());
        bad.extend_from_slice(&(1u16 << 14).to_le_bytes());
        assert!(Decoder::default().decode(&bad).is_err());
    }

    /// A record spooled by flowlens before issue 13 (identity mask bits 0-11 only), frozen as
    /// bytes: it still decodes to the same record.
    const SPOOLED_BY_ISSUE_12: &str = concat!(
        "00401e18240a060040822d18240a060000000000000000000000ffff0a00000100000000000000000000ffff0a000002",
        "409cbb01ffff0406000004070000000300000000000000b40000000000000012002e0104006574683006006e6f64652d",
        "310400313a783d050c17002f6b756265706f64732e736c6963652f782e73636f7065240030623561396636652d316332",
        "642d346535662d386139622d306331643265336634613562921000000600736974652d61",
    );

    fn issue_12_record() -> FlowRecord {
        let mut key = FlowKey::ZERO;
        key.ip_version = 4;
        key.src_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        key.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
        key.protocol = 6;
        key.src_port = 40000;
        key.dst_port = 443;
        key.vlan_id = 0xffff;
        key.observation_point = 4;
        key.ifindex = 7;
        let mut r = FlowRecord {
            flow_start_us: 1_700_000_000_000_000,
            flow_end_us: 1_700_000_001_000_000,
            key,
            interface_name: "eth0".into(),
            packets: 3,
            bytes: 180,
            tcp_flags: 0x12,
            dscp: 46,
            end_reason: EndReason::IdleTimeout,
            host: "node-1".into(),
            community_id: "1:x=".into(),
            ends: Ends::default(),
        };
        r.ends.source.cgroup = Some("/kubepods.slice/x.scope".into());
        r.ends.source.k8s_pod_uid = Some("0b5a9f6e-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into());
        r.ends.destination.process_pid = Some(4242);
        r.ends.destination.label = Some("site-a".into());
        r
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn records_spooled_before_kubernetes_names_still_decode() {
        let b = unhex(SPOOLED_BY_ISSUE_12);
        assert_eq!(Decoder::default().decode(&b).unwrap(), issue_12_record());
        // Without Kubernetes names the encoding is unchanged (the previous version reads it).
        let mut again = Vec::new();
        encode(&issue_12_record(), &mut again);
        assert_eq!(again, b);
    }
}
