//! Issue 17, "sinks under a flood": a sink that stops taking records (stdout into a pipe nobody
//! reads: its `write` blocks) while a random-source SYN flood (`flowlens_testkit::syn_flood`)
//! runs through a veth into `flowlens run` (XDP) with small kernel buffers. Checked:
//!
//! * the drain keeps its cadence: the kernel buffers (16,384 flows, filled by the flood in about
//!   a second) never evict: the conservation line says `lost_packets=0`; when the sink ran on the
//!   drain thread, the first blocked write stopped every drain and the buffers overflowed;
//! * losses are counted exactly: the sink fell behind (its `dropped` count is > 0), and the
//!   lines that reach the pipe once the test reads it equal the records flowlens made minus the
//!   records it counted as lost for that sink (no record is both written and counted lost, none
//!   is missing without being counted);
//! * the drops were logged (rate-limited: one line, not one per batch).
//!
//! Needs root; never skips.

use std::{
    io::Read,
    process::Stdio,
    time::{Duration, Instant},
};

use flowlens_testkit::{FloodSpec, Netns, log_field, log_line, syn_flood, veth_pair};

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");

#[test]
fn a_blocked_sink_never_stalls_the_drain_and_its_losses_are_counted() {
    let a = Netns::new("drain2sa").unwrap();
    let b = Netns::new("drain2sb").unwrap();
    let link = veth_pair(&a, &b).unwrap();

    let mut child = b
        .command(FLOWLENS)
        .args([
            "run",
            "--xdp",
            &link.b_if,
            "--xdp-mode",
            "skb",
            "--sink",
            "stdout",
        ])
        .args([
            "--max-flows",
            "16384",
            "--drain-interval",
            "500ms",
            "--idle-timeout",
            "1s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flowlens");
    let pid = child.id();
    // Nobody reads stdout until the flood is over: after about 64 KiB the sink's writes block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    b.wait_xdp(&link.b_if, true).unwrap();
    let t0 = Instant::now();
    let flood = syn_flood(
        &a,
        &link,
        &FloodSpec {
            max_packets: 200_000,
            max_duration: Duration::from_secs(8),
            rate: 20_000,
            dst_port: 8080,
            seed: 1717,
        },
    )
    .unwrap();
    // Let the last flows end (idle timeout) and reach the (blocked) sink.
    std::thread::sleep(Duration::from_secs(3));
    let flood_secs = t0.elapsed().as_secs_f64();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGINT);
    }
    // Now the pipe is read: the sink's thread writes what it has queued, then closes.
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    let status = child.wait().unwrap();
    let stderr = reader.join().unwrap();
    eprintln!("{stderr}");
    eprintln!("flood: {flood:?} in {flood_secs:.1} s");
    assert!(status.success(), "flowlens failed: {status}");
    assert!(flood.packets >= 40_000, "flood too small: {flood:?}");

    // The drain kept up: no kernel buffer overflowed.
    let cons = log_line(&stderr, "flowlens::conservation: conservation:");
    assert!(
        cons.contains("every keyed packet was drained") && cons.contains("lost_packets=0"),
        "the kernel buffers overflowed (the drain stalled): {cons}"
    );
    let drained = log_field(cons, "drained_packets");
    assert!(drained >= flood.packets, "{cons}");

    let stopped = log_line(&stderr, "flowlens stopped");
    let (records, packets) = (log_field(stopped, "records"), log_field(stopped, "packets"));
    let lost = log_field(stopped, "records_lost_in_sinks");
    assert_eq!(packets, drained, "{stopped}");
    let closed = log_line(&stderr, "sink closed");
    let dropped = log_field(closed, "dropped");
    // The sink really fell behind, and its drops are its only losses.
    assert!(dropped > 0, "the sink never fell behind: {closed}");
    assert_eq!(lost, dropped, "{closed}\n{stopped}");
    assert!(records > dropped, "{stopped}");

    // Exactly the records not counted as lost reached the destination.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len() as u64,
        records - dropped,
        "records {records}, dropped {dropped}"
    );
    // Logged once per 30 s at most, with the numbers.
    let drop_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("sink cannot keep up with the record rate"))
        .collect();
    assert!(!drop_lines.is_empty(), "drops not logged");
    assert!(
        drop_lines.len() as f64 <= 2.0 + flood_secs / 30.0,
        "{drop_lines:#?}"
    );
    for l in &drop_lines {
        assert!(log_field(l, "records") > 0, "{l}");
    }
}
