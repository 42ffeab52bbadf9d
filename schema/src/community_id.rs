//! Community ID v1 flow hashing.
//!
//! The [Community ID](https://github.com/corelight/community-id-spec) is a
//! short, direction-independent string that names a network flow, e.g.
//! `1:LQU9qZlK+B5F3KDmev6m5PMibrg=`. Zeek, Suricata, Arkime, Elastic and
//! others compute the same string for the same flow, so putting it in every
//! exported flowlens record turns "find this flow in the IDS logs" into a
//! plain string equality join instead of a fiddly 5-tuple match that has to
//! cope with either direction of the conversation.
//!
//! Version 1 of the algorithm, as implemented here:
//!
//! 1. Work out the "ports". TCP (6), UDP (17) and SCTP (132) use the real
//!    ports. ICMP (1) and ICMPv6 (58) use the message type as the source
//!    port; for request/response types (echo, timestamp, router and
//!    neighbor discovery, ...) the destination port is the counterpart type,
//!    for every other type it is the message code. This mirrors Zeek's
//!    `ICMP4_counterpart`/`ICMP6_counterpart`. Any other protocol has no
//!    ports at all.
//! 2. Order the endpoints so the numerically smaller (address, port) pair
//!    comes first: addresses are compared as network-order bytes, ports only
//!    break ties. One-way ICMP messages (types without a counterpart) are
//!    never reordered, exactly as in the reference implementation.
//! 3. SHA-1 over `seed (u16 BE) . src addr . dst addr . proto (u8) . 0u8`,
//!    followed by `src port (u16 BE) . dst port (u16 BE)` when the protocol
//!    has ports.
//! 4. The result is `"1:"` followed by the standard (padded) base64 of the
//!    20-byte digest.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
const PROTO_SCTP: u8 = 132;

/// Longest hash input: seed 2 + two IPv6 addresses 32 + proto/pad 2 + ports 4.
const MAX_INPUT: usize = 2 + 16 + 16 + 2 + 4;

/// Length of `"1:"` plus base64 of a 20-byte digest (28 characters).
const ID_LEN: usize = 2 + 28;

/// Counterpart of a two-way ICMPv4 message type, `None` for one-way types.
fn icmp4_counterpart(icmp_type: u8) -> Option<u8> {
    Some(match icmp_type {
        0 => 8,   // echo reply -> echo request
        8 => 0,   // echo request -> echo reply
        9 => 10,  // router advertisement -> router solicitation
        10 => 9,  // router solicitation -> router advertisement
        13 => 14, // timestamp -> timestamp reply
        14 => 13, // timestamp reply -> timestamp
        15 => 16, // information request -> information reply
        16 => 15, // information reply -> information request
        17 => 18, // address mask request -> address mask reply
        18 => 17, // address mask reply -> address mask request
        _ => return None,
    })
}

/// Counterpart of a two-way ICMPv6 message type, `None` for one-way types.
fn icmp6_counterpart(icmp_type: u8) -> Option<u8> {
    Some(match icmp_type {
        128 => 129, // echo request -> echo reply
        129 => 128, // echo reply -> echo request
        130 => 131, // MLD listener query -> listener report
        131 => 130, // MLD listener report -> listener query
        133 => 134, // router solicitation -> router advertisement
        134 => 133, // router advertisement -> router solicitation
        135 => 136, // neighbor solicitation -> neighbor advertisement
        136 => 135, // neighbor advertisement -> neighbor solicitation
        139 => 140, // node information query -> node information reply
        140 => 139, // node information reply -> node information query
        144 => 145, // home agent address discovery request -> reply
        145 => 144, // home agent address discovery reply -> request
        _ => return None,
    })
}

/// Network-order bytes of an address in a fixed buffer, with its length.
fn addr_bytes(addr: IpAddr) -> ([u8; 16], usize) {
    let mut buf = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            (buf, 4)
        }
        IpAddr::V6(v6) => {
            buf.copy_from_slice(&v6.octets());
            (buf, 16)
        }
    }
}

