//! End-to-end tests with real kernel programs and real traffic: two hosts in network namespaces
//! joined by a veth pair, `flowlens run` with XDP on host B, traffic from A, Parquet read back
//! with the parquet crate and compared with (a) what was sent and (b) an independent AF_PACKET
//! capture parsed by etherparse. Needs root (CI runs as root); never skips.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use flowlens_testkit::{
    Capture, FlowTuple, Link, Netns, flows_of, icmp_echo, tcp_transfer, temp_dir, udp_exchange,
    veth_pair,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

mod common;
use common::read_records;

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Hosts A and B (namespaces `fl-<tag>a-…`, `fl-<tag>b-…`) joined by a veth pair, and an
/// output directory.
fn two_hosts(tag: &str) -> (Netns, Netns, Link, PathBuf) {
    let a = Netns::new(&format!("{tag}a")).unwrap();
    let b = Netns::new(&format!("{tag}b")).unwrap();
    let link = veth_pair(&a, &b).unwrap();
    (a, b, link, temp_dir(tag).unwrap())
}

fn start_flowlens(ns: &Netns, link: &Link, out: &Path, extra: &[&str]) -> Child {
    start_flowlens_mode(ns, link, out, "skb", extra)
}

fn start_flowlens_mode(ns: &Netns, link: &Link, out: &Path, mode: &str, extra: &[&str]) -> Child {
    let child = ns
        .command(FLOWLENS)
        .args(["run", "--xdp", &link.b_if, "--xdp-mode", mode, "--sink"])
        .arg(format!("parquet:{}", out.display()))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flowlens");
    ns.wait_xdp(&link.b_if, true).unwrap();
    child
}

/// Signals flowlens, waits, returns its exit status and stderr (which is echoed).
fn stop(child: Child, sig: i32) -> (std::process::ExitStatus, String) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprint!("{err}");
    (out.status, err)
}

/// The shutdown conservation check found nothing lost.
fn assert_nothing_lost(stderr: &str) {
    assert!(
        stderr.contains("conservation: every keyed packet was drained")
            && stderr.contains("lost_packets=0"),
        "conservation check did not pass:\n{stderr}"
    );
}

