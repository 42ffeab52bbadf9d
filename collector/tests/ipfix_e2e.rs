//! End to end (issue 15): the real `flowlens run` binary with XDP on a veth in a network
//! namespace, real IPv4 and IPv6 traffic, a Parquet sink and IPFIX sinks in the same run, read
//! back by collectors no one here wrote: `nfcapd`/`nfdump` (nfdump), `nfacctd` with its print
//! plugin (pmacct) and `tshark` (Wireshark's dissector). Every flow's packets, bytes, ports,
//! protocol and times (milliseconds) must agree with the Parquet records flow for flow.
//! Needs root and `cargo xtask setup` (apt nfdump, pmacct, tshark).

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use arrow_array::{
    Array, Int64Array, StringArray, TimestampMicrosecondArray, UInt8Array, UInt16Array,
};
use flowlens_testkit::{Link, Netns, udp_exchange, unique_path, veth_pair};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");

/// One flow as every reader can express it: start ms, end ms, source, destination, source
/// port, destination port, protocol, packets, bytes.
type Row = (i64, i64, String, String, u16, u16, u8, u64, u64);

/// A process killed (by its pid) on drop.
struct Killed(Option<Child>);
impl Killed {
    /// SIGTERM, then wait (collectors flush their files on SIGTERM).
    fn term(&mut self) -> std::process::Output {
        let mut c = self.0.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while c.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait_with_output().unwrap()
    }
}
impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn parquet_rows(dir: &Path) -> Vec<Row> {
    let mut out = Vec::new();
    for f in flowlens::top::parquet_files(dir).unwrap() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            let st = |n: &str| {
                col(n)
                    .as_any()
                    .downcast_ref::<StringArray>()
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
            let u16c = |n: &str| {
                col(n)
                    .as_any()
                    .downcast_ref::<UInt16Array>()
                    .unwrap()
                    .clone()
            };
            let ts = |n: &str| {
                col(n)
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .unwrap()
                    .clone()
            };
            let u8c = |n: &str| {
                col(n)
                    .as_any()
                    .downcast_ref::<UInt8Array>()
                    .unwrap()
                    .clone()
            };
            let (proto, itype, icode) = (u8c("protocol"), u8c("icmp_type"), u8c("icmp_code"));
            let (src, dst, sp, dp) = (
                st("source_address"),
                st("destination_address"),
                u16c("source_port"),
                u16c("destination_port"),
            );
            let (start, end, pk, by) = (
                ts("flow_start"),
                ts("flow_end"),
                i64c("packets"),
                i64c("bytes"),
            );
            for r in 0..b.num_rows() {
                let icmp = matches!(proto.value(r), 1 | 58);
                out.push((
                    start.value(r) / 1000,
                    end.value(r) / 1000,
                    src.value(r).to_string(),
                    dst.value(r).to_string(),
                    if icmp {
                        itype.value(r) as u16
                    } else {
                        sp.value(r)
                    },
                    if icmp {
                        icode.value(r) as u16
                    } else {
                        dp.value(r)
                    },
                    proto.value(r),
                    pk.value(r) as u64,
                    by.value(r) as u64,
                ));
            }
        }
    }
    out.sort();
    out
}

