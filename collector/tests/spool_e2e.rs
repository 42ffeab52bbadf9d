//! End to end: the real `flowlens run` binary, XDP on a veth in a network namespace, real UDP
//! traffic, an OTLP/gRPC receiver (in-test tonic server on the namespace's loopback) that is
//! down during the first run. SIGTERM: flowlens exits within `--shutdown-grace` with status 0,
//! the undelivered records are in the on-disk spool (spooled, not lost); a second run with the
//! receiver up delivers exactly those records (plus its own), once each, with the packet counts
//! of the traffic sent. Also: an unusable spool directory fails before anything is attached.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use flowlens_testkit::{Netns, otlp::LogsReceiver, udp_exchange, unique_path, veth_pair};
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{KeyValue, any_value::Value},
};

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");

fn attr<'a>(a: &'a [KeyValue], k: &str) -> &'a Value {
    a.iter()
        .find(|x| x.key == k)
        .and_then(|x| x.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .unwrap_or_else(|| panic!("attribute {k} missing"))
}

/// (source address, source port, destination port, packets, bytes, community id, flow start)
/// of every received record.
type Row = (String, i64, i64, i64, i64, String, i64);

fn rows(reqs: &[ExportLogsServiceRequest]) -> Vec<Row> {
    let s = |v: &Value| match v {
        Value::StringValue(s) => s.clone(),
        o => panic!("not a string: {o:?}"),
    };
    let i = |v: &Value| match v {
        Value::IntValue(i) => *i,
        o => panic!("not an int: {o:?}"),
    };
    let mut out = Vec::new();
    for r in reqs {
        for rl in &r.resource_logs {
            for sl in &rl.scope_logs {
                for l in &sl.log_records {
                    let a = &l.attributes;
                    let port = |k: &str| {
                        a.iter()
                            .find(|x| x.key == k)
                            .map(|_| i(attr(a, k)))
                            .unwrap_or(0)
                    };
                    out.push((
                        s(attr(a, "source.address")),
                        port("source.port"),
                        port("destination.port"),
                        i(attr(a, "flow.packets")),
                        i(attr(a, "flow.bytes")),
                        s(attr(a, "flow.community_id")),
                        i(attr(a, "flow.start_time_unix_nano")),
                    ));
                }
            }
        }
    }
    out
}

/// A number from `key=N` in the first stderr line containing `needle`.
fn field(stderr: &str, needle: &str, key: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{stderr}"));
    let i = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("{key} in {line}"));
    line[i + key.len() + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn spool_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|f| f.path())
        .filter(|p| p.extension().is_some_and(|e| e == "spool"))
        .collect()
}

