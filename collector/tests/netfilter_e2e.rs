//! End-to-end tests of the netfilter-hook probe with real kernel hooks and real traffic, in the
//! topology host A — router R — host B (testkit's `routed`: two veth pairs, forwarding on in R).
//! `flowlens run` runs inside a namespace; its Parquet output is read back with the parquet crate
//! and compared with what was sent and with independent AF_PACKET captures (parsed by
//! etherparse). Links are inspected from the outside, through `/proc/PID/fdinfo` and the kernel's
//! id lookups. Needs root (CI runs as root); never skips.
//!
//! Every link has `gso_max_segs 1`, so TCP leaves A as MTU-sized packets: a netfilter hook sees
//! one skb per wire packet and the captures, the hooks and "what was sent" agree exactly.

use std::{
    collections::BTreeMap,
    fs::File,
    net::SocketAddr,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use arrow_array::{Array, Int64Array, StringArray, UInt8Array, UInt16Array, UInt32Array};
use flowlens::{
    netfilter::{Hook, NetfilterError, btf::Btf, nf_offsets},
    probe::Probe,
};
use flowlens_testkit::{
    Capture, FlowTuple, Netns, Routed, flows_of, ifindex, routed, tcp_transfer, temp_dir,
    udp_exchange,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");

/// A - R - B with GSO off on every link end.
fn topology(tag: &str) -> Routed {
    let t = routed(tag).unwrap();
    t.ar.disable_gso().unwrap();
    t.rb.disable_gso().unwrap();
    t
}

/// One netfilter link of a process, as `/proc/PID/fdinfo` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct NfLink {
    hooknum: u32,
    pf: u32,
    prio: i32,
    link_id: u32,
    prog_id: u32,
}

/// The netfilter links whose fds process `pid` holds.
fn nf_links(pid: u32) -> Vec<NfLink> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if !text.lines().any(|l| l == "link_type:\tnetfilter") {
            continue;
        }
        // "link_id:\t12", "prog_id:\t34", "pf:\t2\thooknum:\t3\tprio:\t-450"
        let mut fields = BTreeMap::new();
        for l in text.lines() {
            let parts: Vec<&str> = l.split('\t').collect();
            for kv in parts.chunks(2) {
                if let [k, v] = kv {
                    fields.insert(k.trim_end_matches(':').to_string(), v.to_string());
                }
            }
        }
        let num = |k: &str| -> i64 {
            fields
                .get(k)
                .unwrap_or_else(|| panic!("no {k} in fdinfo:\n{text}"))
                .parse()
                .unwrap()
        };
        out.push(NfLink {
            hooknum: num("hooknum") as u32,
            pf: num("pf") as u32,
            prio: num("prio") as i32,
            link_id: num("link_id") as u32,
            prog_id: num("prog_id") as u32,
        });
    }
    out.sort();
    out
}

/// Starts `flowlens run ARGS --sink parquet:OUT` in `ns` and waits until it holds `links`
/// netfilter links (and, with `xdp_if`, until XDP is attached there).
fn start(ns: &Netns, out: &Path, args: &[&str], links: usize, xdp_if: Option<&str>) -> Child {
    start_cmd(ns.command(FLOWLENS), ns, out, args, links, xdp_if)
}

