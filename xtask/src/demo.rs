//! `cargo xtask demo`: two hosts in network namespaces joined by a veth pair, one flowlens per
//! host (XDP on its end of the link, so each sees what its host receives), a known traffic mix
//! in both directions, then the top flows, an exact check of every exported flow against what
//! was sent and against an independent capture, and the HTML capacity report of the run.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use flowlens_testkit::{
    Capture, FlowTuple, Netns, flows_of, icmp_echo, tcp_transfer, udp_exchange, veth_pair,
};

/// A flow as `flowlens top --csv` names it: (interface, transport, source, destination,
/// source port, destination port or ICMP type).
type FlowId = (String, String, String, String, u16, u16);

/// One flow the demo sends, with what the receiving host's flowlens must export for it.
struct Expect {
    /// Receiving interface (where the XDP probe and the capture see the flow).
    iface: String,
    transport: &'static str,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    /// Destination port, or the ICMP type.
    dport: u16,
    /// IP protocol number (for the capture's flow key).
    proto: u8,
    /// What the sender reported: e.g. "100 x 200 B, 100 received".
    sent: String,
    /// Exact (packets, IP-layer bytes) known from what was sent (UDP, ICMP). TCP's segment
    /// count is the kernel's choice: its flows are checked against the capture alone, and
    /// the data direction must carry more bytes than its payload.
    exact: Option<(u64, u64)>,
    payload_floor: u64,
}

impl Expect {
    fn capture_key(&self) -> FlowTuple {
        let icmp = self.proto == 1 || self.proto == 58;
        FlowTuple {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
            src_port: if icmp { 0 } else { self.sport },
            dst_port: if icmp { 0 } else { self.dport },
        }
    }

    fn id(&self) -> FlowId {
        (
            self.iface.clone(),
            self.transport.to_string(),
            self.src.to_string(),
            self.dst.to_string(),
            self.sport,
            self.dport,
        )
    }
}

/// A flowlens process in a namespace; interrupted (SIGINT) and reaped when dropped.
struct Exporter {
    host: &'static str,
    child: Option<Child>,
}

impl Exporter {
    fn start(
        host: &'static str,
        ns: &Netns,
        flowlens: &Path,
        iface: &str,
        flows: &Path,
        spool: &Path,
    ) -> Result<Exporter> {
        let child = ns
            .command(flowlens)
            .args(["run", "--xdp", iface, "--sink"])
            .arg(format!("parquet:{}", flows.display()))
            .arg("--spool-dir")
            .arg(spool)
            .args(["--drain-interval", "500ms", "--idle-timeout", "5s"])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting flowlens on host {host}"))?;
        let mut e = Exporter {
            host,
            child: Some(child),
        };
        // Wait until the probe is attached (the interface shows an XDP program).
        let t0 = std::time::Instant::now();
        while !ns.xdp_attached(iface)? {
            if let Some(st) = e.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                e.child = None;
                bail!("flowlens on host {host} exited before attaching: {st}");
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("flowlens on host {host} did not attach to {iface} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(e)
    }

    /// SIGINT, then waits: flowlens flushes every flow and closes its files.
    fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let st = child.wait()?;
        if !st.success() {
            bail!("flowlens on host {} exited with {st}", self.host);
        }
        Ok(())
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
            let _ = c.wait();
        }
    }
}

