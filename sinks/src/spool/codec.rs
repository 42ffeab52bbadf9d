//! The spool's record encoding: fixed-width little-endian fields, then three length-prefixed
//! strings. Hand-written (no serde format crate): about 130 bytes per record, one copy.
//!
//! ```text
//! flow_start_us i64 | flow_end_us i64 | src_addr [16] | dst_addr [16] | src_port u16 |
//! dst_port u16 | vlan_id u16 | ip_version u8 | protocol u8 | icmp_type u8 | icmp_code u8 |
//! observation_point u8 | ifindex u32 | packets u64 | bytes u64 | tcp_flags u16 | dscp u8 |
//! end_reason u8 | interface_name (u16 len, UTF-8) | host (u16 len, UTF-8) | community_id (same)
//! ```

use std::sync::Arc;

use flowlens_schema::{
    flow::FlowKey,
    record::{EndReason, FlowRecord},
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
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let (h, t) = self.0.split_at_checked(N).ok_or("record too short")?;
        self.0 = t;
        h.try_into().map_err(|_| "record too short")
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
            };
            let mut b = Vec::new();
            encode(&r, &mut b);
            assert_eq!(Decoder::default().decode(&b).unwrap(), r);
            for cut in 0..b.len() {
                assert!(Decoder::default().decode(&b[..cut]).is_err(), "cut {cut}");
            }
        }
    }
}
