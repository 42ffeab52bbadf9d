//! A second, deliberately plain reading of the parser rules (the list at the top of
//! `abi/src/parse.rs`) and the properties every frame must satisfy.
//!
//! Shared by the property test (`abi/tests/parse_props.rs`), the kernel mutation corpus
//! (`collector/tests/xdp_corpus.rs`) and the optional `cargo fuzz` target (`fuzz/`), each of
//! which includes this file with `#[path]`.
//!
//! [`classify`] is written to be obviously right rather than fast or verifier-friendly: it cuts
//! the frame into sub-slices layer by layer (an IPv4 datagram is `&ip[..total_length]`, each
//! extension header is split off the front of what is left), so "inside the datagram" is a
//! slice bound, not the offset arithmetic `parse.rs` does against a `Packet`. Where these rules
//! differ from etherparse's (third VLAN tag, 0x9100, AH, UDP-Lite, hop-by-hop position, the
//! extension-header bound, non-first fragments), `collector/tests/xdp_test_run.rs` lists them
//! (its `rule: ...` categories).
#![allow(dead_code)]

use flowlens_abi::{
    FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE,
    VLAN_NONE,
    parse::{FlowMeta, MAX_IPV6_EXT_HEADERS, Parsed, parse_ethernet},
};

/// What [`classify`] made of a frame, and where its IP layer starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    pub parsed: Parsed,
    /// Offset of the first byte after the (last) ethertype: the IP header of an IP frame.
    /// `None` when the frame ends before the ethertype chain does.
    pub l3: Option<usize>,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// The reference classifier.
pub fn classify(frame: &[u8]) -> Classified {
    const UNPARSED: Classified = Classified {
        parsed: Parsed::Unparsed,
        l3: None,
    };
    if frame.len() < 14 {
        return UNPARSED;
    }
    // The ethertype field is at 12; each VLAN tag (TPID 0x8100 or 0x88a8, then a TCI) moves the
    // next ethertype 4 bytes further. The outer tag's VID is the flow's; a third tag is refused.
    let mut at = 12;
    let mut tags = 0;
    let mut vlan = VLAN_NONE;
    loop {
        let Some(et) = frame.get(at..at + 2).map(be16) else {
            return UNPARSED;
        };
        if et != 0x8100 && et != 0x88a8 {
            let ip = &frame[at + 2..];
            let parsed = match et {
                0x0800 => ipv4(ip, vlan),
                0x86dd => ipv6(ip, vlan),
                _ => Parsed::NonIp,
            };
            return Classified {
                parsed,
                l3: Some(at + 2),
            };
        }
        tags += 1;
        if tags == 3 {
            return UNPARSED;
        }
        let Some(tci) = frame.get(at + 2..at + 4).map(be16) else {
            return UNPARSED;
        };
        if tags == 1 {
            vlan = tci & 0x0fff;
        }
        at += 4;
    }
}

fn v4_mapped(a: &[u8]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12..].copy_from_slice(a);
    m
}

/// IPv4: the datagram is `ip[..total_length]`, which must lie inside what the frame holds.
pub fn ipv4(ip: &[u8], vlan: u16) -> Parsed {
    let Some(h) = ip.get(..20) else {
        return Parsed::Unparsed;
    };
    let version = h[0] >> 4;
    let header_len = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(be16(&h[2..4]));
    if version != 4 || header_len < 20 || total < header_len || total > ip.len() {
        return Parsed::Unparsed;
    }
    let datagram = &ip[..total];
    let key = FlowKey {
        ip_version: 4,
        vlan_id: vlan,
        protocol: h[9],
        src_addr: v4_mapped(&h[12..16]),
        dst_addr: v4_mapped(&h[16..20]),
        ..FlowKey::ZERO
    };
    let meta = FlowMeta {
        key,
        ip_len: total as u32,
        tcp_flags: 0,
        dscp: h[1] >> 2,
    };
    let fragment_offset = be16(&h[6..8]) & 0x1fff;
    if fragment_offset != 0 {
        return Parsed::Flow(meta);
    }
    transport(&datagram[header_len..], meta, false)
}

/// IPv6: the packet is `ip[..40 + payload_length]`; extension headers are split off its front.
pub fn ipv6(ip: &[u8], vlan: u16) -> Parsed {
    let Some(h) = ip.get(..40) else {
        return Parsed::Unparsed;
    };
    let word = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let total = 40 + usize::from(be16(&h[4..6]));
    if word >> 28 != 6 || total > ip.len() {
        return Parsed::Unparsed;
    }
    let traffic_class = (word >> 20) as u8;
    let mut key = FlowKey {
        ip_version: 6,
        vlan_id: vlan,
        ..FlowKey::ZERO
    };
    key.src_addr.copy_from_slice(&h[8..24]);
    key.dst_addr.copy_from_slice(&h[24..40]);
    let mut meta = FlowMeta {
        key,
        ip_len: total as u32,
        tcp_flags: 0,
        dscp: traffic_class >> 2,
    };
    let mut rest = &ip[40..total];
    let mut next = h[6];
    let mut walked = 0;
    loop {
        match next {
            0 | 43 | 44 | 60 if walked == MAX_IPV6_EXT_HEADERS => return Parsed::Unparsed,
            44 => {
                // Fragment header: 8 bytes; a non-first fragment ends the walk, keyed with its
                // next header and no transport fields.
                let Some(f) = rest.get(..8) else {
                    return Parsed::Unparsed;
                };
                next = f[0];
                let offset = be16(&f[2..4]) >> 3;
                rest = &rest[8..];
                if offset != 0 {
                    meta.key.protocol = next;
                    return Parsed::Flow(meta);
                }
            }
            0 | 43 | 60 => {
                let Some(e) = rest.get(..2) else {
                    return Parsed::Unparsed;
                };
                let len = (usize::from(e[1]) + 1) * 8;
                if len > rest.len() {
                    return Parsed::Unparsed;
                }
                next = e[0];
                rest = &rest[len..];
            }
            _ => break,
        }
        walked += 1;
    }
    meta.key.protocol = next;
    transport(rest, meta, true)
}