pub fn demo(flowlens: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo loads eBPF programs and creates network namespaces: run it as root");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let flows = root.join("flows");
    let spool = root.join("target/demo-spool");
    for d in [&flows, &spool] {
        if d.exists() {
            eprintln!("demo: removing the previous demo output {}", d.display());
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    std::fs::create_dir_all(&flows)?;
    let a = Netns::new("demoa")?;
    let b = Netns::new("demob")?;
    let link = veth_pair(&a, &b)?;
    // One wire-sized packet per frame (no 64 KiB TCP super-packets), as on a physical link.
    link.disable_gso()?;
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

    let on_a = Exporter::start("A", &a, flowlens, &link.a_if, &flows, &spool.join("a"))?;
    let on_b = Exporter::start("B", &b, flowlens, &link.b_if, &flows, &spool.join("b"))?;
    // Independent observers of what each interface receives (AF_PACKET, parsed with etherparse).
    let cap_a = Capture::start(&a, &link.a_if)?;
    let cap_b = Capture::start(&b, &link.b_if)?;
    println!(
        "demo: flowlens attached to {} (host A) and {} (host B); sending traffic both ways",
        link.a_if, link.b_if
    );

    let (a4, b4, a6, b6) = (
        IpAddr::V4(link.a_v4),
        IpAddr::V4(link.b_v4),
        IpAddr::V6(link.a_v6),
        IpAddr::V6(link.b_v6),
    );
    // The interface that receives traffic sent to `dst`.
    let (a_if, b_if) = (link.a_if.clone(), link.b_if.clone());
    let iface_of = |dst: IpAddr| {
        if dst == a4 || dst == a6 {
            a_if.clone()
        } else {
            b_if.clone()
        }
    };
    let mut expect = Vec::new();

    // UDP, both ways: exact packets and bytes (IP header + 8 + payload each).
    for (from, to, src, dst, sport, dport, count, payload) in [
        (&a, &b, a4, b4, 41000u16, 5353u16, 100u32, 200usize),
        (&a, &b, a6, b6, 41001, 5354, 50, 300),
        (&b, &a, b4, a4, 5353, 41000, 80, 120),
        (&b, &a, b6, a6, 5354, 41001, 40, 500),
    ] {
        let got = udp_exchange(
            from,
            to,
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport),
            count,
            payload,
        )?;
        let iphdr = if src.is_ipv4() { 20 } else { 40 };
        expect.push(Expect {
            iface: iface_of(dst),
            transport: "udp",
            src,
            dst,
            sport,
            dport,
            proto: 17,
            sent: format!("{count} x {payload} B, {got} received"),
            exact: Some((count as u64, count as u64 * (iphdr + 8 + payload as u64))),
            payload_floor: 0,
        });
    }

    // ICMP echo from A: requests A -> B, replies B -> A (same size), exact both ways.
    for (src, dst, request, reply, tr, iphdr) in [
        (a4, b4, 8u16, 0u16, "icmp", 20u64),
        (a6, b6, 128, 129, "ipv6-icmp", 40),
    ] {
        let (count, payload) = (5u32, 56usize);
        let got = icmp_echo(&a, src, dst, count, payload, 0x4242)?;
        let bytes = count as u64 * (iphdr + 8 + payload as u64);
        let proto = if src.is_ipv4() { 1 } else { 58 };
        expect.push(Expect {
            iface: iface_of(dst),
            transport: tr,
            src,
            dst,
            sport: 0,
            dport: request,
            proto,
            sent: format!("{count} echo requests x {payload} B"),
            exact: Some((count as u64, bytes)),
            payload_floor: 0,
        });
        expect.push(Expect {
            iface: iface_of(src),
            transport: tr,
            src: dst,
            dst: src,
            sport: 0,
            dport: reply,
            proto,
            sent: format!("{got} echo replies"),
            exact: Some((got as u64, got as u64 * (iphdr + 8 + payload as u64))),
            payload_floor: 0,
        });
    }

    // TCP, both ways: data one way, acknowledgements the other.
    for (from, to, src, dst, sport, dport, bytes) in [
        (&a, &b, a4, b4, 42000u16, 8080u16, 4usize << 20),
        (&a, &b, a6, b6, 42001, 8081, 1 << 20),
        (&b, &a, b4, a4, 42002, 8082, 2 << 20),
    ] {
        let got = tcp_transfer(
            from,
            to,
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport),
            bytes,
        )?;
        expect.push(Expect {
            iface: iface_of(dst),
            transport: "tcp",
            src,
            dst,
            sport,
            dport,
            proto: 6,
            sent: format!("{got} B payload"),
            exact: None,
            payload_floor: got as u64,
        });
        expect.push(Expect {
            iface: iface_of(src),
            transport: "tcp",
            src: dst,
            dst: src,
            sport: dport,
            dport: sport,
            proto: 6,
            sent: "acknowledgements".into(),
            exact: None,
            payload_floor: 0,
        });
    }

    // Let the last packets reach both ends before stopping the observers and exporters.
    std::thread::sleep(Duration::from_millis(700));
    let captured_a = flows_of(&cap_a.stop().context("capture on host A")?);
    let captured_b = flows_of(&cap_b.stop().context("capture on host B")?);
    on_a.stop()?;
    on_b.stop()?;
    drop(link);
    drop(a);
    drop(b);
    println!(
        "demo: namespaces removed; Parquet files of both hosts in {}\n",
        flows.display()
    );

    let status = Command::new(flowlens)
        .args(["top", "-n", "20", "--input"])
        .arg(&flows)
        .status()?;
    if !status.success() {
        bail!("flowlens top failed");
    }
    let seen = exported(flowlens, &flows)?;

    let mut bad = 0u32;
    for (title, rx_iface, captured) in [
        (
            "A -> B, exported by flowlens on host B",
            iface_of(b4),
            &captured_b,
        ),
        (
            "B -> A, exported by flowlens on host A",
            iface_of(a4),
            &captured_a,
        ),
    ] {
        println!("\ndemo: {title} ({rx_iface}); packets / IP-layer bytes");
        println!(
            "  {:<62} {:<26} {:>15} {:>15}",
            "flow", "sent", "captured", "exported"
        );
        for e in expect.iter().filter(|e| e.iface == rx_iface) {
            let got = seen.get(&e.id()).copied().unwrap_or_default();
            let cap = captured.get(&e.capture_key()).copied().unwrap_or_default();
            let ok = got == cap
                && got.0 > 0
                && e.exact.is_none_or(|x| x == got)
                && got.1 > e.payload_floor;
            bad += !ok as u32;
            let flow = match e.transport {
                "icmp" | "ipv6-icmp" => {
                    format!("{} {} -> {} type {}", e.transport, e.src, e.dst, e.dport)
                }
                _ => format!(
                    "{} {} -> {}",
                    e.transport,
                    SocketAddr::new(e.src, e.sport),
                    SocketAddr::new(e.dst, e.dport)
                ),
            };
            println!(
                "  {flow:<62} {:<26} {:>15} {:>15}   {}",
                e.sent,
                format!("{}/{}", cap.0, cap.1),
                format!("{}/{}", got.0, got.1),
                if ok { "ok" } else { "MISMATCH" }
            );
        }
    }
    if bad > 0 {
        bail!("{bad} flows did not match what was sent and captured");
    }
    println!(
        "\ndemo: every flow, both directions, matches what was sent (UDP, ICMP: exactly) and what \
         an independent capture saw (all: exactly)."
    );

    let html = flows.join("report.html");
    // veth has no line rate: 1 Gbit/s per direction stands in for one, so that the report
    // shows utilisation.
    let status = Command::new(flowlens)
        .args(["report", "--quiet", "--bucket", "1s", "--input"])
        .arg(&flows)
        .arg("--html")
        .arg(&html)
        .arg("--link-capacity")
        .arg(format!("{}=1Gbit", iface_of(a4)))
        .arg("--link-capacity")
        .arg(format!("{}=1Gbit", iface_of(b4)))
        .stdout(Stdio::null())
        .status()?;
    if !status.success() || !html.is_file() {
        bail!("flowlens report did not write {}", html.display());
    }
    println!("demo: HTML capacity report of this run: {}", html.display());
    Ok(())
}