/// Like [`start`], with `cmd` being the command that ends up exec'ing flowlens (same pid).
fn start_cmd(
    mut cmd: std::process::Command,
    ns: &Netns,
    out: &Path,
    args: &[&str],
    links: usize,
    xdp_if: Option<&str>,
) -> Child {
    let mut child = cmd
        .arg("run")
        .args(args)
        .arg("--sink")
        .arg(format!("parquet:{}", out.display()))
        .args(["--drain-interval", "20s", "--idle-timeout", "30s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flowlens");
    let t0 = Instant::now();
    loop {
        let nf_ready = nf_links(child.id()).len() == links;
        let xdp_ready = xdp_if.is_none_or(|i| ns.xdp_attached(i).unwrap());
        if nf_ready && xdp_ready {
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "flowlens exited early ({st}):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "flowlens not attached after 20 s (want {links} netfilter links, XDP on {xdp_if:?})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// SIGINT, wait, return stderr (echoed); asserts a clean exit and the conservation check.
fn stop(child: Child) -> String {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprint!("{err}");
    assert!(out.status.success(), "flowlens exited with {}", out.status);
    assert!(
        err.contains("conservation: every keyed packet was drained")
            && err.contains("lost_packets=0"),
        "conservation check did not pass:\n{err}"
    );
    err
}

/// Where and how a flow was seen: (observation point, interface name, interface index,
/// direction).
type Point = (String, String, u32, String);

/// Every record read back, summed per (point, tuple) as (packets, bytes).
fn read_records(dir: &Path) -> BTreeMap<(Point, FlowTuple), (u64, u64)> {
    let files = flowlens::top::parquet_files(dir).unwrap();
    assert!(!files.is_empty(), "no parquet files in {}", dir.display());
    let mut out: BTreeMap<(Point, FlowTuple), (u64, u64)> = BTreeMap::new();
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            let s = |n: &str| {
                col(n)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let u16c = |n: &str| {
                col(n)
                    .as_any()
                    .downcast_ref::<UInt16Array>()
                    .unwrap()
                    .clone()
            };
            let i64c = |n: &str| {
                col(n)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            let (obs, ifn, dir_, src, dst) = (
                s("observation_point"),
                s("interface_name"),
                s("direction"),
                s("source_address"),
                s("destination_address"),
            );
            let ifi = col("interface_index")
                .as_any()
                .downcast_ref::<UInt32Array>()
                .unwrap()
                .clone();
            let proto = col("protocol")
                .as_any()
                .downcast_ref::<UInt8Array>()
                .unwrap()
                .clone();
            let (sp, dp, pk, by) = (
                u16c("source_port"),
                u16c("destination_port"),
                i64c("packets"),
                i64c("bytes"),
            );
            for i in 0..b.num_rows() {
                let p = proto.value(i);
                let ports = matches!(p, 6 | 17);
                let t = FlowTuple {
                    src: src.value(i).parse().unwrap(),
                    dst: dst.value(i).parse().unwrap(),
                    proto: p,
                    src_port: if ports { sp.value(i) } else { 0 },
                    dst_port: if ports { dp.value(i) } else { 0 },
                };
                let point = (
                    obs.value(i).to_string(),
                    ifn.value(i).to_string(),
                    ifi.value(i),
                    dir_.value(i).to_string(),
                );
                let e = out.entry((point, t)).or_default();
                e.0 += pk.value(i) as u64;
                e.1 += by.value(i) as u64;
            }
        }
    }
    out
}

/// The records of observation point `obs` between A and B: tuple → (point, packets, bytes).
fn at_point(
    recs: &BTreeMap<(Point, FlowTuple), (u64, u64)>,
    obs: &str,
    t: &Routed,
) -> BTreeMap<FlowTuple, (Point, u64, u64)> {
    let mut out = BTreeMap::new();
    for ((point, tuple), (p, b)) in recs {
        if point.0 != obs || !between_a_and_b(t, tuple) {
            continue;
        }
        let prev = out.insert(*tuple, (point.clone(), *p, *b));
        assert!(
            prev.is_none(),
            "{tuple:?} at {obs} on two interfaces: {prev:?} and {point:?}"
        );
    }
    out
}

/// The test's own traffic: A's and B's global addresses, either way (link-local chatter and
/// anything else is left out).
fn between_a_and_b(t: &Routed, x: &FlowTuple) -> bool {
    [false, true].into_iter().any(|v6| {
        let (a, b) = (t.a_addr(v6), t.b_addr(v6));
        (x.src == a && x.dst == b) || (x.src == b && x.dst == a)
    })
}

/// Traffic both ways: UDP A→B and B→A over IPv4 and IPv6, and a TCP transfer A→B over each.
/// Returns the UDP flows sent as (tuple, datagrams, IP bytes).
fn traffic(t: &Routed, port_base: u16) -> Vec<(FlowTuple, u64, u64)> {
    let mut sent = Vec::new();
    for v6 in [false, true] {
        let (a, b) = (t.a_addr(v6), t.b_addr(v6));
        let hdr: u64 = if v6 { 40 } else { 20 };
        let p = port_base + if v6 { 10 } else { 0 };
        for (from, to, src, dst, n, len) in [
            (&t.a, &t.b, a, b, 37u32, 120usize),
            (&t.b, &t.a, b, a, 23, 333),
        ] {
            let sp = if src == a { p } else { p + 1 };
            let dp = p + 2;
            let got = udp_exchange(
                from,
                to,
                SocketAddr::new(src, sp),
                SocketAddr::new(dst, dp),
                n,
                len,
            )
            .unwrap();
            assert_eq!(got, n);
            sent.push((
                FlowTuple {
                    src,
                    dst,
                    proto: 17,
                    src_port: sp,
                    dst_port: dp,
                },
                n as u64,
                n as u64 * (hdr + 8 + len as u64),
            ));
        }
        let bytes = if v6 { 700_000 } else { 1_500_000 };
        let got = tcp_transfer(
            &t.a,
            &t.b,
            SocketAddr::new(a, p + 3),
            SocketAddr::new(b, p + 4),
            bytes,
        )
        .unwrap();
        assert_eq!(got, bytes);
    }
    sent
}

fn assert_udp_sent(got: &BTreeMap<FlowTuple, (Point, u64, u64)>, sent: &[(FlowTuple, u64, u64)]) {
    for (tuple, n, bytes) in sent {
        let (_, p, b) = got
            .get(tuple)
            .unwrap_or_else(|| panic!("no record for sent {tuple:?}"));
        assert_eq!((*p, *b), (*n, *bytes), "{tuple:?}");
    }
}

/// The capture's flows between A and B.
fn truth(frames: &[Vec<u8>], t: &Routed) -> BTreeMap<FlowTuple, (u64, u64)> {
    flows_of(frames)
        .into_iter()
        .filter(|(x, _)| between_a_and_b(t, x))
        .collect()
}

/// The `bpf(2)` id lookups (`BPF_LINK_GET_FD_BY_ID`, `BPF_PROG_GET_FD_BY_ID`): Ok(()) when the
/// object exists (the fd is closed again), the errno otherwise.
fn bpf_get_fd_by_id(link: bool, id: u32) -> Result<(), i32> {
    use aya_obj::generated::{bpf_attr, bpf_cmd};
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_6.__bindgen_anon_1.link_id = id; // same slot as prog_id
    let cmd = if link {
        bpf_cmd::BPF_LINK_GET_FD_BY_ID
    } else {
        bpf_cmd::BPF_PROG_GET_FD_BY_ID
    };
    // SAFETY: a valid attr of the right size for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: closing the fd the kernel just gave us.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Waits (at most 5 s: links and programs are freed after an RCU grace period) until none of
/// the links nor their program exists any more.
fn assert_links_gone(links: &[NfLink]) {
    let t0 = Instant::now();
    loop {
        let alive: Vec<String> = links
            .iter()
            .filter(|l| bpf_get_fd_by_id(true, l.link_id).is_ok())
            .map(|l| format!("link {}", l.link_id))
            .chain(
                links
                    .iter()
                    .map(|l| l.prog_id)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .filter(|p| bpf_get_fd_by_id(false, *p).is_ok())
                    .map(|p| format!("prog {p}")),
            )
            .collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still present 5 s after shutdown: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for l in links {
        assert_eq!(bpf_get_fd_by_id(true, l.link_id), Err(libc::ENOENT));
        assert_eq!(bpf_get_fd_by_id(false, l.prog_id), Err(libc::ENOENT));
    }
}

/// flowlens in R on `forward` (no XDP at all): every forwarded packet of a TCP transfer and of
/// UDP both ways, IPv4 and IPv6, with exact counts against the captures on R's two interfaces
/// and against what was sent; the in-interface as the flow's interface.
#[test]
fn forward_in_router_counts_forwarded_traffic_exactly() {
    let t = topology("nffw");
    let out = temp_dir("nffw").unwrap();
    let child = start(&t.r, &out, &["--netfilter", "forward"], 2, None);
    let links = nf_links(child.id());
    assert_eq!(
        links
            .iter()
            .map(|l| (l.hooknum, l.pf, l.prio))
            .collect::<Vec<_>>(),
        vec![(2, 2, -450), (2, 10, -450)],
        "{links:?}"
    );
    // --netfilter alone: no XDP anywhere (the default XDP interface set must not kick in).
    for i in [&t.ar.b_if, &t.rb.a_if] {
        let l = t.r.ip_output(&["link", "show", "dev", i]).unwrap();
        assert!(!l.contains("xdp"), "XDP attached to {i}: {l}");
    }
    let cap_from_a = Capture::start(&t.r, &t.ar.b_if).unwrap();
    let cap_from_b = Capture::start(&t.r, &t.rb.a_if).unwrap();
    let sent = traffic(&t, 40000);
    stop(child);
    assert_links_gone(&links);

    let from_a = truth(&cap_from_a.stop().unwrap(), &t);
    let from_b = truth(&cap_from_b.stop().unwrap(), &t);
    let recs = read_records(&out);
    let got = at_point(&recs, "nf_forward", &t);
    let r_a = (t.ar.b_if.clone(), ifindex(&t.r, &t.ar.b_if).unwrap());
    let r_b = (t.rb.a_if.clone(), ifindex(&t.r, &t.rb.a_if).unwrap());
    let mut want = BTreeMap::new();
    for (caps, (name, index)) in [(&from_a, &r_a), (&from_b, &r_b)] {
        for (tuple, (p, b)) in caps {
            let point = (
                "nf_forward".to_string(),
                name.clone(),
                *index,
                "ingress".to_string(),
            );
            want.insert(*tuple, (point, *p, *b));
        }
    }
    assert!(want.len() >= 8, "captures miss traffic: {want:#?}");
    assert_eq!(got, want, "nf_forward records differ from R's captures");
    assert_udp_sent(&got, &sent);
    // TCP both ways (data A→B, ACKs B→A) for both families.
    assert_eq!(got.keys().filter(|k| k.proto == 6).count(), 4, "{got:#?}");
    let others: Vec<_> = recs.keys().filter(|(p, _)| p.0 != "nf_forward").collect();
    assert!(others.is_empty(), "other observation points: {others:?}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// flowlens in A on `local_out` and `post_routing`: the traffic A generates (its UDP and the TCP
/// data it sends; not what it receives), at both points, with A's output interface, exact
/// against the capture of what arrived at R from A; links are gone after shutdown.
#[test]
fn local_out_and_post_routing_see_what_a_sends() {
    let t = topology("nfout");
    let out = temp_dir("nfout").unwrap();
    let child = start(
        &t.a,
        &out,
        &["--netfilter", "local_out,post_routing"],
        4,
        None,
    );
    let links = nf_links(child.id());
    assert_eq!(
        links.iter().map(|l| (l.hooknum, l.pf)).collect::<Vec<_>>(),
        vec![(3, 2), (3, 10), (4, 2), (4, 10)],
        "{links:?}"
    );
    assert_eq!(
        links
            .iter()
            .map(|l| l.prog_id)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        1,
        "one program behind every link: {links:?}"
    );
    let cap = Capture::start(&t.r, &t.ar.b_if).unwrap();
    let sent = traffic(&t, 41000);
    stop(child);
    assert_links_gone(&links);

    let from_a: BTreeMap<_, _> = truth(&cap.stop().unwrap(), &t)
        .into_iter()
        .filter(|(x, _)| x.src == t.a_addr(x.src.is_ipv6()))
        .collect();
    assert!(from_a.len() >= 4, "capture misses A's traffic: {from_a:#?}");
    let a_if = (t.ar.a_if.clone(), ifindex(&t.a, &t.ar.a_if).unwrap());
    let recs = read_records(&out);
    for obs in ["nf_local_out", "nf_post_routing"] {
        let got = at_point(&recs, obs, &t);
        let want: BTreeMap<_, _> = from_a
            .iter()
            .map(|(tuple, (p, b))| {
                let point = (
                    obs.to_string(),
                    a_if.0.clone(),
                    a_if.1,
                    "egress".to_string(),
                );
                (*tuple, (point, *p, *b))
            })
            .collect();
        assert_eq!(got, want, "{obs} records differ from what reached R from A");
        let a_sent: Vec<_> = sent
            .iter()
            .filter(|(x, _, _)| x.src == t.a_addr(x.src.is_ipv6()))
            .cloned()
            .collect();
        assert_udp_sent(&got, &a_sent);
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// XDP on R's interface towards A and netfilter `forward` in one run: both observation points,
/// each exact against its own truth (XDP: what R received from A; forward: what R received from
/// either side), in one set of maps drained once (the conservation check covers both).
#[test]
fn xdp_and_netfilter_in_one_run() {
    let t = topology("nfxdp");
    let out = temp_dir("nfxdp").unwrap();
    let child = start(
        &t.r,
        &out,
        &[
            "--xdp",
            &t.ar.b_if,
            "--xdp-mode",
            "skb",
            "--netfilter",
            "forward",
        ],
        2,
        Some(&t.ar.b_if),
    );
    let cap_from_a = Capture::start(&t.r, &t.ar.b_if).unwrap();
    let cap_from_b = Capture::start(&t.r, &t.rb.a_if).unwrap();
    let sent = traffic(&t, 42000);
    stop(child);
    let from_a = truth(&cap_from_a.stop().unwrap(), &t);
    let from_b = truth(&cap_from_b.stop().unwrap(), &t);
    let recs = read_records(&out);

    let strip = |m: BTreeMap<FlowTuple, (Point, u64, u64)>| -> BTreeMap<FlowTuple, (u64, u64)> {
        m.into_iter().map(|(k, (_, p, b))| (k, (p, b))).collect()
    };
    let xdp = at_point(&recs, "xdp", &t);
    assert!(
        xdp.values()
            .all(|(p, _, _)| p.1 == t.ar.b_if && p.3 == "ingress"),
        "{xdp:#?}"
    );
    assert_eq!(strip(xdp), from_a, "xdp records differ from the capture");
    let fwd = at_point(&recs, "nf_forward", &t);
    assert_udp_sent(&fwd, &sent);
    let mut want = from_a.clone();
    want.extend(from_b);
    assert_eq!(
        strip(fwd),
        want,
        "nf_forward records differ from the captures"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// `ip netns exec NS unshare -m sh -c 'mount -t tmpfs none /sys/kernel/btf; exec flowlens …'`:
/// flowlens in `ns` with the kernel's BTF hidden (a private mount namespace, nothing leaks),
/// which makes the netfilter probe unavailable exactly as on a kernel without it.
fn without_kernel_btf(ns: &Netns) -> std::process::Command {
    let mut cmd = ns.command("unshare");
    cmd.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs none /sys/kernel/btf && exec \"$0\" \"$@\"",
        FLOWLENS,
    ]);
    cmd
}

/// When the kernel cannot run the netfilter probe (here: its BTF is hidden, so the struct offsets
/// cannot be read) and XDP was asked for too, flowlens warns and runs with XDP only, counting
/// exactly; with `--netfilter` alone it exits with an error saying why.
#[test]
fn netfilter_unavailable_falls_back_to_xdp_only() {
    falls_back_to_xdp_only(
        "nffb",
        without_kernel_btf,
        "/sys/kernel/btf/vmlinux",
        &format!(
            "flowlens: error: --netfilter: Linux {} has no usable kernel BTF",
            flowlens::kernel_support::kernel_release()
        ),
    );
}

/// The same on a kernel that really lacks netfilter BPF programs (before 6.4, or without
/// CONFIG_NETFILTER_BPF_LINK, like Debian 12's 6.1). Ignored on the host, which has them; the
/// 6.1 QEMU guest of `cargo xtask test` runs it (`--ignored`, xtask/src/qemu.rs).
#[test]
#[ignore = "needs a kernel without netfilter BPF programs: run in the 6.1 guest by cargo xtask test"]
fn netfilter_missing_from_the_kernel_falls_back_to_xdp_only() {
    falls_back_to_xdp_only(
        "nfmk",
        |ns: &Netns| ns.command(FLOWLENS),
        "they need Linux >= 6.4 built with CONFIG_NETFILTER_BPF_LINK",
        &format!(
            "flowlens: error: --netfilter: Linux {} has no netfilter BPF programs and links",
            flowlens::kernel_support::kernel_release()
        ),
    );
}

/// `flowlens run --xdp B --netfilter forward` in R, started with `cmd`, warns with `reason` and
/// counts A's traffic exactly with XDP only; `--netfilter` alone fails with `alone_error`.
fn falls_back_to_xdp_only(
    tag: &str,
    cmd: fn(&Netns) -> std::process::Command,
    reason: &str,
    alone_error: &str,
) {
    let t = topology(tag);
    let out = temp_dir(tag).unwrap();
    let child = start_cmd(
        cmd(&t.r),
        &t.r,
        &out,
        &[
            "--xdp",
            &t.ar.b_if,
            "--xdp-mode",
            "skb",
            "--netfilter",
            "forward",
        ],
        0,
        Some(&t.ar.b_if),
    );
    assert!(nf_links(child.id()).is_empty());
    let cap_from_a = Capture::start(&t.r, &t.ar.b_if).unwrap();
    let sent = traffic(&t, 43000);
    let err = stop(child);
    assert!(
        err.contains("WARN")
            && err.contains("netfilter hooks unavailable on this kernel: continuing with XDP only")
            && err.contains(reason),
        "{err}"
    );
    let recs = read_records(&out);
    let xdp = at_point(&recs, "xdp", &t);
    let from_a = truth(&cap_from_a.stop().unwrap(), &t);
    let got: BTreeMap<_, _> = xdp.iter().map(|(k, (_, p, b))| (*k, (*p, *b))).collect();
    assert_eq!(got, from_a);
    let a_sent: Vec<_> = sent
        .iter()
        .filter(|(x, _, _)| x.src == t.a_addr(x.src.is_ipv6()))
        .cloned()
        .collect();
    assert_udp_sent(&xdp, &a_sent);
    assert!(
        recs.keys().all(|(p, _)| p.0 == "xdp"),
        "{:?}",
        recs.keys().map(|(p, _)| &p.0).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&out).unwrap();

    // --netfilter alone: nothing to fall back to.
    let res = cmd(&t.r)
        .args(["run", "--netfilter", "forward", "--sink", "stdout"])
        .args(["--duration", "5s"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "{err}");
    assert!(err.contains(alone_error) && err.contains(reason), "{err}");
}

/// Bad `--netfilter` / `--netfilter-priority` values: exit 1 before anything is attached, with
/// one line naming the option and the value.
#[test]
fn bad_netfilter_values_are_rejected() {
    for (args, want) in [
        (
            vec!["--netfilter", "forward,prerouting"],
            "--netfilter: unknown netfilter hook \"prerouting\": expected a comma list of pre_routing, local_in, forward, local_out, post_routing",
        ),
        (
            vec!["--netfilter", "local_in,local_in"],
            "--netfilter: hook local_in given twice",
        ),
        (
            vec![
                "--netfilter",
                "forward",
                "--netfilter-priority",
                "2147483647",
            ],
            "reserved by the kernel",
        ),
        (
            vec!["--netfilter", "forward", "--netfilter-priority", "first"],
            "--netfilter-priority",
        ),
    ] {
        let out = std::process::Command::new(FLOWLENS)
            .arg("run")
            .args(&args)
            .args(["--sink", "stdout", "--duration", "1s"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            !err.contains("flowlens running"),
            "{args:?} got as far as attaching: {err}"
        );
    }
}

/// On a kernel that has netfilter links, a hook that fails to attach is an error naming the hook,
/// the family and the kernel's reason (here the priority the kernel reserves for conntrack
/// confirm, which the CLI would refuse; the library passes it through). Run in a namespace of
/// its own so nothing is hooked in the host's.
#[test]
fn attach_failure_names_the_hook_and_the_reason() {
    let ns = Netns::new("nfbad").unwrap();
    let msg = ns
        .run_in(|| {
            let offsets = nf_offsets(&Btf::from_kernel().unwrap()).unwrap();
            let mut probe = Probe::load_with(64, Some(offsets)).unwrap();
            let e = probe.attach_netfilter(Hook::LocalIn, i32::MAX).unwrap_err();
            let nf = e
                .downcast_ref::<NetfilterError>()
                .expect("a NetfilterError");
            assert!(
                matches!(nf, NetfilterError::Attach { hook: Hook::LocalIn, source, .. }
                    if source.raw_os_error() == Some(libc::ERANGE)),
                "{nf:?}"
            );
            assert!(probe.netfilter_links().is_empty());
            format!("{e:#}")
        })
        .unwrap();
    assert!(
        msg.contains("hook local_in")
            && msg.contains("ipv4")
            && msg.contains("priority 2147483647")
            && msg.contains("Numerical result out of range"),
        "{msg}"
    );
}
