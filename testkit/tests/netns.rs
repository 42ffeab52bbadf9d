//! Integration tests of the test kit itself. They need root (namespaces, veth, raw and
//! packet sockets); every namespace is named `fl-{tag}-{pid}-{n}` and removed on drop.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use flowlens_testkit::{
    Capture, FlowTuple, Link, Netns, flows_of, icmp_echo, ifindex, tcp_transfer, udp_exchange,
    veth_pair,
};

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(out.status.success(), "ip netns list failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `name` is listed by `ip netns list` (lines look like "name" or "name (id: 3)").
fn listed(list: &str, name: &str) -> bool {
    list.lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn hosts(tag: &str) -> (Netns, Netns, Link) {
    let a = Netns::new(&format!("{tag}a")).expect("namespace a");
    let b = Netns::new(&format!("{tag}b")).expect("namespace b");
    let link = veth_pair(&a, &b).expect("veth pair");
    (a, b, link)
}

#[test]
fn udp_exchange_is_captured_exactly() {
    let (a, b, link) = hosts("udp");
    let cap = Capture::start(&b, &link.b_if).unwrap();

    let src = SocketAddr::new(link.a_v4.into(), 40001);
    let dst = SocketAddr::new(link.b_v4.into(), 5001);
    assert_eq!(udp_exchange(&a, &b, src, dst, 50, 100).unwrap(), 50);

    let src6 = SocketAddr::new(link.a_v6.into(), 40002);
    let dst6 = SocketAddr::new(link.b_v6.into(), 5002);
    assert_eq!(udp_exchange(&a, &b, src6, dst6, 20, 100).unwrap(), 20);

    let flows = flows_of(&cap.stop().unwrap());
    let key = FlowTuple {
        src: src.ip(),
        dst: dst.ip(),
        proto: 17,
        src_port: 40001,
        dst_port: 5001,
    };
    assert_eq!(
        flows.get(&key),
        Some(&(50, 50 * (20 + 8 + 100))),
        "{flows:#?}"
    );
    let key6 = FlowTuple {
        src: src6.ip(),
        dst: dst6.ip(),
        proto: 17,
        src_port: 40002,
        dst_port: 5002,
    };
    assert_eq!(
        flows.get(&key6),
        Some(&(20, 20 * (40 + 8 + 100))),
        "{flows:#?}"
    );
    // B's capture sees only what B receives: nothing from B to A.
    assert!(
        flows.keys().all(|k| k.src != IpAddr::from(link.b_v4)),
        "{flows:#?}"
    );
}

#[test]
fn udp_exchange_many_datagrams_loses_none() {
    let (a, b, link) = hosts("udpn");
    let src = SocketAddr::new(link.a_v4.into(), 0);
    let dst = SocketAddr::new(link.b_v4.into(), 6000);
    assert_eq!(udp_exchange(&a, &b, src, dst, 5000, 64).unwrap(), 5000);
}

#[test]
fn tcp_transfer_arrives_in_full_and_is_captured() {
    let (a, b, link) = hosts("tcp");
    let cap = Capture::start(&b, &link.b_if).unwrap();

    const MB: usize = 1 << 20;
    let src = SocketAddr::new(link.a_v4.into(), 40100);
    let dst = SocketAddr::new(link.b_v4.into(), 8080);
    assert_eq!(tcp_transfer(&a, &b, src, dst, MB).unwrap(), MB);

    let src6 = SocketAddr::new(link.a_v6.into(), 40101);
    let dst6 = SocketAddr::new(link.b_v6.into(), 8081);
    assert_eq!(tcp_transfer(&a, &b, src6, dst6, 100_000).unwrap(), 100_000);

    let flows = flows_of(&cap.stop().unwrap());
    let key = FlowTuple {
        src: src.ip(),
        dst: dst.ip(),
        proto: 6,
        src_port: 40100,
        dst_port: 8080,
    };
    let &(packets, bytes) = flows
        .get(&key)
        .unwrap_or_else(|| panic!("no TCP flow: {flows:#?}"));
    // Payload plus at least a 20 + 20 byte header per packet.
    assert!(packets >= 3, "{packets} packets");
    assert!(
        bytes >= MB as u64 + 40 * packets,
        "{bytes} bytes in {packets} packets"
    );
    let key6 = FlowTuple {
        src: src6.ip(),
        dst: dst6.ip(),
        proto: 6,
        src_port: 40101,
        dst_port: 8081,
    };
    let &(packets6, bytes6) = flows.get(&key6).unwrap_or_else(|| panic!("{flows:#?}"));
    assert!(
        bytes6 >= 100_000 + 60 * packets6,
        "{bytes6} bytes in {packets6} packets"
    );
    eprintln!(
        "1 MiB over TCP: {packets} frames, {bytes} IP bytes captured on {}",
        link.b_if
    );
}

#[test]
fn disable_gso_gives_mtu_sized_frames() {
    let (a, b, link) = hosts("gso");
    link.disable_gso().unwrap();
    let cap = Capture::start(&b, &link.b_if).unwrap();
    const MB: usize = 1 << 20;
    let src = SocketAddr::new(link.a_v4.into(), 40300);
    let dst = SocketAddr::new(link.b_v4.into(), 8082);
    assert_eq!(tcp_transfer(&a, &b, src, dst, MB).unwrap(), MB);
    let frames = cap.stop().unwrap();
    assert!(
        frames.iter().all(|f| f.len() <= 14 + 1500),
        "a frame exceeds the MTU"
    );
    let flows = flows_of(&frames);
    let key = FlowTuple {
        src: src.ip(),
        dst: dst.ip(),
        proto: 6,
        src_port: 40300,
        dst_port: 8082,
    };
    let &(packets, bytes) = flows.get(&key).unwrap_or_else(|| panic!("{flows:#?}"));
    // At most 1460 payload bytes per segment (1448 with timestamps).
    assert!(packets as usize > MB / 1460, "{packets} packets");
    assert!(
        bytes >= MB as u64 + 40 * packets,
        "{bytes} bytes in {packets} packets"
    );
}

#[test]
fn icmp_and_icmpv6_echo_get_all_replies() {
    let (a, b, link) = hosts("icmp");
    let cap_b = Capture::start(&b, &link.b_if).unwrap();
    let cap_a = Capture::start(&a, &link.a_if).unwrap();

    assert_eq!(
        icmp_echo(&a, link.a_v4.into(), link.b_v4.into(), 10, 56, 0x1234).unwrap(),
        10
    );
    assert_eq!(
        icmp_echo(&a, link.a_v6.into(), link.b_v6.into(), 10, 56, 0x4321).unwrap(),
        10
    );

    let requests = flows_of(&cap_b.stop().unwrap());
    let replies = flows_of(&cap_a.stop().unwrap());
    let (a4, b4): (IpAddr, IpAddr) = (link.a_v4.into(), link.b_v4.into());
    let (a6, b6): (IpAddr, IpAddr) = (link.a_v6.into(), link.b_v6.into());
    let icmp = |src, dst, proto| FlowTuple {
        src,
        dst,
        proto,
        src_port: 0,
        dst_port: 0,
    };
    // Permanent neighbour entries: no ARP / ND, so exactly the echo traffic.
    assert_eq!(
        requests.get(&icmp(a4, b4, 1)),
        Some(&(10, 10 * (20 + 8 + 56))),
        "{requests:#?}"
    );
    assert_eq!(
        requests.get(&icmp(a6, b6, 58)),
        Some(&(10, 10 * (40 + 8 + 56))),
        "{requests:#?}"
    );
    assert_eq!(
        replies.get(&icmp(b4, a4, 1)),
        Some(&(10, 10 * (20 + 8 + 56))),
        "{replies:#?}"
    );
    assert_eq!(
        replies.get(&icmp(b6, a6, 58)),
        Some(&(10, 10 * (40 + 8 + 56))),
        "{replies:#?}"
    );
}

#[test]
fn icmp_echo_to_an_absent_host_times_out_with_zero() {
    let (a, _b, link) = hosts("icmpx");
    // An address of the link's own /24 that nobody has: the neighbour entry never resolves.
    let octets = link.b_v4.octets();
    let absent = IpAddr::from([octets[0], octets[1], octets[2], 99]);
    let started = std::time::Instant::now();
    assert_eq!(icmp_echo(&a, link.a_v4.into(), absent, 2, 8, 7).unwrap(), 0);
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
}

#[test]
fn namespaces_and_links_are_removed_on_drop() {
    let (a, b, link) = hosts("drop");
    let (a_name, b_name) = (a.name().to_owned(), b.name().to_owned());
    let pid = std::process::id().to_string();
    assert!(
        a_name.starts_with("fl-dropa-") && a_name.contains(&pid),
        "{a_name}"
    );
    assert_ne!(a_name, b_name);
    let list = netns_list();
    assert!(listed(&list, &a_name) && listed(&list, &b_name), "{list}");

    // The interfaces live in their namespaces only.
    assert!(ifindex(&a, &link.a_if).unwrap() > 0);
    assert!(ifindex(&b, &link.b_if).unwrap() > 0);
    assert!(ifindex(&b, &link.a_if).is_err());

    let a_if = link.a_if.clone();
    drop(link);
    assert!(
        a.ip(&["link", "show", "dev", &a_if]).is_err(),
        "{a_if} still exists"
    );
    assert!(ifindex(&b, "lo").is_ok());

    drop(a);
    drop(b);
    let list = netns_list();
    assert!(!listed(&list, &a_name) && !listed(&list, &b_name), "{list}");
}

#[test]
fn run_in_command_and_ip_work_inside_the_namespace() {
    let ns = Netns::new("cmd").unwrap();
    // lo is up and loopback traffic works inside the namespace.
    let lo = SocketAddr::from(([127, 0, 0, 1], 7000));
    let lo_src = SocketAddr::from(([127, 0, 0, 1], 7001));
    assert_eq!(udp_exchange(&ns, &ns, lo_src, lo, 3, 10).unwrap(), 3);
    assert_eq!(
        icmp_echo(&ns, [127, 0, 0, 1].into(), [127, 0, 0, 1].into(), 3, 8, 9).unwrap(),
        3
    );

    // A fresh namespace has nothing but lo.
    let out = ns
        .command("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(": lo:"), "{text}");

    let err = ns.ip(&["link", "show", "dev", "nonexistent0"]).unwrap_err();
    assert!(format!("{err:#}").contains("nonexistent0"), "{err:#}");

    let value = ns.run_in(|| 6 * 7).unwrap();
    assert_eq!(value, 42);
    let t = ns
        .spawn_in(|| std::fs::read_to_string("/proc/self/net/dev"))
        .unwrap();
    assert!(t.join().is_ok());

    assert!(Netns::new("bad tag").is_err());
    assert!(Netns::new("").is_err());
}

/// A reaches B only through R: UDP both ways over IPv4 and IPv6 arrives, and R's interfaces
/// see every datagram on the way; the namespaces are gone after drop.
#[test]
fn routed_forwards_both_families_through_r() {
    let t = flowlens_testkit::routed("rt").unwrap();
    let names = [
        t.a.name().to_string(),
        t.r.name().to_string(),
        t.b.name().to_string(),
    ];
    let cap_ab = Capture::start(&t.r, &t.ar.b_if).unwrap();
    let cap_ba = Capture::start(&t.r, &t.rb.a_if).unwrap();
    for v6 in [false, true] {
        let (a, b) = (t.a_addr(v6), t.b_addr(v6));
        assert_ne!(
            a.to_string().rsplit_once(['.', ':']).unwrap().0,
            b.to_string().rsplit_once(['.', ':']).unwrap().0,
            "A and B must be on different subnets"
        );
        let ab = udp_exchange(
            &t.a,
            &t.b,
            SocketAddr::new(a, 41000 + v6 as u16),
            SocketAddr::new(b, 6000),
            30,
            200,
        )
        .unwrap();
        assert_eq!(ab, 30);
        let ba = udp_exchange(
            &t.b,
            &t.a,
            SocketAddr::new(b, 42000 + v6 as u16),
            SocketAddr::new(a, 6001),
            12,
            50,
        )
        .unwrap();
        assert_eq!(ba, 12);
    }
    let ab = flows_of(&cap_ab.stop().unwrap());
    let ba = flows_of(&cap_ba.stop().unwrap());
    for v6 in [false, true] {
        let hdr = if v6 { 40 } else { 20 };
        let k = FlowTuple {
            src: t.a_addr(v6),
            dst: t.b_addr(v6),
            proto: 17,
            src_port: 41000 + v6 as u16,
            dst_port: 6000,
        };
        assert_eq!(ab.get(&k), Some(&(30, 30 * (hdr + 8 + 200))), "{ab:#?}");
        let k = FlowTuple {
            src: t.b_addr(v6),
            dst: t.a_addr(v6),
            proto: 17,
            src_port: 42000 + v6 as u16,
            dst_port: 6001,
        };
        assert_eq!(ba.get(&k), Some(&(12, 12 * (hdr + 8 + 50))), "{ba:#?}");
    }
    drop(t);
    let list = netns_list();
    for n in names {
        assert!(!listed(&list, &n), "{n} still exists");
    }
}
