//! The real `flowlens` binary writing Parquet onto a small tmpfs that fills up: it reports the
//! error, keeps the records in its journal (spool directory on another file system), writes
//! them once space returns, and every packet sent is in the files after SIGTERM, exactly once.
//! Needs root (namespaces, XDP, mount); never skips.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arrow_array::{Array, Int64Array, StringArray, UInt16Array};
use flowlens_testkit::{Netns, Tmpfs, temp_dir, udp_exchange, veth_pair};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");

/// flowlens's stderr, collected by a thread (and echoed).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<String>>);

impl Log {
    fn wait_for(&self, needle: &str, within: Duration) {
        let t0 = Instant::now();
        while !self.0.lock().unwrap().contains(needle) {
            assert!(
                t0.elapsed() < within,
                "no {needle:?} in the log within {within:?}:\n{}",
                self.0.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// UDP packets per destination port at the xdp point, from every complete file under `dir`.
fn packets_by_port(dir: &Path) -> BTreeMap<u16, i64> {
    let mut out = BTreeMap::new();
    for f in flowlens::top::parquet_files(dir).unwrap() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let c = |n: &str| b.column_by_name(n).unwrap().clone();
            let (obs, dp, pk, tr) = (
                c("observation_point"),
                c("destination_port"),
                c("packets"),
                c("network_transport"),
            );
            let obs = obs.as_any().downcast_ref::<StringArray>().unwrap();
            let dp = dp.as_any().downcast_ref::<UInt16Array>().unwrap();
            let pk = pk.as_any().downcast_ref::<Int64Array>().unwrap();
            let tr = tr.as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                if obs.value(i) == "xdp" && tr.value(i) == "udp" && !dp.is_null(i) {
                    *out.entry(dp.value(i)).or_default() += pk.value(i);
                }
            }
        }
    }
    out
}

#[test]
fn parquet_on_a_full_disk_keeps_every_record_and_recovers() {
    const PER_FLOW: u32 = 40;
    let a = Netns::new("dfa").unwrap();
    let b = Netns::new("dfb").unwrap();
    let link = veth_pair(&a, &b).unwrap();
    let fs = Tmpfs::mount("diskfull-fs", "1m").unwrap();
    let out = fs.path().join("flows");
    let spool = temp_dir("diskfull-spool").unwrap();

    let mut child = b
        .command(FLOWLENS)
        .args(["run", "--xdp", &link.b_if, "--xdp-mode", "skb"])
        .arg("--sink")
        .arg(format!("parquet:{}", out.display()))
        .arg("--spool-dir")
        .arg(&spool)
        .args(["--drain-interval", "200ms", "--idle-timeout", "200ms"])
        .args(["--parquet-rotate-interval", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::default();
    let reader = {
        let log = log.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{l}");
                let mut s = log.0.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        })
    };
    log.wait_for("flowlens running", Duration::from_secs(20));
    b.wait_xdp(&link.b_if, true).unwrap();

    let send = |port: u16| {
        let got = udp_exchange(
            &a,
            &b,
            SocketAddr::new(link.a_v4.into(), 40000 + port),
            SocketAddr::new(link.b_v4.into(), port),
            PER_FLOW,
            200,
        )
        .unwrap();
        assert_eq!(got, PER_FLOW);
    };
    // Before: a healthy file gets completed.
    for p in 7000..7005 {
        send(p);
    }
    let t0 = Instant::now();
    while flowlens::top::parquet_files(&out)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "no file completed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Full: the error is reported, records go to the journal.
    let filler = fs.fill("filler").unwrap();
    for p in 7005..7025 {
        send(p);
    }
    log.wait_for("parquet: writing failed", Duration::from_secs(10));
    assert!(log.0.lock().unwrap().contains("No space left on device"));
    // Space returns: the journal is written by itself, then writing goes on normally.
    std::fs::remove_file(&filler).unwrap();
    log.wait_for("parquet: writing works again", Duration::from_secs(40));
    for p in 7025..7030 {
        send(p);
    }
    std::thread::sleep(Duration::from_millis(600));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    reader.join().unwrap();
    let text = log.0.lock().unwrap().clone();
    assert!(st.success(), "{text}");
    assert!(text.contains("lost_packets=0"), "{text}");
    assert!(
        text.contains("lost=0") && text.contains("spooled=0"),
        "{text}"
    );

    let got = packets_by_port(&out);
    let want: BTreeMap<u16, i64> = (7000..7030).map(|p| (p, PER_FLOW as i64)).collect();
    assert_eq!(got, want, "packets per flow in the files");
    // Nothing half-written is left in the output.
    let mut stack = vec![out.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(name.ends_with(".parquet"), "left behind: {name}");
            }
        }
    }
    std::fs::remove_dir_all(&spool).unwrap();
}