/// The transport header at the front of `seg` (the rest of the datagram).
fn transport(seg: &[u8], mut meta: FlowMeta, v6: bool) -> Parsed {
    let proto = meta.key.protocol;
    let need = match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP | IPPROTO_UDPLITE => 8,
        IPPROTO_SCTP => 12,
        IPPROTO_ICMP if !v6 => 8,
        IPPROTO_ICMPV6 if v6 => 8,
        _ => return Parsed::Flow(meta),
    };
    let Some(t) = seg.get(..need) else {
        return Parsed::Unparsed;
    };
    if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 {
        meta.key.icmp_type = t[0];
        meta.key.icmp_code = t[1];
        return Parsed::Flow(meta);
    }
    meta.key.src_port = be16(&t[0..2]);
    meta.key.dst_port = be16(&t[2..4]);
    if proto == IPPROTO_TCP {
        if t[12] >> 4 < 5 {
            return Parsed::Unparsed;
        }
        meta.tcp_flags = u16::from(t[12] & 1) << 8 | u16::from(t[13]);
    }
    Parsed::Flow(meta)
}

/// The IP-layer length the header at `l3` claims (IPv4 total length, IPv6 40 + payload length).
fn claimed_ip_len(frame: &[u8], l3: usize, version: u8) -> Option<u32> {
    let h = frame.get(l3..)?;
    match version {
        4 => h.get(2..4).map(|b| u32::from(be16(b))),
        6 => h.get(4..6).map(|b| 40 + u32::from(be16(b))),
        _ => None,
    }
}

/// Everything that must hold for one frame; returns the parser's verdict, or what broke.
///
/// 1. `parse_ethernet` (the twin the probe runs) equals [`classify`].
/// 2. A keyed frame: `ip_len` is the IP-layer length its header claims and fits in the frame.
/// 3. Every truncation of a keyed frame before the end of its IP datagram (inside the Ethernet
///    header, a VLAN tag, the IP header, the transport header or the payload) is unparsed; every
///    truncation after it (in the Ethernet padding) leaves the verdict unchanged.
/// 4. A non-IP frame stays non-IP whatever its payload is cut to, and is unparsed when cut
///    inside its Ethernet header or VLAN tags.
/// 5. Bytes appended to a keyed or non-IP frame (Ethernet padding) change nothing.
pub fn check(frame: &[u8]) -> Result<Parsed, String> {
    let got = parse_ethernet(frame);
    let want = classify(frame);
    if got != want.parsed {
        return Err(format!(
            "parser says {got:?}, reference says {:?}",
            want.parsed
        ));
    }
    let end = match (got, want.l3) {
        (Parsed::Flow(m), Some(l3)) => {
            let claimed = claimed_ip_len(frame, l3, m.key.ip_version);
            if claimed != Some(m.ip_len) {
                return Err(format!(
                    "ip_len {} but the header at {l3} claims {claimed:?}",
                    m.ip_len
                ));
            }
            let end = l3 + m.ip_len as usize;
            if end > frame.len() {
                return Err(format!(
                    "ip_len {} from offset {l3} overruns the {}-byte frame",
                    m.ip_len,
                    frame.len()
                ));
            }
            end
        }
        (Parsed::NonIp, Some(l3)) => l3,
        (Parsed::Unparsed, _) => return Ok(got),
        (_, None) => return Err(format!("{got:?} without an ethertype")),
    };
    for cut in 0..end {
        let p = parse_ethernet(&frame[..cut]);
        if p != Parsed::Unparsed {
            return Err(format!(
                "{got:?} frame cut to {cut} bytes (IP layer ends at {end}) gives {p:?}"
            ));
        }
    }
    for cut in end..frame.len() {
        let p = parse_ethernet(&frame[..cut]);
        if p != got {
            return Err(format!(
                "{got:?} frame cut to {cut} bytes, after its IP layer (ends at {end}), gives {p:?}"
            ));
        }
    }
    let mut padded = frame.to_vec();
    padded.extend_from_slice(&[0x00, 0xff, 0x45, 0x60, 0x06, 0x11, 0x2c, 0x3c]);
    let p = parse_ethernet(&padded[..]);
    if p != got {
        return Err(format!("{got:?} frame with 8 bytes appended gives {p:?}"));
    }
    Ok(got)
}