/// Community ID v1 of a flow. `icmp_type`/`icmp_code` are used only for proto 1 and 58;
/// `src_port`/`dst_port` only for TCP, UDP and SCTP.
///
/// Both directions of a flow give the same ID (except one-way ICMP message
/// types, which by design keep their direction). `src` and `dst` are
/// expected to be of the same address family; if they are not, the bytes
/// are hashed as given (ordering then compares the byte strings
/// lexicographically, like the reference implementation would).
#[allow(clippy::too_many_arguments)] // fixed public API shared with the collector
#[must_use]
pub fn community_id_v1(
    seed: u16,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    src_port: u16,
    dst_port: u16,
    icmp_type: u8,
    icmp_code: u8,
) -> String {
    // (source "port", destination "port", may reorder) or None when the
    // protocol carries no ports.
    let ports: Option<(u16, u16, bool)> = match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => Some((src_port, dst_port, true)),
        PROTO_ICMP | PROTO_ICMPV6 => {
            let counterpart = if proto == PROTO_ICMP {
                icmp4_counterpart(icmp_type)
            } else {
                icmp6_counterpart(icmp_type)
            };
            Some(match counterpart {
                Some(other) => (u16::from(icmp_type), u16::from(other), true),
                None => (u16::from(icmp_type), u16::from(icmp_code), false),
            })
        }
        _ => None,
    };

    let (src_buf, src_len) = addr_bytes(src);
    let (dst_buf, dst_len) = addr_bytes(dst);
    let src_addr = &src_buf[..src_len];
    let dst_addr = &dst_buf[..dst_len];

    // Without ports only the addresses decide the order (non-panicking default).
    let (sp, dp, may_reorder) = ports.unwrap_or((0, 0, true));
    let in_order = src_addr < dst_addr || (src_addr == dst_addr && sp < dp);
    let swap = may_reorder && !in_order;
    let (a1, a2, p1, p2) = if swap {
        (dst_addr, src_addr, dp, sp)
    } else {
        (src_addr, dst_addr, sp, dp)
    };

    // Assemble the whole hash input on the stack and hash it in one go.
    let mut input = [0u8; MAX_INPUT];
    let mut len = 0;
    for part in [&seed.to_be_bytes()[..], a1, a2, &[proto, 0][..]] {
        input[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    if ports.is_some() {
        input[len..len + 2].copy_from_slice(&p1.to_be_bytes());
        input[len + 2..len + 4].copy_from_slice(&p2.to_be_bytes());
        len += 4;
    }

    // RustCrypto's SHA-1 picks the SHA-NI instructions at run time where the CPU has them
    // (about 4x faster than the portable code on the record path).
    use sha1::Digest as _;
    let digest: [u8; 20] = sha1::Sha1::digest(&input[..len]).into();

    let mut id = String::with_capacity(ID_LEN);
    id.push_str("1:");
    STANDARD.encode_string(digest, &mut id);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One published vector. For ICMP/ICMPv6 `a`/`b` are the message type
    /// and code; otherwise they are the source and destination ports.
    struct V {
        seed: u16,
        proto: u8,
        src: &'static str,
        dst: &'static str,
        a: u16,
        b: u16,
        want: &'static str,
    }

    const fn v(
        seed: u16,
        proto: u8,
        src: &'static str,
        dst: &'static str,
        a: u16,
        b: u16,
        want: &'static str,
    ) -> V {
        V {
            seed,
            proto,
            src,
            dst,
            a,
            b,
            want,
        }
    }

    fn run(v: &V) -> String {
        let src: IpAddr = v.src.parse().unwrap();
        let dst: IpAddr = v.dst.parse().unwrap();
        match v.proto {
            1 | 58 => {
                let t = u8::try_from(v.a).unwrap();
                let c = u8::try_from(v.b).unwrap();
                community_id_v1(v.seed, src, dst, v.proto, 0, 0, t, c)
            }
            _ => community_id_v1(v.seed, src, dst, v.proto, v.a, v.b, 0, 0),
        }
    }

    fn check(vectors: &[V]) {
        let mut failures = Vec::new();
        for v in vectors {
            let got = run(v);
            if got != v.want {
                failures.push(format!(
                    "seed={} proto={} {}:{} -> {}:{}: got {got}, want {}",
                    v.seed, v.proto, v.src, v.a, v.dst, v.b, v.want
                ));
            }
        }
        assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
    }

    const A6: &str = "fe80:0001:0203:0405:0607:0809:0A0B:0C0D";
    const B6: &str = "fe80:1011:1213:1415:1617:1819:1A1B:1C1D";

    /// corelight/community-id-spec, baseline/README.md, table "Default settings".
    #[test]
    #[rustfmt::skip] // one vector per line, as in the spec tables
    fn spec_baseline_table_default_seed() {
        check(&[
            v(0, 6, "1.2.3.4", "5.6.7.8", 1122, 3344, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
            v(0, 6, "5.6.7.8", "1.2.3.4", 3344, 1122, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
            v(0, 17, "1.2.3.4", "5.6.7.8", 1122, 3344, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
            v(0, 17, "5.6.7.8", "1.2.3.4", 3344, 1122, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
            v(0, 132, "1.2.3.4", "5.6.7.8", 1122, 3344, "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8="),
            v(0, 132, "5.6.7.8", "1.2.3.4", 3344, 1122, "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8="),
            // ICMP echo request and its reply.
            v(0, 1, "1.2.3.4", "5.6.7.8", 8, 0, "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="),
            v(0, 1, "5.6.7.8", "1.2.3.4", 0, 0, "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="),
            // ICMP time exceeded: one-way.
            v(0, 1, "1.2.3.4", "5.6.7.8", 11, 0, "1:f/YiSyWqczrTgfUCZlBUnvHRcPk="),
            // ICMPv6 echo request and its reply.
            v(0, 58, A6, B6, 128, 0, "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="),
            v(0, 58, B6, A6, 129, 0, "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="),
            // ICMPv6 type 146 (mobile prefix solicitation): one-way.
            v(0, 58, A6, B6, 146, 0, "1:fYC8+pz24E+EhANP1EZhpX0Dw10="),
            // RSVP (46): no ports.
            v(0, 46, "1.2.3.4", "5.6.7.8", 0, 0, "1:ikv3kmf89luf73WPz1jOs49S768="),
            v(0, 46, "5.6.7.8", "1.2.3.4", 0, 0, "1:ikv3kmf89luf73WPz1jOs49S768="),
            v(0, 46, A6, B6, 0, 0, "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0="),
            v(0, 46, B6, A6, 0, 0, "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0="),
        ]);
    }

    /// corelight/community-id-spec, baseline/README.md, table "A custom seed=1 value".
    #[test]
    #[rustfmt::skip] // one vector per line, as in the spec tables
    fn spec_baseline_table_seed_1() {
        check(&[
            v(1, 6, "1.2.3.4", "5.6.7.8", 1122, 3344, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
            v(1, 6, "5.6.7.8", "1.2.3.4", 3344, 1122, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
            v(1, 17, "1.2.3.4", "5.6.7.8", 1122, 3344, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
            v(1, 17, "5.6.7.8", "1.2.3.4", 3344, 1122, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
            v(1, 132, "1.2.3.4", "5.6.7.8", 1122, 3344, "1:uitchpn5MMGAQKBJh7bIr/bAr7s="),
            v(1, 132, "5.6.7.8", "1.2.3.4", 3344, 1122, "1:uitchpn5MMGAQKBJh7bIr/bAr7s="),
            v(1, 1, "1.2.3.4", "5.6.7.8", 8, 0, "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="),
            v(1, 1, "5.6.7.8", "1.2.3.4", 0, 0, "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="),
            v(1, 1, "1.2.3.4", "5.6.7.8", 11, 0, "1:1DD7cWGC/Yg91YGsQeni8du3pIA="),
            v(1, 58, A6, B6, 128, 0, "1:IO27GQzPuCtNnwFvjWALMHu5tJE="),
            v(1, 58, B6, A6, 129, 0, "1:IO27GQzPuCtNnwFvjWALMHu5tJE="),
            v(1, 58, A6, B6, 146, 0, "1:Cv4IKJe56BNkF0MBW2YxQ3Nwc3s="),
            v(1, 46, "1.2.3.4", "5.6.7.8", 0, 0, "1:/buhqeOmaRCopOZFy9HnoJd5XW8="),
            v(1, 46, "5.6.7.8", "1.2.3.4", 0, 0, "1:/buhqeOmaRCopOZFy9HnoJd5XW8="),
            v(1, 46, A6, B6, 0, 0, "1:j6EyyfBzL4vWKHFXgUqb5Az3OxM="),
            v(1, 46, B6, A6, 0, 0, "1:j6EyyfBzL4vWKHFXgUqb5Az3OxM="),
        ]);
    }

    // corelight/community-id-spec, baseline/baseline_deflt.json (seed 0) and
    // baseline/baseline_seed1.json (seed 1), taken from real packets in
    // pcaps/combined.pcap.gz. For ICMP/ICMPv6 those files list the *mapped*
    // port pair; the message (type, code) each line came from is given here:
    // two-way types carry code 0 and their counterpart as "dport", one-way
    // types list (type, code) unchanged.

    const NS_A: &str = "fe80::200:86ff:fe05:80da";
    const NS_B: &str = "fe80::260:97ff:fe07:69ea";
    const G6_HOST: &str = "3ffe:507:0:1:200:86ff:fe05:80da";

    #[test]
    #[rustfmt::skip] // one vector per line, as in the spec tables
    fn spec_baseline_json_default_seed() {
        check(&[
            // ICMPv6 neighbor solicitation from A, advertisement back from B.
            v(0, 58, NS_A, NS_B, 135, 0, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
            v(0, 58, NS_B, NS_A, 136, 0, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
            // ... and the other way round (solicitation from B).
            v(0, 58, NS_B, NS_A, 135, 0, "1:zavyT/cezQr1fmImYCwYnMXbgck="),
            v(0, 58, NS_A, NS_B, 136, 0, "1:zavyT/cezQr1fmImYCwYnMXbgck="),
            // ICMPv6 time exceeded (3/0) and destination unreachable (1/4).
            v(0, 58, "3ffe:501:1800:2345::2", G6_HOST, 3, 0, "1:2ObVBgIn28oZvibYZhZMBgh7WdQ="),
            v(0, 58, "3ffe:501:410:0:2c0:dfff:fe47:33e", G6_HOST, 1, 4, "1:hLZd0XGWojozrvxqE0dWB1iM6R0="),
            // ICMPv6 echo request/reply.
            v(0, 58, G6_HOST, "3ffe:501:0:1001::2", 128, 0, "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg="),
            v(0, 58, "3ffe:501:0:1001::2", G6_HOST, 129, 0, "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg="),
            // ICMPv6 router solicitation (the spec README's example ID) and advertisement.
            v(0, 58, NS_A, "ff02::2", 133, 0, "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0="),
            v(0, 58, NS_B, "ff02::1", 134, 0, "1:pkvHqCL88/tg1k4cPigmZXUtL00="),
            // ICMP echo request/reply and time exceeded.
            v(0, 1, "192.168.0.89", "192.168.0.1", 8, 0, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
            v(0, 1, "192.168.0.1", "192.168.0.89", 0, 0, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
            v(0, 1, "10.0.0.1", "10.0.0.2", 11, 0, "1:YHxtAirCG//0OzkcVAukqKQN9xM="),
            // TCP over IPv6.
            v(0, 6, "2001:470:e5bf:dead:4957:2174:e82c:4887", "2607:f8b0:400c:c03::1a", 63943, 25, "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
            v(0, 6, "2607:f8b0:400c:c03::1a", "2001:470:e5bf:dead:4957:2174:e82c:4887", 25, 63943, "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
            // SCTP with equal ports: only the addresses decide the order.
            v(0, 132, "192.168.170.8", "192.168.170.56", 7, 7, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
            v(0, 132, "192.168.170.56", "192.168.170.8", 7, 7, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
            v(0, 6, "128.232.110.120", "66.35.250.204", 34855, 80, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
            v(0, 6, "66.35.250.204", "128.232.110.120", 80, 34855, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
            v(0, 17, "192.168.1.52", "8.8.8.8", 54585, 53, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
            v(0, 17, "8.8.8.8", "192.168.1.52", 53, 54585, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
            v(0, 46, "10.1.12.1", "10.1.12.2", 0, 0, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
            v(0, 46, "10.1.12.2", "10.1.12.1", 0, 0, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
        ]);
    }

    #[test]
    #[rustfmt::skip] // one vector per line, as in the spec tables
    fn spec_baseline_json_seed_1() {
        check(&[
            v(1, 58, NS_A, NS_B, 135, 0, "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
            v(1, 58, NS_B, NS_A, 136, 0, "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
            v(1, 58, NS_B, NS_A, 135, 0, "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
            v(1, 58, NS_A, NS_B, 136, 0, "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
            v(1, 58, "3ffe:501:1800:2345::2", G6_HOST, 3, 0, "1:lVEtCZpYu84Xqaa++3lXFyuu2n4="),
            v(1, 58, "3ffe:501:410:0:2c0:dfff:fe47:33e", G6_HOST, 1, 4, "1:W8MHwXpWzpoSTD+cGcaJr4u0ys8="),
            v(1, 58, G6_HOST, "3ffe:501:0:1001::2", 128, 0, "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
            v(1, 58, "3ffe:501:0:1001::2", G6_HOST, 129, 0, "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
            v(1, 58, NS_A, "ff02::2", 133, 0, "1:L7Ka0ZMYu+J3bL4ulW2PrqyXNo8="),
            v(1, 58, NS_B, "ff02::1", 134, 0, "1:K/ee5UCqAMAQXDorP5nSa2CGLjc="),
            v(1, 1, "192.168.0.89", "192.168.0.1", 8, 0, "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
            v(1, 1, "192.168.0.1", "192.168.0.89", 0, 0, "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
            v(1, 1, "10.0.0.1", "10.0.0.2", 11, 0, "1:XjUibYHaafLQ3pxQeiMI8g25q20="),
            v(1, 6, "2001:470:e5bf:dead:4957:2174:e82c:4887", "2607:f8b0:400c:c03::1a", 63943, 25, "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
            v(1, 6, "2607:f8b0:400c:c03::1a", "2001:470:e5bf:dead:4957:2174:e82c:4887", 25, 63943, "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
            v(1, 132, "192.168.170.8", "192.168.170.56", 7, 7, "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
            v(1, 132, "192.168.170.56", "192.168.170.8", 7, 7, "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
            v(1, 6, "128.232.110.120", "66.35.250.204", 34855, 80, "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
            v(1, 6, "66.35.250.204", "128.232.110.120", 80, 34855, "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
            v(1, 17, "192.168.1.52", "8.8.8.8", 54585, 53, "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
            v(1, 17, "8.8.8.8", "192.168.1.52", 53, 54585, "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
            v(1, 46, "10.1.12.1", "10.1.12.2", 0, 0, "1:rYir8gphR31noO9iDRQmF/BteEI="),
            v(1, 46, "10.1.12.2", "10.1.12.1", 0, 0, "1:rYir8gphR31noO9iDRQmF/BteEI="),
        ]);
    }

    /// Corner cases from the reference implementation's own test suite,
    /// corelight/pycommunityid tests/communityid_test.py (the spec README
    /// points to pycommunityid as the reference): one-way ICMP types keep
    /// their direction and hash the code; two-way types ignore the code;
    /// equal addresses fall back to the ports.
    #[test]
    #[rustfmt::skip] // one vector per line, as in the spec tables
    fn reference_impl_corner_cases() {
        const H1: &str = "3ffe:507:0:1:260:97ff:fe07:69ea";
        check(&[
            // Type 20 is one-way: the code is hashed and nothing is reordered.
            v(0, 1, "192.168.0.89", "192.168.0.1", 20, 0, "1:3o2RFccXzUgjl7zDpqmY7yJi8rI="),
            v(0, 1, "192.168.0.89", "192.168.0.1", 20, 1, "1:tz/fHIDUHs19NkixVVoOZywde+I="),
            v(1, 1, "192.168.0.89", "192.168.0.1", 20, 0, "1:lCXHHxavE1Vq3oX9NH5ladQg02o="),
            v(1, 1, "192.168.0.89", "192.168.0.1", 20, 1, "1:Ie3wmFyxiEyikbsbcO03d2nh+PM="),
            // Echo reply with a junk code: the code is ignored.
            v(0, 1, "192.168.0.1", "192.168.0.89", 0, 20, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
            v(1, 1, "192.168.0.1", "192.168.0.89", 0, 20, "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
            // ICMPv6 time exceeded (one-way) in both directions: two IDs.
            v(0, 58, H1, G6_HOST, 3, 0, "1:NdobDX8PQNJbAyfkWxhtL2Pqp5w="),
            v(0, 58, G6_HOST, H1, 3, 0, "1:/OGBt9BN1ofenrmSPWYicpij2Vc="),
            v(1, 58, H1, G6_HOST, 3, 0, "1:OlOWx9psIbBFi7lOCw/4MhlKR9M="),
            v(1, 58, G6_HOST, H1, 3, 0, "1:Ij4ZxnC87/MXzhOjvH2vHu7LRmE="),
            // SCTP with different ports, both directions.
            v(0, 132, "192.168.170.8", "192.168.170.56", 7, 80, "1:jQgCxbku+pNGw8WPbEc/TS/uTpQ="),
            v(0, 132, "192.168.170.56", "192.168.170.8", 80, 7, "1:jQgCxbku+pNGw8WPbEc/TS/uTpQ="),
            v(1, 132, "192.168.170.8", "192.168.170.56", 7, 80, "1:Y1/0jQg6e+I3ZwZZ9LP65DNbTXU="),
            // pycommunityid issue #3 (port ordering bug).
            v(0, 6, "10.0.0.1", "10.0.0.2", 10, 11569, "1:SXBGMX1lBOwhhoDrZynfROxnhnM="),
            v(1, 6, "10.0.0.1", "10.0.0.2", 10, 11569, "1:HmBRGR+fUyXF4t8WEtal7Y0gEAo="),
            // Port-less protocol 46, both directions.
            v(0, 46, "10.1.24.4", "10.1.12.1", 0, 0, "1:/nQI4Rh/TtY3mf0R2gJFBkVlgS4="),
            v(0, 46, "10.1.12.1", "10.1.24.4", 0, 0, "1:/nQI4Rh/TtY3mf0R2gJFBkVlgS4="),
            v(1, 46, "10.1.24.4", "10.1.12.1", 0, 0, "1:BK3BVW3U2eemuwVQVN3zd/GULno="),
        ]);
    }

    /// Arguments that do not apply to a protocol must not change its ID.
    #[test]
    fn irrelevant_arguments_are_ignored() {
        let a: IpAddr = "1.2.3.4".parse().unwrap();
        let b: IpAddr = "5.6.7.8".parse().unwrap();
        // TCP ignores icmp_type/icmp_code.
        assert_eq!(
            community_id_v1(0, a, b, 6, 1122, 3344, 8, 3),
            "1:wCb3OG7yAFWelaUydu0D+125CLM="
        );
        // ICMP ignores the ports.
        assert_eq!(
            community_id_v1(0, a, b, 1, 1122, 3344, 8, 0),
            "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="
        );
        // Port-less protocols (RSVP from the spec, and GRE 47) ignore
        // everything but addresses and protocol, and are direction-free.
        assert_eq!(
            community_id_v1(0, b, a, 46, 99, 100, 8, 0),
            "1:ikv3kmf89luf73WPz1jOs49S768="
        );
        let gre = community_id_v1(0, a, b, 47, 0, 0, 0, 0);
        assert_eq!(gre, community_id_v1(0, b, a, 47, 1, 2, 3, 4));
        assert_ne!(gre, community_id_v1(0, a, b, 46, 0, 0, 0, 0));
        assert_eq!(gre.len(), ID_LEN);
    }
}