fn sigterm(child: &std::process::Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

#[test]
fn sigterm_spools_what_the_sink_could_not_take_and_the_next_run_delivers_it() {
    let a = Netns::new("spoola").unwrap();
    let b = Netns::new("spoolb").unwrap();
    let link = veth_pair(&a, &b).unwrap();
    let spool = unique_path("spool-e2e");
    // A port on B's loopback, free: nothing else runs in this namespace. The receiver is down
    // (nothing listens) during the first run.
    let port = b
        .run_in(|| {
            std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().unwrap().port())
        })
        .unwrap()
        .unwrap();
    let endpoint = format!("otlp:http://127.0.0.1:{port}");
    let run = |extra: &[&str]| {
        b.command(FLOWLENS)
            .args(["run", "--xdp", &link.b_if, "--xdp-mode", "skb"])
            .args(["--drain-interval", "200ms", "--idle-timeout", "500ms"])
            .args(["--sink", &endpoint])
            // A small memory queue, so that most records go to the spool while running.
            .args(["--otlp-queue-records", "2", "--otlp-batch-records", "2"])
            .arg("--spool-dir")
            .arg(&spool)
            .args(extra)
            .env("FLOWLENS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flowlens")
    };

    // Run 1: receiver down.
    let grace = Duration::from_secs(4);
    let child = run(&["--shutdown-grace", "4s"]);
    b.wait_xdp(&link.b_if, true).unwrap();
    let (src, dst) = (IpAddr::V4(link.a_v4), IpAddr::V4(link.b_v4));
    let flows = 8u16;
    for f in 0..flows {
        let n = udp_exchange(
            &a,
            &b,
            SocketAddr::new(src, 32000 + f),
            SocketAddr::new(dst, 9400),
            10 + f as u32,
            64,
        )
        .unwrap();
        assert_eq!(n, 10 + f as u32);
    }
    // Some flows end (idle) while running and are spooled then; the rest at the final drain.
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = Instant::now();
    sigterm(&child);
    let o = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    let stderr1 = String::from_utf8_lossy(&o.stderr).into_owned();
    eprint!("--- run 1\n{stderr1}");
    assert!(
        o.status.success(),
        "run 1 exited with {} (nothing was lost)",
        o.status
    );
    // The grace, plus the last drain and process exit.
    assert!(
        took < grace + Duration::from_secs(1),
        "run 1 took {took:?} to stop (grace {grace:?})"
    );
    let records1 = field(&stderr1, "flowlens stopped", "records");
    assert!(records1 >= flows as u64, "{records1}");
    assert_eq!(
        field(&stderr1, "flowlens stopped", "records_lost_in_sinks"),
        0
    );
    assert_eq!(
        field(&stderr1, "flowlens stopped", "records_spooled"),
        records1
    );
    assert_eq!(field(&stderr1, "sink closed", "acknowledged"), 0);
    assert_eq!(field(&stderr1, "sink closed", "spooled"), records1);
    assert_eq!(field(&stderr1, "sink closed", "lost"), 0);
    assert!(
        !spool_files(&spool).is_empty(),
        "no spool files in {}",
        spool.display()
    );

    // Run 2: receiver up on the same port; no traffic of ours. It replays the spool first.
    let listener = b
        .run_in(move || std::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap()
        .unwrap();
    let recv = LogsReceiver::default();
    let server = recv.serve(listener).unwrap();
    let child = run(&["--shutdown-grace", "10s"]);
    let t0 = Instant::now();
    while (rows(&recv.0.lock().unwrap()).len() as u64) < records1 {
        assert!(t0.elapsed() < Duration::from_secs(30), "spool not replayed");
        std::thread::sleep(Duration::from_millis(100));
    }
    sigterm(&child);
    let o = child.wait_with_output().unwrap();
    let stderr2 = String::from_utf8_lossy(&o.stderr).into_owned();
    eprint!("--- run 2\n{stderr2}");
    assert!(o.status.success(), "run 2 exited with {}", o.status);
    assert!(stderr2.contains("spool holds records from an earlier run"));
    let records2 = field(&stderr2, "flowlens stopped", "records");
    let got = rows(&recv.0.lock().unwrap());
    // Exactly run 1's records (replayed) plus run 2's own (other packets on the veth, if any).
    assert_eq!(
        got.len() as u64,
        records1 + records2,
        "received vs produced"
    );
    assert_eq!(
        field(&stderr2, "sink closed", "acknowledged"),
        records1 + records2
    );
    assert_eq!(field(&stderr2, "sink closed", "spooled"), 0);
    assert_eq!(field(&stderr2, "sink closed", "lost"), 0);
    // No record twice (same flow and start), and our flows have the exact counts sent.
    let mut keys: Vec<(String, String, i64)> = got
        .iter()
        .map(|r| (r.5.clone(), r.0.clone(), r.6))
        .collect();
    keys.sort();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "duplicate records");
    let ours: BTreeMap<i64, (i64, i64)> = got
        .iter()
        .filter(|r| r.0 == src.to_string() && r.2 == 9400)
        .fold(BTreeMap::new(), |mut m, r| {
            let e = m.entry(r.1).or_insert((0, 0));
            e.0 += r.3;
            e.1 += r.4;
            m
        });
    assert_eq!(ours.len(), flows as usize, "{ours:?}");
    for f in 0..flows {
        let n = 10 + f as i64;
        assert_eq!(
            ours[&(32000 + f as i64)],
            (n, n * (20 + 8 + 64)),
            "flow {f}"
        );
    }
    drop(server);
    std::fs::remove_dir_all(&spool).unwrap();
}

#[test]
fn an_unwritable_spool_directory_fails_before_attaching() {
    let b = Netns::new("spoolbad").unwrap();
    let o = b
        .command(FLOWLENS)
        .args(["run", "--xdp", "lo", "--xdp-mode", "skb"])
        .args(["--sink", "otlp:http://127.0.0.1:4317"])
        .args(["--spool-dir", "/proc/flowlens-no-such-dir"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    let err: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(err.len(), 1, "{stderr}");
    assert!(
        err[0].contains("otlp:http://127.0.0.1:4317")
            && err[0].contains("/proc/flowlens-no-such-dir"),
        "{stderr}"
    );
    assert!(!stderr.contains("flowlens running"), "{stderr}");
}