/// Exported (packets, bytes) per flow, summed over records, from `flowlens top --csv`.
fn exported(flowlens: &Path, flows: &Path) -> Result<BTreeMap<FlowId, (u64, u64)>> {
    let out = Command::new(flowlens)
        .args(["top", "--csv", "--input"])
        .arg(flows)
        .output()?;
    if !out.status.success() {
        bail!(
            "flowlens top --csv failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let csv = String::from_utf8_lossy(&out.stdout);
    let mut lines = csv.lines();
    let header = lines.next().unwrap_or_default();
    let want = "observation_point,interface_name,network_transport,source_address,source_port,\
                destination_address,destination_port,icmp_type,icmp_code,packets,bytes,records";
    if header != want {
        bail!("flowlens top --csv: unexpected header {header:?}");
    }
    let mut seen: BTreeMap<FlowId, (u64, u64)> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 12 {
            bail!("flowlens top --csv: unexpected line {line:?}");
        }
        let icmp = f[2] == "icmp" || f[2] == "ipv6-icmp";
        let (sport, dport) = if icmp {
            (0, f[7].parse()?)
        } else {
            (f[4].parse()?, f[6].parse()?)
        };
        let v = seen
            .entry((
                f[1].to_string(),
                f[2].to_string(),
                f[3].to_string(),
                f[5].to_string(),
                sport,
                dport,
            ))
            .or_default();
        v.0 += f[9].parse::<u64>()?;
        v.1 += f[10].parse::<u64>()?;
    }
    Ok(seen)
}