/// `2026-12-05 16:00:00.123` (UTC) → ms since the epoch.
fn ms_of(s: &str) -> i64 {
    let s = s.trim().trim_matches('"');
    let (date, time) = s
        .split_once([' ', 'T'])
        .unwrap_or_else(|| panic!("time {s:?}"));
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let frac_ms: i64 = format!("{frac:0<3}")[..3].parse().unwrap();
    ((days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1000) + frac_ms
}

/// Records in nfcapd's files, read back by `nfdump -o json` (times in UTC, milliseconds).
/// ICMP rows carry the ICMP type and code where the ports would be.
fn nfdump_rows(dir: &Path) -> Vec<Row> {
    let o = Command::new("nfdump")
        .arg("-R")
        .arg(dir)
        .args(["-q", "-N", "-o", "json"])
        .env("TZ", "UTC")
        .output()
        .expect("nfdump (run `cargo xtask setup`)");
    assert!(
        o.status.success(),
        "nfdump: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let text = text.trim().trim_end_matches(',');
    if text.is_empty() || text.contains("No matching flows") {
        return Vec::new();
    }
    let json = if text.starts_with('[') {
        text.to_string()
    } else {
        format!("[{text}]")
    };
    let v: Vec<serde_json::Value> = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("nfdump json: {e}: {}", &json[..json.len().min(500)]));
    let mut out = Vec::new();
    for f in v.iter().filter(|f| f["type"] == "FLOW") {
        let n = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{k} in {f}"));
        let addr = |k4: &str, k6: &str| {
            f.get(k4)
                .or_else(|| f.get(k6))
                .and_then(|a| a.as_str())
                .unwrap_or_else(|| panic!("{k4} in {f}"))
                .to_string()
        };
        let proto = n("proto") as u8;
        let (sp, dp) = if proto == 1 || proto == 58 {
            (n("icmp_type") as u16, n("icmp_code") as u16)
        } else {
            (n("src_port") as u16, n("dst_port") as u16)
        };
        out.push((
            ms_of(f["first"].as_str().unwrap()),
            ms_of(f["last"].as_str().unwrap()),
            addr("src4_addr", "src6_addr"),
            addr("dst4_addr", "dst6_addr"),
            sp,
            dp,
            proto,
            n("in_packets"),
            n("in_bytes"),
        ));
    }
    out.sort();
    out
}

/// Records in nfacctd's print plugin CSV (ports 0 for ICMP).
fn nfacctd_rows(file: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut lines = text.lines();
    let mut out = Vec::new();
    let mut header: Vec<String> = Vec::new();
    for line in lines.by_ref() {
        let f: Vec<&str> = line.split(',').collect();
        if f[0] == "SRC_IP" || f.contains(&"SRC_IP") {
            header = f.iter().map(|s| s.to_string()).collect();
            continue;
        }
        if header.is_empty() || f.len() != header.len() {
            continue;
        }
        let g = |n: &str| {
            f[header
                .iter()
                .position(|x| x == n)
                .unwrap_or_else(|| panic!("{n} in {header:?}"))]
            .trim()
        };
        let proto = match g("PROTOCOL") {
            "udp" => 17,
            "tcp" => 6,
            "icmp" => 1,
            "ipv6-icmp" => 58,
            p => p.parse().unwrap_or_else(|_| panic!("protocol {p}")),
        };
        out.push((
            ms_of(g("TIMESTAMP_START")),
            ms_of(g("TIMESTAMP_END")),
            g("SRC_IP").to_string(),
            g("DST_IP").to_string(),
            g("SRC_PORT").parse().unwrap(),
            g("DST_PORT").parse().unwrap(),
            proto,
            g("PACKETS").parse().unwrap(),
            g("BYTES").parse().unwrap(),
        ));
    }
    out.sort();
    out
}

/// A UDP port that was free in `ns` a moment ago.
fn free_udp_port(ns: &Netns) -> u16 {
    ns.run_in(|| UdpSocket::bind("127.0.0.1:0").map(|s| s.local_addr().unwrap().port()))
        .unwrap()
        .unwrap()
}

fn start_nfcapd(ns: &Netns, port: u16, dir: &Path) -> Killed {
    std::fs::create_dir_all(dir).unwrap();
    let c = ns
        .command("nfcapd")
        .args([
            "-b",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "3600",
            "-w",
        ])
        .arg(dir)
        .env("TZ", "UTC")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nfcapd (run `cargo xtask setup`)");
    Killed(Some(c))
}

fn start_nfacctd(ns: &Netns, port: u16, out: &Path) -> Killed {
    let conf = out.with_extension("conf");
    std::fs::write(
        &conf,
        format!(
            "daemonize: false\n\
             nfacctd_ip: 127.0.0.1\n\
             nfacctd_port: {port}\n\
             timestamps_secs: false\n\
             timestamps_utc: true\n\
             plugins: print[out]\n\
             aggregate[out]: src_host, dst_host, src_port, dst_port, proto, timestamp_start, timestamp_end\n\
             print_output[out]: csv\n\
             print_output_file[out]: {}\n\
             print_output_file_append[out]: true\n\
             print_refresh_time[out]: 1\n",
            out.display()
        ),
    )
    .unwrap();
    let c = ns
        .command("nfacctd")
        .arg("-f")
        .arg(&conf)
        .env("TZ", "UTC")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nfacctd (run `cargo xtask setup`)");
    Killed(Some(c))
}

fn start_tshark(ns: &Netns, pcap: &Path) -> Killed {
    let c = ns
        .command("tshark")
        .args(["-i", "lo", "-f", "udp", "-w"])
        .arg(pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tshark (run `cargo xtask setup`)");
    // tshark prints "Capturing on 'Loopback'" once it listens.
    let t0 = Instant::now();
    while !pcap.exists() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    Killed(Some(c))
}

/// `rounds` rounds of UDP flows from A to B over IPv4 and IPv6; flows end (idle) between rounds.
fn traffic(a: &Netns, b: &Netns, link: &Link, round: u16) {
    for f in 0..3u16 {
        for (src, dst) in [
            (IpAddr::V4(link.a_v4), IpAddr::V4(link.b_v4)),
            (IpAddr::V6(link.a_v6), IpAddr::V6(link.b_v6)),
        ] {
            let n = udp_exchange(
                a,
                b,
                SocketAddr::new(src, 32000 + round * 10 + f),
                SocketAddr::new(dst, 9400 + round),
                5 + f as u32,
                64 + 100 * f as usize,
            )
            .unwrap();
            assert_eq!(n, 5 + f as u32);
        }
    }
}

fn flowlens(b: &Netns, link: &Link, out: &Path, sinks: &[String], extra: &[&str]) -> Killed {
    let mut c = b.command(FLOWLENS);
    c.args(["run", "--xdp", &link.b_if, "--xdp-mode", "skb"])
        .args(["--drain-interval", "200ms", "--idle-timeout", "500ms"])
        .arg("--sink")
        .arg(format!("parquet:{}", out.display()))
        .arg("--spool-dir")
        .arg(out.with_extension("spool"))
        .args(extra);
    for s in sinks {
        c.arg("--sink").arg(s);
    }
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flowlens");
    b.wait_xdp(&link.b_if, true).unwrap();
    Killed(Some(child))
}

fn stop_flowlens(mut f: Killed) -> String {
    let mut c = f.0.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let o = {
        let t0 = Instant::now();
        while c.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        c.wait_with_output().unwrap()
    };
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    eprint!("{stderr}");
    assert!(o.status.success(), "flowlens exited with {}", o.status);
    stderr
}

/// Waits until `read` returns at least `n` rows (collectors write asynchronously).
fn wait_rows(what: &str, n: usize, read: impl Fn() -> Vec<Row>) -> Vec<Row> {
    let t0 = Instant::now();
    loop {
        let rows = read();
        if rows.len() >= n || t0.elapsed() > Duration::from_secs(20) {
            return rows;
        }
        eprintln!("{what}: {} of {n} rows so far", rows.len());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// tshark's verdict on a capture: every IPFIX message decodes, no malformed packet, no data set
/// without its template, and the first IPFIX message of each port carries templates.
fn tshark_check(pcap: &Path, ports: &[u16]) -> String {
    let mut args = vec!["-r".to_string(), pcap.display().to_string()];
    for p in ports {
        args.push("-d".into());
        args.push(format!("udp.port=={p},cflow"));
    }
    let o = Command::new("tshark")
        .args(&args)
        .args(["-V", "-o", "cflow.desegment:TRUE"])
        .output()
        .expect("tshark");
    assert!(
        o.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn ipfix_udp_agrees_with_parquet_in_nfdump_nfacctd_and_tshark() {
    let a = Netns::new("ipfa").unwrap();
    let b = Netns::new("ipfb").unwrap();
    let link = veth_pair(&a, &b).unwrap();
    let out: PathBuf = unique_path("ipfix-e2e");
    std::fs::create_dir_all(&out).unwrap();
    let (p_nfcapd, p_nfacctd, p_late) = (free_udp_port(&b), free_udp_port(&b), free_udp_port(&b));
    assert!(p_nfcapd != p_nfacctd && p_nfacctd != p_late && p_nfcapd != p_late);
    let pcap = out.join("ipfix.pcap");
    let mut tshark = start_tshark(&b, &pcap);
    let mut nfcapd = start_nfcapd(&b, p_nfcapd, &out.join("nfcapd"));
    let acct_csv = out.join("nfacctd.csv");
    let mut nfacctd = start_nfacctd(&b, p_nfacctd, &acct_csv);
    std::thread::sleep(Duration::from_secs(1));

    let sinks: Vec<String> = [p_nfcapd, p_nfacctd, p_late]
        .iter()
        .map(|p| format!("ipfix:127.0.0.1:{p}"))
        .collect();
    let fl = flowlens(
        &b,
        &link,
        &out.join("parquet"),
        &sinks,
        &[
            "--ipfix-template-refresh",
            "3s",
            "--ipfix-domain-id",
            "4242",
        ],
    );
    // Round 0: the late collector is not running yet (its port is closed).
    traffic(&a, &b, &link, 0);
    std::thread::sleep(Duration::from_millis(1500));
    let late_started = Instant::now();
    let mut late = start_nfcapd(&b, p_late, &out.join("late"));
    // Round 1 after the next template refresh (at most 3 s later), round 2 after that.
    std::thread::sleep(Duration::from_secs(4));
    traffic(&a, &b, &link, 1);
    std::thread::sleep(Duration::from_millis(1500));
    traffic(&a, &b, &link, 2);
    std::thread::sleep(Duration::from_millis(1500));
    let stderr = stop_flowlens(fl);
    for port in [p_nfcapd, p_nfacctd, p_late] {
        let line = stderr
            .lines()
            .find(|l| l.contains("sink closed") && l.contains(&format!("ipfix:127.0.0.1:{port}")))
            .unwrap_or_else(|| panic!("no close line of the ipfix sink on {port}"));
        assert!(line.contains("lost=0"), "{line}");
    }

    let parquet = parquet_rows(&out.join("parquet"));
    let ours = |r: &Row| r.3 == link.b_v4.to_string() || r.3 == link.b_v6.to_string();
    assert_eq!(
        parquet.iter().filter(|r| ours(r)).count(),
        18,
        "{parquet:#?}"
    );
    // The flows' packets and bytes as sent (IP-layer bytes: 20 or 40 + 8 + payload).
    for r in parquet.iter().filter(|r| ours(r)) {
        let f = (r.4 % 10) as u64;
        let ip = if r.2.contains(':') { 40 } else { 20 };
        assert_eq!(
            (r.7, r.8),
            (5 + f, (5 + f) * (ip + 8 + 64 + 100 * f)),
            "{r:?}"
        );
    }

    let acct = wait_rows("nfacctd", parquet.len(), || nfacctd_rows(&acct_csv));
    let nfacctd_out = nfacctd.term();
    nfcapd.term();
    let late_out = late.term();
    std::thread::sleep(Duration::from_millis(500));
    tshark.term();

    let nf = nfdump_rows(&out.join("nfcapd"));
    assert_eq!(nf, parquet, "nfdump and the Parquet sink disagree");
    // pmacct's print plugin shows no ICMP type/code (ports 0 for ICMP).
    let mut parquet_no_icmp: Vec<Row> = parquet
        .iter()
        .cloned()
        .map(|mut r| {
            if r.6 == 1 || r.6 == 58 {
                (r.4, r.5) = (0, 0);
            }
            r
        })
        .collect();
    parquet_no_icmp.sort();
    assert_eq!(
        acct,
        parquet_no_icmp,
        "nfacctd and the Parquet sink disagree; nfacctd said: {}",
        String::from_utf8_lossy(&nfacctd_out.stderr)
    );

    // The late collector: everything it decoded is a Parquet record, and it has every record
    // exported after its start plus the refresh interval (rounds 1 and 2).
    let late_rows = nfdump_rows(&out.join("late"));
    eprintln!(
        "late collector ({} s before round 1): {} rows; log: {}",
        4,
        late_rows.len(),
        String::from_utf8_lossy(&late_out.stdout)
    );
    for r in &late_rows {
        assert!(
            parquet.contains(r),
            "mis-decoded by the late collector: {r:?}"
        );
    }
    let after: Vec<Row> = parquet
        .iter()
        .filter(|r| r.6 == 17 && ours(r) && r.5 >= 9401)
        .cloned()
        .collect();
    assert_eq!(after.len(), 12);
    for r in &after {
        assert!(late_rows.contains(r), "late collector misses {r:?}");
    }
    assert!(late_started.elapsed() > Duration::from_secs(4));

    // tshark: no malformed packets, no data without a template, templates first.
    let dump = tshark_check(&pcap, &[p_nfcapd, p_nfacctd, p_late]);
    assert!(!dump.contains("Malformed"), "tshark: malformed packet");
    for bad in [
        "no template found",
        "Template not found",
        "Expert Info (Warning",
    ] {
        assert!(!dump.contains(bad), "tshark says {bad:?}");
    }
    let first_msg = dump
        .find("Cisco NetFlow/IPFIX")
        .expect("tshark decoded no IPFIX");
    let first_set = dump[first_msg..].find("FlowSet Id: ").unwrap() + first_msg;
    assert!(
        dump[first_set..].starts_with("FlowSet Id: Data Template (V10 [IPFIX]) (2)"),
        "the first IPFIX set is not a template set: {}",
        &dump[first_set..first_set + 80]
    );
    assert!(dump.contains("Observation Domain Id: 4242"));
    assert!(
        dump.contains("SamplingInterval: 1") || dump.contains("Sampling interval: 1"),
        "no sampling interval"
    );
    assert!(dump.contains(&link.b_if), "no interface name record");
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(out.join("parquet").with_extension("spool")).ok();
}

/// `ipfix+tcp:`: flowlens starts before the collector, the collector goes away and comes back;
/// with the spool nothing is lost and every flow arrives (at least once) with the Parquet
/// sink's counts. The collector is nfcapd fed through a TCP-to-UDP relay that cuts the stream
/// at IPFIX message boundaries (nfcapd speaks UDP only).
#[test]
fn ipfix_tcp_reconnects_and_spools() {
    let a = Netns::new("ipta").unwrap();
    let b = Netns::new("iptb").unwrap();
    let link = veth_pair(&a, &b).unwrap();
    let out: PathBuf = unique_path("ipfix-tcp");
    std::fs::create_dir_all(&out).unwrap();
    let udp_port = free_udp_port(&b);
    let tcp_port = b
        .run_in(|| TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().unwrap().port()))
        .unwrap()
        .unwrap();
    let mut nfcapd = start_nfcapd(&b, udp_port, &out.join("nfcapd"));

    let fl = flowlens(
        &b,
        &link,
        &out.join("parquet"),
        &[format!("ipfix+tcp:127.0.0.1:{tcp_port}")],
        &[],
    );
    // Collector down: round 0 goes to the spool.
    traffic(&a, &b, &link, 0);
    std::thread::sleep(Duration::from_millis(1500));
    // Collector up: a relay session until round 1 is through, then it drops the connection.
    let relay = |rounds: &[u16]| {
        let listener = b
            .run_in(move || TcpListener::bind(("127.0.0.1", tcp_port)))
            .unwrap()
            .unwrap();
        let fwd = b
            .run_in(|| UdpSocket::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(false).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = Vec::new();
        let mut messages = 0;
        let mut pump = |conn: &mut std::net::TcpStream, buf: &mut Vec<u8>| {
            let mut chunk = [0u8; 65536];
            match conn.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
            while buf.len() >= 4 {
                let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
                assert_eq!(&buf[..2], &[0, 10], "not an IPFIX message");
                if buf.len() < len {
                    break;
                }
                fwd.send_to(&buf[..len], ("127.0.0.1", udp_port)).unwrap();
                buf.drain(..len);
                messages += 1;
            }
            true
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            pump(&mut conn, &mut buf);
        }
        for &r in rounds {
            traffic(&a, &b, &link, r);
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_millis(1500) {
                pump(&mut conn, &mut buf);
            }
        }
        assert!(buf.is_empty(), "a partial message was left");
        let _ = conn.flush();
        drop(conn);
        drop(listener);
        messages
    };
    let m1 = relay(&[1]);
    assert!(m1 > 0);
    // Collector down again: round 2 is spooled; then it comes back for round 3.
    traffic(&a, &b, &link, 2);
    std::thread::sleep(Duration::from_millis(1500));
    let m2 = relay(&[3]);
    assert!(m2 > 0);
    let stderr = stop_flowlens(fl);
    let line = stderr
        .lines()
        .find(|l| l.contains("sink closed") && l.contains("ipfix+tcp:"))
        .expect("close line of the ipfix+tcp sink");
    assert!(line.contains("lost=0"), "{line}");
    std::thread::sleep(Duration::from_millis(500));
    nfcapd.term();

    let parquet = parquet_rows(&out.join("parquet"));
    let ours = |r: &Row| r.3 == link.b_v4.to_string() || r.3 == link.b_v6.to_string();
    assert_eq!(parquet.iter().filter(|r| ours(r)).count(), 24);
    let mut nf = nfdump_rows(&out.join("nfcapd"));
    // At least once: a duplicate is allowed only for a message re-sent after a failed write.
    nf.dedup();
    let nf_ours: Vec<Row> = nf.iter().filter(|r| ours(r)).cloned().collect();
    let pq_ours: Vec<Row> = parquet.iter().filter(|r| ours(r)).cloned().collect();
    assert_eq!(nf_ours, pq_ours, "nfdump (over TCP) and Parquet disagree");
    std::fs::remove_dir_all(&out).ok();
}
