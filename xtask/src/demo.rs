//! `cargo xtask demo`: two test hosts in network namespaces joined by a veth pair, flowlens on
//! host B (XDP on B's interface), a known traffic mix from A to B, then the top flows and a
//! check of the exported counts against what was sent.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// (transport, source, destination, source port or 0, destination port or ICMP type).
type FlowId = (String, String, String, u16, u16);
use flowlens_testkit::{Netns, icmp_echo, tcp_transfer, udp_exchange, veth_pair};

/// What we expect to see for one flow: exact packets and IP-layer bytes.
struct Expect {
    what: String,
    transport: &'static str,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    packets: u64,
    bytes: u64,
}

pub fn demo() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let flowlens = root.join("target/release/flowlens");
    let flows = root.join("flows");
    if flows.exists() {
        eprintln!(
            "demo: removing the previous demo output {}",
            flows.display()
        );
        std::fs::remove_dir_all(&flows)?;
    }
    let a = Netns::new("demoa")?;
    let b = Netns::new("demob")?;
    let link = veth_pair(&a, &b)?;
    println!(
        "demo: host A = netns {} ({} {} {}), host B = netns {} ({} {} {})",
        a.name(),
        link.a_if,
        link.a_v4,
        link.a_v6,
        b.name(),
        link.b_if,
        link.b_v4,
        link.b_v6
    );

    let mut child = b
        .command(&flowlens)
        .args(["run", "--xdp", &link.b_if, "--sink"])
        .arg(format!("parquet:{}", flows.display()))
        .args(["--drain-interval", "500ms", "--idle-timeout", "5s"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting flowlens")?;
    // Wait until the probe is attached (the interface shows an XDP program).
    let t0 = Instant::now();
    loop {
        let out = b.ip_output(&["link", "show", "dev", &link.b_if])?;
        if out.contains("xdp") {
            break;
        }
        if let Some(st) = child.try_wait()? {
            bail!("flowlens exited early: {st}");
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            bail!("flowlens did not attach within 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "demo: flowlens attached to {} in {}; sending traffic A -> B",
        link.b_if,
        b.name()
    );

    let (a4, b4, a6, b6) = (
        IpAddr::V4(link.a_v4),
        IpAddr::V4(link.b_v4),
        IpAddr::V6(link.a_v6),
        IpAddr::V6(link.b_v6),
    );
    let mut expect = Vec::new();
    let mut udp = |src: IpAddr,
                   dst: IpAddr,
                   sport,
                   dport,
                   count: u32,
                   payload: usize,
                   iphdr: u64|
     -> Result<()> {
        let got = udp_exchange(
            &a,
            &b,
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport),
            count,
            payload,
        )?;
        println!(
            "  udp {src}:{sport} -> {dst}:{dport}: sent {count} x {payload} B payload, {got} received"
        );
        expect.push(Expect {
            what: format!("udp {src} -> {dst}"),
            transport: "udp",
            src,
            dst,
            sport,
            dport,
            packets: count as u64,
            bytes: count as u64 * (iphdr + 8 + payload as u64),
        });
        Ok(())
    };
    udp(a4, b4, 41000, 5353, 100, 200, 20)?;
    udp(a6, b6, 41001, 5354, 50, 300, 40)?;
    let mut icmp = |src: IpAddr,
                    dst: IpAddr,
                    count: u32,
                    payload: usize,
                    iphdr: u64,
                    ty: u8,
                    tr: &'static str|
     -> Result<()> {
        let got = icmp_echo(&a, src, dst, count, payload, 0x4242)?;
        println!("  {tr} echo {src} -> {dst}: sent {count} requests, {got} replies");
        expect.push(Expect {
            what: format!("{tr} echo request {src} -> {dst}"),
            transport: tr,
            src,
            dst,
            sport: 0,
            dport: ty as u16,
            packets: count as u64,
            bytes: count as u64 * (iphdr + 8 + payload as u64),
        });
        Ok(())
    };
    icmp(a4, b4, 5, 56, 20, 8, "icmp")?;
    icmp(a6, b6, 5, 56, 40, 128, "ipv6-icmp")?;
    let tcp4 = tcp_transfer(
        &a,
        &b,
        SocketAddr::new(a4, 42000),
        SocketAddr::new(b4, 8080),
        4 << 20,
    )?;
    println!("  tcp {a4}:42000 -> {b4}:8080: {tcp4} B payload transferred");
    let tcp6 = tcp_transfer(
        &a,
        &b,
        SocketAddr::new(a6, 42001),
        SocketAddr::new(b6, 8081),
        1 << 20,
    )?;
    println!("  tcp [{a6}]:42001 -> [{b6}]:8081: {tcp6} B payload transferred");

    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: sending SIGINT to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait()?;
    if !st.success() {
        bail!("flowlens exited with {st}");
    }
    drop(link);
    drop(a);
    drop(b);
    println!(
        "demo: namespaces removed; Parquet files in {}\n",
        flows.display()
    );

    let status = Command::new(&flowlens)
        .args(["top", "-n", "15", "--input"])
        .arg(&flows)
        .status()?;
    if !status.success() {
        bail!("flowlens top failed");
    }
    let csv = Command::new(&flowlens)
        .args(["top", "--csv", "--input"])
        .arg(&flows)
        .output()?;
    let csv = String::from_utf8_lossy(&csv.stdout);
    let mut seen: BTreeMap<FlowId, (u64, u64)> = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 12 {
            continue;
        }
        let (sport, dport) = if f[2] == "icmp" || f[2] == "ipv6-icmp" {
            (0, f[7].parse()?)
        } else {
            (f[4].parse()?, f[6].parse()?)
        };
        seen.insert(
            (
                f[2].to_string(),
                f[3].to_string(),
                f[5].to_string(),
                sport,
                dport,
            ),
            (f[9].parse()?, f[10].parse()?),
        );
    }
    println!("\ndemo: exported vs sent (IP-layer bytes)");
    let mut bad = 0;
    for e in &expect {
        let got = seen
            .get(&(
                e.transport.to_string(),
                e.src.to_string(),
                e.dst.to_string(),
                e.sport,
                e.dport,
            ))
            .copied()
            .unwrap_or_default();
        let ok = got == (e.packets, e.bytes);
        bad += !ok as u32;
        println!(
            "  {:<52} sent {:>5} pkts {:>8} B   exported {:>5} pkts {:>8} B   {}",
            e.what,
            e.packets,
            e.bytes,
            got.0,
            got.1,
            if ok { "ok" } else { "MISMATCH" }
        );
    }
    for (label, src, dst, sport, dport, payload) in [
        ("tcp v4", a4, b4, 42000u16, 8080u16, tcp4),
        ("tcp v6", a6, b6, 42001, 8081, tcp6),
    ] {
        let got = seen
            .get(&(
                "tcp".to_string(),
                src.to_string(),
                dst.to_string(),
                sport,
                dport,
            ))
            .copied()
            .unwrap_or_default();
        let ok = got.1 > payload as u64;
        bad += !ok as u32;
        println!(
            "  {:<52} payload {:>9} B   exported {:>5} pkts {:>8} B (payload + headers)   {}",
            format!("{label} {src} -> {dst}"),
            payload,
            got.0,
            got.1,
            if ok { "ok" } else { "MISMATCH" }
        );
    }
    if bad > 0 {
        bail!("{bad} flows did not match what was sent");
    }
    println!("\ndemo: every flow matches what was sent.");
    Ok(())
}
