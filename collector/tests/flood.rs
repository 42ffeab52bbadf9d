//! Issue 17: a random-source SYN flood (`flowlens_testkit::syn_flood`, what `hping3 --flood
//! --rand-source` sends) from host A through a veth into `flowlens run` on host B (XDP) with a
//! small `--max-memory`, bounded in time and packets. Checked:
//!
//! * exact conservation: the probe's shutdown line says nothing was lost, and the packets in the
//!   Parquet records (read back with pyarrow, `tests/flood/sum_records.py`) equal the drained
//!   packets, and the flood's own packets in them equal what the sender sent minus what the
//!   veth dropped before the probe (its drop counters);
//! * the table was bounded: `lack_of_resources` records are in the output, their number and
//!   packets equal what flowlens counted and logged;
//! * peak RSS (`getrusage` of the child after `wait4`: its `VmHWM`) stays under `--max-memory`.
//!
//! Needs root and python3 with pyarrow (`cargo xtask setup`); never skips.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::Duration,
};

use flowlens_testkit::{
    FLOOD_IP_LEN, FloodSpec, Netns, log_field, log_line, syn_flood, temp_dir, veth_pair,
};

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");
const SUM_RECORDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flood/sum_records.py");

/// Small enough that the flood overflows the flow table within a second or two (with the
/// default --max-flows and one sink with its 65,536-record thread queue, a flow cap of about 20k).
const MAX_MEMORY: &str = "144MiB";
const MAX_MEMORY_BYTES: u64 = 144 << 20;
/// The default kernel buffers: the drain keeps up with the flood even in a debug build.
const KERNEL_FLOWS: &str = "131072";
const DST_PORT: u16 = 8080;

fn veth_drops(ns: &Netns, ifname: &str) -> u64 {
    let out = ns
        .ip_output(&["-s", "-j", "link", "show", "dev", ifname])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    ["rx", "tx"]
        .iter()
        .map(|d| v[0]["stats64"][d]["dropped"].as_u64().unwrap())
        .sum()
}

#[test]
fn flood_with_small_max_memory_counts_every_packet_and_stays_bounded() {
    let a = Netns::new("flooda").unwrap();
    let b = Netns::new("floodb").unwrap();
    let link = veth_pair(&a, &b).unwrap();
    let dir = temp_dir("flood").unwrap();
    let out = dir.join("out");

    let mut child = b
        .command(FLOWLENS)
        .args(["run", "--xdp", &link.b_if, "--xdp-mode", "skb", "--sink"])
        .arg(format!("parquet:{}", out.display()))
        .args(["--spool-dir"])
        .arg(dir.join("spool"))
        .args([
            "--max-memory",
            MAX_MEMORY,
            "--max-flows",
            KERNEL_FLOWS,
            "--idle-timeout",
            "30s",
            "--drain-interval",
            "1s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flowlens");
    let pid = child.id();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    b.wait_xdp(&link.b_if, true).unwrap();
    let drops_before = veth_drops(&a, &link.a_if) + veth_drops(&b, &link.b_if);
    let flood = syn_flood(
        &a,
        &link,
        &FloodSpec {
            max_packets: 400_000,
            max_duration: Duration::from_secs(6),
            rate: 15_000,
            dst_port: DST_PORT,
            seed: 17,
        },
    )
    .unwrap();
    // Frames still in flight on the veth.
    std::thread::sleep(Duration::from_millis(300));
    let dropped = veth_drops(&a, &link.a_if) + veth_drops(&b, &link.b_if) - drops_before;
    // SAFETY: signalling and reaping our own child; `wait4` reports its peak RSS.
    let (status, ru) = unsafe {
        libc::kill(pid as i32, libc::SIGINT);
        let mut status = 0;
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::wait4(pid as i32, &mut status, 0, &mut ru), pid as i32);
        (status, ru)
    };
    std::mem::forget(child); // reaped above
    let stderr = reader.join().unwrap();
    eprintln!("{stderr}");
    eprintln!("flood: {flood:?}, veth dropped {dropped}");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "flowlens failed ({status})"
    );
    assert!(flood.packets >= 50_000, "flood too small: {flood:?}");

    // The budget was logged, and the table was capped.
    let budget = log_line(&stderr, "memory budget (--max-memory)");
    let cap = log_field(budget, "flow_cap");
    assert_eq!(log_field(budget, "max_memory"), MAX_MEMORY_BYTES);

    // Exact conservation in the probe's own accounting.
    let cons = log_line(&stderr, "flowlens::conservation: conservation:");
    assert!(
        cons.contains("every keyed packet was drained") && cons.contains("lost_packets=0"),
        "{cons}"
    );
    let drained = log_field(cons, "drained_packets");
    let stopped = log_line(&stderr, "flowlens stopped");
    let (records, packets) = (log_field(stopped, "records"), log_field(stopped, "packets"));
    let lor = log_field(stopped, "flows_ended_lack_of_resources");
    let lor_packets = log_field(stopped, "lack_of_resources_packets");
    assert_eq!(packets, drained, "{stopped}");
    assert!(
        lor > 0,
        "no flow ended for lack of resources (cap {cap}, {} flood packets)",
        flood.packets
    );
    assert!(
        stderr.contains("flow table full (--max-memory)"),
        "no log line for the full table"
    );
    // The metric-facing count and the log line agree with the table; under the cap.
    assert!(
        (flood.packets - dropped) > cap,
        "the flood did not exceed the cap"
    );

    // An independent reader: pyarrow.
    let o = Command::new("python3")
        .arg(SUM_RECORDS)
        .arg(&out)
        .arg(DST_PORT.to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!("parquet: {got}");
    assert_eq!(got["rows"].as_u64().unwrap(), records);
    assert_eq!(got["packets"].as_u64().unwrap(), drained);
    // Every flood packet that reached the probe is in exactly one record.
    assert_eq!(
        got["flood_packets"].as_u64().unwrap(),
        flood.packets - dropped
    );
    assert_eq!(
        got["flood_bytes"].as_u64().unwrap(),
        (flood.packets - dropped) * FLOOD_IP_LEN
    );
    let lor_rows = &got["reasons"]["lack_of_resources"];
    assert_eq!(lor_rows[0].as_u64().unwrap(), lor, "{got}");
    assert_eq!(lor_rows[1].as_u64().unwrap(), lor_packets, "{got}");

    // Peak RSS under the bound, from the kernel's accounting of the child (`ru_maxrss` also
    // covers this test process's RSS at fork: an upper bound) and flowlens' own VmHWM.
    let peak = ru.ru_maxrss as u64 * 1024;
    eprintln!(
        "peak RSS {:.1} MiB of --max-memory {MAX_MEMORY} (flow cap {cap}, {lor} records ended early)",
        peak as f64 / (1 << 20) as f64
    );
    assert!(
        peak <= MAX_MEMORY_BYTES,
        "peak RSS {peak} > {MAX_MEMORY_BYTES}"
    );
    let own = log_field(stopped, "peak_rss_bytes");
    assert!(
        own <= MAX_MEMORY_BYTES,
        "flowlens' VmHWM {own} > {MAX_MEMORY_BYTES}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