/// XDP on B, a TCP transfer, UDP and ICMP echo over IPv4 and IPv6 from A: exact counts per flow.
#[test]
fn xdp_exports_exact_counts_for_real_traffic() {
    let (a, b, link, out) = two_hosts("e2e");
    // A drain interval longer than the traffic: the counts checked here come from the final
    // drain after the probe is detached (periodic drains are covered below).
    let child = start_flowlens(
        &b,
        &link,
        &out,
        &["--drain-interval", "20s", "--idle-timeout", "30s"],
    );
    let cap = Capture::start(&b, &link.b_if).unwrap();

    let (a4, b4, a6, b6) = (
        IpAddr::V4(link.a_v4),
        IpAddr::V4(link.b_v4),
        IpAddr::V6(link.a_v6),
        IpAddr::V6(link.b_v6),
    );
    let sent_udp = [
        (a4, b4, 40001u16, 7001u16, 37u32, 120usize, 20u64),
        (a6, b6, 40002, 7002, 23, 333, 40),
    ];
    for &(s, d, sp, dp, n, len, _) in &sent_udp {
        assert_eq!(
            udp_exchange(
                &a,
                &b,
                SocketAddr::new(s, sp),
                SocketAddr::new(d, dp),
                n,
                len
            )
            .unwrap(),
            n
        );
    }
    assert_eq!(icmp_echo(&a, a4, b4, 4, 56, 0x1234).unwrap(), 4);
    assert_eq!(icmp_echo(&a, a6, b6, 3, 100, 0x1235).unwrap(), 3);
    assert_eq!(
        tcp_transfer(
            &a,
            &b,
            SocketAddr::new(a4, 40003),
            SocketAddr::new(b4, 7003),
            3_000_000
        )
        .unwrap(),
        3_000_000
    );
    assert_eq!(
        tcp_transfer(
            &a,
            &b,
            SocketAddr::new(a6, 40004),
            SocketAddr::new(b6, 7004),
            1_000_000
        )
        .unwrap(),
        1_000_000
    );

    let (st, stderr) = stop(child, libc::SIGINT);
    assert!(st.success(), "flowlens exited with {st}");
    assert_nothing_lost(&stderr);
    assert!(
        !b.xdp_attached(&link.b_if).unwrap(),
        "XDP program still attached after shutdown"
    );
    let frames = cap.stop().unwrap();
    let truth = flows_of(&frames);
    let got = read_records(&out, &link.b_if);

    // Only the test's own flows (A's global addresses to B's); link-local chatter is ignored.
    let ours = |t: &FlowTuple| (t.src == a4 && t.dst == b4) || (t.src == a6 && t.dst == b6);
    let truth: BTreeMap<_, _> = truth.into_iter().filter(|(t, _)| ours(t)).collect();
    let got_ours: BTreeMap<_, _> = got
        .iter()
        .filter(|(t, _)| ours(t))
        .map(|(t, s)| (*t, (s.packets, s.bytes)))
        .collect();
    assert_eq!(
        got_ours, truth,
        "exported flows differ from the AF_PACKET capture"
    );

    // And against what was sent.
    for &(s, d, sp, dp, n, len, hdr) in &sent_udp {
        let t = FlowTuple {
            src: s,
            dst: d,
            proto: 17,
            src_port: sp,
            dst_port: dp,
        };
        assert_eq!(
            got_ours[&t],
            (n as u64, n as u64 * (hdr + 8 + len as u64)),
            "udp {t:?}"
        );
    }
    assert_eq!(
        got_ours[&FlowTuple {
            src: a4,
            dst: b4,
            proto: 1,
            src_port: 0,
            dst_port: 0
        }],
        (4, 4 * (20 + 8 + 56))
    );
    assert_eq!(
        got_ours[&FlowTuple {
            src: a6,
            dst: b6,
            proto: 58,
            src_port: 0,
            dst_port: 0
        }],
        (3, 3 * (40 + 8 + 100))
    );
    let tcp4 = got_ours[&FlowTuple {
        src: a4,
        dst: b4,
        proto: 6,
        src_port: 40003,
        dst_port: 7003,
    }];
    assert!(tcp4.1 > 3_000_000 && tcp4.0 >= 3, "tcp v4 {tcp4:?}");
    let tcp6 = got_ours[&FlowTuple {
        src: a6,
        dst: b6,
        proto: 6,
        src_port: 40004,
        dst_port: 7004,
    }];
    assert!(tcp6.1 > 1_000_000, "tcp v6 {tcp6:?}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// Native (driver) XDP on veth: exact counts against what was sent (the AF_PACKET view differs
/// here because veth runs GRO after native XDP).
#[test]
fn native_xdp_on_veth_counts_what_was_sent() {
    let (a, b, link, out) = two_hosts("nat");
    let child = start_flowlens_mode(
        &b,
        &link,
        &out,
        "native",
        &["--drain-interval", "20s", "--idle-timeout", "30s"],
    );
    assert!(
        b.ip_output(&["link", "show", "dev", &link.b_if])
            .unwrap()
            .contains("xdp "),
        "not in driver mode"
    );
    let (a4, b4, a6, b6) = (
        IpAddr::V4(link.a_v4),
        IpAddr::V4(link.b_v4),
        IpAddr::V6(link.a_v6),
        IpAddr::V6(link.b_v6),
    );
    assert_eq!(
        udp_exchange(
            &a,
            &b,
            SocketAddr::new(a4, 30001),
            SocketAddr::new(b4, 6001),
            250,
            1000
        )
        .unwrap(),
        250
    );
    assert_eq!(
        udp_exchange(
            &a,
            &b,
            SocketAddr::new(a6, 30002),
            SocketAddr::new(b6, 6002),
            120,
            1200
        )
        .unwrap(),
        120
    );
    assert_eq!(icmp_echo(&a, a6, b6, 6, 32, 0x2222).unwrap(), 6);
    assert_eq!(
        tcp_transfer(
            &a,
            &b,
            SocketAddr::new(a4, 30003),
            SocketAddr::new(b4, 6003),
            2_000_000
        )
        .unwrap(),
        2_000_000
    );
    let (st, stderr) = stop(child, libc::SIGTERM);
    assert!(st.success(), "flowlens exited with {st}");
    assert_nothing_lost(&stderr);
    assert!(!b.xdp_attached(&link.b_if).unwrap());
    let got = read_records(&out, &link.b_if);
    let t = |src, dst, proto, sp, dp| {
        got[&FlowTuple {
            src,
            dst,
            proto,
            src_port: sp,
            dst_port: dp,
        }]
    };
    assert_eq!(
        (
            t(a4, b4, 17, 30001, 6001).packets,
            t(a4, b4, 17, 30001, 6001).bytes
        ),
        (250, 250 * 1028)
    );
    assert_eq!(
        (
            t(a6, b6, 17, 30002, 6002).packets,
            t(a6, b6, 17, 30002, 6002).bytes
        ),
        (120, 120 * 1248)
    );
    assert_eq!(
        (t(a6, b6, 58, 0, 0).packets, t(a6, b6, 58, 0, 0).bytes),
        (6, 6 * 80)
    );
    let tcp = t(a4, b4, 6, 30003, 6003);
    // Native XDP on veth sees MTU-sized segments: at least payload/1448 data packets.
    assert!(
        tcp.packets >= 2_000_000 / 1448 && tcp.bytes > 2_000_000,
        "{tcp:?}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// Counts through the periodic path: 100 ms drains while traffic flows, flows going idle and
/// coming back (several records per flow, merged across drains). The buffer swap makes every
/// drain exact: each packet is exported exactly once.
#[test]
fn periodic_drains_count_every_packet_once() {
    let (a, b, link, out) = two_hosts("per");
    let child = start_flowlens(
        &b,
        &link,
        &out,
        &["--drain-interval", "100ms", "--idle-timeout", "300ms"],
    );
    let (src, dst) = (IpAddr::V4(link.a_v4), IpAddr::V4(link.b_v4));
    const FLOWS: u16 = 8;
    const ROUNDS: u64 = 3;
    const PER_ROUND: u32 = 25;
    for _ in 0..ROUNDS {
        for i in 0..FLOWS {
            let got = udp_exchange(
                &a,
                &b,
                SocketAddr::new(src, 22000 + i),
                SocketAddr::new(dst, 9200),
                PER_ROUND,
                90,
            )
            .unwrap();
            assert_eq!(got, PER_ROUND);
        }
        // Longer than the idle timeout plus a drain: every flow ends and starts again.
        std::thread::sleep(Duration::from_millis(600));
    }
    let (st, stderr) = stop(child, libc::SIGINT);
    assert!(st.success(), "flowlens exited with {st}");
    assert_nothing_lost(&stderr);
    let got = read_records(&out, &link.b_if);
    for i in 0..FLOWS {
        let s = got[&FlowTuple {
            src,
            dst,
            proto: 17,
            src_port: 22000 + i,
            dst_port: 9200,
        }];
        let sent = ROUNDS * PER_ROUND as u64;
        assert_eq!(
            (s.packets, s.bytes),
            (sent, sent * (20 + 8 + 90)),
            "flow {i}"
        );
        assert!(
            s.records >= ROUNDS,
            "flow {i}: {} records, expected one per round",
            s.records
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// Issue 5's conservation test on real traffic: one sender thread per CPU pushes a known number
/// of packets over many flows while flowlens drains every 100 ms. Exported packets and bytes
/// equal what was sent and what an AF_PACKET capture saw, flow by flow, exactly.
#[test]
fn senders_on_every_cpu_with_100ms_drains_are_counted_exactly() {
    let (a, b, link, out) = two_hosts("cons");
    let child = start_flowlens(
        &b,
        &link,
        &out,
        &["--drain-interval", "100ms", "--idle-timeout", "400ms"],
    );
    let cap = Capture::start(&b, &link.b_if).unwrap();
    let cpus = std::thread::available_parallelism()
        .unwrap()
        .get()
        .clamp(2, 4);
    const FLOWS_PER_SENDER: u16 = 24;
    const PACKETS: u32 = 150;
    const PAYLOAD: usize = 64;
    let (a4, b4) = (link.a_v4, link.b_v4);
    let a = std::sync::Arc::new(a);
    let b = std::sync::Arc::new(b);
    let senders: Vec<_> = (0..cpus)
        .map(|cpu| {
            let (a, b) = (a.clone(), b.clone());
            std::thread::spawn(move || {
                flowlens_testkit::pin_to_cpu(cpu);
                let mut sent = 0u64;
                for i in 0..FLOWS_PER_SENDER {
                    let port = 23000 + cpu as u16 * 100 + i;
                    let got = udp_exchange(
                        &a,
                        &b,
                        SocketAddr::new(a4.into(), port),
                        SocketAddr::new(b4.into(), port),
                        PACKETS,
                        PAYLOAD,
                    )
                    .unwrap();
                    assert_eq!(got, PACKETS);
                    sent += got as u64;
                }
                sent
            })
        })
        .collect();
    let sent: u64 = senders.into_iter().map(|h| h.join().unwrap()).sum();
    std::thread::sleep(Duration::from_millis(300));
    let (st, stderr) = stop(child, libc::SIGTERM);
    assert!(st.success(), "flowlens exited with {st}");
    assert_nothing_lost(&stderr);
    let truth = flows_of(&cap.stop().unwrap());
    let got = read_records(&out, &link.b_if);
    let mut exported = (0u64, 0u64);
    for cpu in 0..cpus as u16 {
        for i in 0..FLOWS_PER_SENDER {
            let port = 23000 + cpu * 100 + i;
            let t = FlowTuple {
                src: a4.into(),
                dst: b4.into(),
                proto: 17,
                src_port: port,
                dst_port: port,
            };
            let s = got[&t];
            let want = (PACKETS as u64, PACKETS as u64 * (20 + 8 + PAYLOAD as u64));
            assert_eq!((s.packets, s.bytes), want, "{t:?}");
            assert_eq!(truth[&t], want, "capture of {t:?}");
            exported.0 += s.packets;
            exported.1 += s.bytes;
        }
    }
    assert_eq!(exported.0, sent);
    assert_eq!(exported.1, sent * (20 + 8 + PAYLOAD as u64));
    std::fs::remove_dir_all(&out).unwrap();
}

/// More new flows than the kernel buffer holds, but arriving over time: early drains (at half
/// the buffer) move them out before the LRU has to evict anything.
#[test]
fn early_drains_prevent_evictions() {
    let (a, b, link, out) = two_hosts("early");
    let child = start_flowlens(
        &b,
        &link,
        &out,
        &[
            "--max-flows",
            "64",
            "--drain-interval",
            "20s",
            "--idle-timeout",
            "30s",
        ],
    );
    for i in 0..160u16 {
        let src = SocketAddr::new(link.a_v4.into(), 24000 + i);
        assert_eq!(
            udp_exchange(
                &a,
                &b,
                src,
                SocketAddr::new(link.b_v4.into(), 9300 + i),
                2,
                10
            )
            .unwrap(),
            2
        );
        // About 10 new flows per 100 ms fill check: far below the 32-flow early-drain mark.
        std::thread::sleep(Duration::from_millis(10));
    }
    let (st, stderr) = stop(child, libc::SIGINT);
    assert!(st.success());
    assert_nothing_lost(&stderr);
    let got = read_records(&out, &link.b_if);
    for i in 0..160u16 {
        let t = FlowTuple {
            src: link.a_v4.into(),
            dst: link.b_v4.into(),
            proto: 17,
            src_port: 24000 + i,
            dst_port: 9300 + i,
        };
        assert_eq!(got[&t].packets, 2, "{t:?}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// A kernel map too small for the traffic (and early drains off): LRU evictions lose counts,
/// and the loss is reported with its exact size, per drain and at shutdown.
#[test]
fn lru_overflow_is_reported_not_silent() {
    let (a, b, link, out) = two_hosts("lru");
    let child = start_flowlens(
        &b,
        &link,
        &out,
        &[
            "--max-flows",
            "16",
            "--early-drain-fill",
            "0",
            "--drain-interval",
            "20s",
            "--idle-timeout",
            "30s",
        ],
    );
    let cap = Capture::start(&b, &link.b_if).unwrap();
    for i in 0..100u16 {
        let src = SocketAddr::new(link.a_v4.into(), 21000 + i);
        assert_eq!(
            udp_exchange(
                &a,
                &b,
                src,
                SocketAddr::new(link.b_v4.into(), 9100 + i),
                2,
                10
            )
            .unwrap(),
            2
        );
    }
    let (st, stderr) = stop(child, libc::SIGINT);
    assert!(st.success());
    let line = stderr
        .lines()
        .find(|l| l.contains("never reached user space"))
        .unwrap_or_else(|| panic!("no loss reported:\n{stderr}"));
    let lost: u64 = line
        .split("lost_packets=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let got: u64 = read_records(&out, &link.b_if)
        .values()
        .map(|s| s.packets)
        .sum();
    let keyed = stderr_count(&stderr, "keyed_packets=");
    // Every packet the probe keyed was either exported or reported lost...
    assert!(lost > 0, "{line}");
    assert_eq!(got + lost, keyed, "{line}");
    // ...and against what was sent (an AF_PACKET capture).
    let sent: u64 = flows_of(&cap.stop().unwrap())
        .iter()
        .filter(|(t, _)| (9100..9200).contains(&t.dst_port) && t.proto == 17)
        .map(|(_, (p, _))| *p)
        .sum();
    assert_eq!(sent, 200);
    let ours: u64 = read_records(&out, &link.b_if)
        .iter()
        .filter(|(t, _)| (9100..9200).contains(&t.dst_port) && t.proto == 17)
        .map(|(_, s)| s.packets)
        .sum();
    // Our flows' shortfall is part of the reported loss (link-local chatter keyed by the probe
    // can be evicted too, so the loss may be larger; `got + lost == keyed` above is exact).
    assert!(sent > ours, "nothing of ours was evicted: {line}");
    assert!(
        sent - ours <= lost,
        "{} of ours missing, {lost} reported: {line}",
        sent - ours
    );
    // The drain that found the overflow said so too, with the evicted count.
    assert!(
        stderr.contains("kernel flow buffer overflowed") && stderr.contains("evicted_packets="),
        "{stderr}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

fn stderr_count(stderr: &str, key: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| l.split(key).nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// (complete `.parquet` files, whether an in-progress file was opened less than 1 s ago).
fn scan_files(dir: &Path) -> (usize, bool) {
    let now_ms = rand_suffix() / 1_000_000;
    let (mut complete, mut fresh) = (0, false);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".parquet") && !name.starts_with('.') {
                complete += 1;
            } else if let Some(rest) = name.strip_suffix(".parquet.inprogress") {
                // .flows-<host>-<opened ms>-<pid>-<seq>
                let parts: Vec<&str> = rest.rsplitn(4, '-').collect();
                let opened: u128 = parts[2].parse().unwrap();
                fresh |= now_ms.saturating_sub(opened) < 1000;
            }
        }
    }
    (complete, fresh)
}

/// SIGKILL while a Parquet file is open: no partial `.parquet` file is ever visible, every
/// complete file reads back in full.
#[test]
fn killed_writer_leaves_no_partial_parquet_file() {
    let (a, b, link, out) = two_hosts("kil");
    let child = start_flowlens(
        &b,
        &link,
        &out,
        &[
            "--drain-interval",
            "100ms",
            "--idle-timeout",
            "200ms",
            "--parquet-rotate-interval",
            "3s",
        ],
    );
    // Bounded traffic (new UDP flows, at most 30 s) until at least one file is complete and a
    // fresh one is in progress: opened less than 1 s ago, so with a 3 s rotation interval it is
    // certainly still open when the kill lands. The open time is part of the file name.
    let t0 = Instant::now();
    let mut port = 20000u16;
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no complete + fresh in-progress file within 30 s"
        );
        udp_exchange(
            &a,
            &b,
            SocketAddr::new(link.a_v4.into(), port),
            SocketAddr::new(link.b_v4.into(), 9000),
            3,
            64,
        )
        .unwrap();
        port += 1;
        let (complete, fresh) = scan_files(&out);
        if complete >= 1 && fresh {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (st, _) = stop(child, libc::SIGKILL);
    assert!(!st.success());
    let mut complete = 0;
    let mut inprogress = 0;
    let mut stack = vec![out.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".parquet") {
                assert!(!name.starts_with('.'), "hidden final name {name}");
                let r = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap())
                    .unwrap_or_else(|e| panic!("{name} is not a complete parquet file: {e}"))
                    .build()
                    .unwrap();
                for b in r {
                    b.unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                complete += 1;
            } else if name.ends_with(".parquet.inprogress") {
                assert!(
                    name.starts_with('.'),
                    "in-progress file must be hidden: {name}"
                );
                inprogress += 1;
            }
        }
    }
    assert!(complete >= 1, "no file completed before the kill");
    assert!(
        inprogress >= 1,
        "the kill did not land mid-file (test would be vacuous)"
    );
    // The killed process could not detach: the link-based XDP attachment goes away with its fd.
    b.wait_xdp(&link.b_if, false).unwrap();
    // The next start on the same directory reports what the killed run left unfinished.
    let o = b
        .command(FLOWLENS)
        .args(["run", "--xdp", &link.b_if, "--duration", "200ms", "--sink"])
        .arg(format!("parquet:{}", out.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("unfinished Parquet files left by an earlier flowlens that was killed")
            && err.contains(&format!("files={inprogress} ")),
        "{err}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// `flowlens run --help` documents every option (bad values: tests/hardening.rs).
#[test]
fn run_help_lists_the_options() {
    let help = std::process::Command::new(FLOWLENS)
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for opt in [
        "--xdp",
        "--xdp-mode",
        "--sink",
        "--drain-interval",
        "--active-timeout",
        "--idle-timeout",
        "--max-flows",
        "--duration",
        "--config",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}");
    }
}
