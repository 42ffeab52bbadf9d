use std::collections::BTreeMap;
use std::net::IpAddr;

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};

/// A unidirectional flow key. Ports are zero for protocols other than TCP and UDP (and for
/// fragmented IP packets, whose transport header etherparse does not decode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number of the payload (after IPv6 extension headers).
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Aggregates Ethernet frames per unidirectional flow, parsing them with `etherparse` (an
/// implementation independent of flowlens' own parser). The value is (packets, bytes), bytes
/// being the IP-layer length: the IPv4 total length, or 40 + the IPv6 payload length (if the
/// length field is 0, e.g. a BIG TCP super-packet, the length of the frame's IP part).
/// Frames that are not IPv4 / IPv6 (ARP, ...) or whose IP header cannot be parsed are ignored.
pub fn flows_of(frames: &[Vec<u8>]) -> BTreeMap<FlowTuple, (u64, u64)> {
    let mut flows = BTreeMap::new();
    for frame in frames {
        let Ok(packet) = LaxSlicedPacket::from_ethernet(frame) else {
            continue;
        };
        let (src, dst, proto, bytes) = match &packet.net {
            Some(LaxNetSlice::Ipv4(ip)) => {
                let h = ip.header();
                let bytes = match h.total_len() {
                    0 => ip_part_len(frame, h.slice()),
                    len => u64::from(len),
                };
                (
                    IpAddr::V4(h.source_addr()),
                    IpAddr::V4(h.destination_addr()),
                    ip.payload().ip_number,
                    bytes,
                )
            }
            Some(LaxNetSlice::Ipv6(ip)) => {
                let h = ip.header();
                let bytes = match h.payload_length() {
                    0 => ip_part_len(frame, h.slice()),
                    len => 40 + u64::from(len),
                };
                (
                    IpAddr::V6(h.source_addr()),
                    IpAddr::V6(h.destination_addr()),
                    ip.payload().ip_number,
                    bytes,
                )
            }
            Some(LaxNetSlice::Arp(_)) | None => continue,
        };
        let (src_port, dst_port) = match &packet.transport {
            Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
            Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
            _ => (0, 0),
        };
        let key = FlowTuple {
            src,
            dst,
            proto: proto.0,
            src_port,
            dst_port,
        };
        let entry = flows.entry(key).or_insert((0u64, 0u64));
        entry.0 += 1;
        entry.1 += bytes;
    }
    flows
}

/// Bytes from the start of the IP header (`header`, a sub-slice of `frame`) to the frame end.
fn ip_part_len(frame: &[u8], header: &[u8]) -> u64 {
    let offset = header.as_ptr() as usize - frame.as_ptr() as usize;
    (frame.len() - offset) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const V4_A: [u8; 4] = [10, 1, 2, 1];
    const V4_B: [u8; 4] = [10, 1, 2, 2];

    fn v6(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd66, 0x6c00, 0, 7, 0, 0, 0, last)
    }

    fn udp4(payload: usize) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .udp(4000, 5000)
            .write_to_vec(&mut out, &vec![7u8; payload])
            .unwrap();
        out
    }

    #[test]
    fn counts_per_flow_with_ip_layer_bytes() {
        let mut frames = vec![udp4(100), udp4(100), udp4(3)];

        let mut tcp6 = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .ipv6(v6(2).octets(), v6(1).octets(), 64)
            .tcp(443, 50000, 1, 1000)
            .write_to_vec(&mut tcp6, &[1u8; 10])
            .unwrap();
        frames.push(tcp6);

        let mut icmp4 = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .icmpv4_echo_request(9, 1)
            .write_to_vec(&mut icmp4, &[0u8; 56])
            .unwrap();
        frames.push(icmp4);

        let mut icmp6 = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(v6(1).octets(), v6(2).octets(), 64)
            .icmpv6_echo_request(9, 1)
            .write_to_vec(&mut icmp6, &[0u8; 16])
            .unwrap();
        frames.push(icmp6);

        // ARP, and junk: ignored.
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&MAC_A);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 28]);
        frames.push(arp);
        frames.push(vec![1, 2, 3]);

        let flows = flows_of(&frames);
        let a4 = IpAddr::V4(Ipv4Addr::from(V4_A));
        let b4 = IpAddr::V4(Ipv4Addr::from(V4_B));
        let udp = FlowTuple {
            src: a4,
            dst: b4,
            proto: 17,
            src_port: 4000,
            dst_port: 5000,
        };
        assert_eq!(flows[&udp], (3, 2 * (20 + 8 + 100) + (20 + 8 + 3)));
        let tcp = FlowTuple {
            src: IpAddr::V6(v6(2)),
            dst: IpAddr::V6(v6(1)),
            proto: 6,
            src_port: 443,
            dst_port: 50000,
        };
        assert_eq!(flows[&tcp], (1, 40 + 20 + 10));
        let icmp = FlowTuple {
            src: a4,
            dst: b4,
            proto: 1,
            src_port: 0,
            dst_port: 0,
        };
        assert_eq!(flows[&icmp], (1, 20 + 8 + 56));
        let icmp6 = FlowTuple {
            src: IpAddr::V6(v6(1)),
            dst: IpAddr::V6(v6(2)),
            proto: 58,
            src_port: 0,
            dst_port: 0,
        };
        assert_eq!(flows[&icmp6], (1, 40 + 8 + 16));
        assert_eq!(flows.len(), 4, "{flows:#?}");
    }

    #[test]
    fn ethernet_padding_is_not_counted() {
        let mut frame = udp4(2); // 14 + 30 bytes, shorter than the Ethernet minimum
        frame.resize(60, 0);
        let flows = flows_of(&[frame]);
        assert_eq!(flows.values().copied().collect::<Vec<_>>(), vec![(1, 30)]);
    }
}
