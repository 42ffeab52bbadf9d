//! IPFIX sink (issue 15): encoding rate and size, and the UDP sink end to end to a loopback
//! receiver. `flowlens-bench ipfix` runs only this section (no root needed) and merges its
//! numbers into an existing `summary.json`.
//!
//! * `ipfix_encode_records_per_sec` / `ipfix_bytes_per_record`: [`Encoder::records`] over 100k
//!   records (2/3 IPv4, 1/3 IPv6) into messages of at most 1372 bytes (`--ipfix-mtu 1400` to an
//!   IPv4 collector), with the flowlens enterprise elements (the default) and without
//!   (`_iana_only`). Bytes per record include message and set headers; the median of 5 rounds.
//! * `ipfix_udp_records_per_sec`: the same records through [`UdpSink::write`] (encoding plus
//!   one `sendto` per message) to a UDP socket on loopback drained by a thread, median of 3
//!   rounds. `ipfix_udp_messages_received` is what that receiver got of the ~28k messages: UDP
//!   has no flow control, a receiver slower than the sender loses datagrams.

use std::{
    collections::BTreeMap,
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use flowlens_schema::{
    flow::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, OBS_XDP},
    record::{EndReason, FlowRecord},
};
use flowlens_sinks::{
    Sink,
    ipfix::{
        DEFAULT_ENTERPRISE_NUMBER, IpfixSettings, UdpSink,
        encode::{Encoder, EncoderConfig},
    },
};

const N: usize = 100_000;

fn records() -> Vec<FlowRecord> {
    (0..N)
        .map(|i| {
            let mut key = FlowKey::ZERO;
            if i % 3 == 2 {
                key.ip_version = 6;
                key.src_addr = [
                    0x20,
                    1,
                    0xd,
                    0xb8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    (i >> 8) as u8,
                    i as u8,
                ];
                key.dst_addr = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            } else {
                key.ip_version = 4;
                key.src_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 1, (i >> 8) as u8, i as u8]);
                key.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
            }
            key.protocol = if i % 2 == 0 { IPPROTO_TCP } else { IPPROTO_UDP };
            key.src_port = 1024 + (i % 60000) as u16;
            key.dst_port = 443;
            key.observation_point = OBS_XDP;
            key.ifindex = 2;
            FlowRecord {
                flow_start_us: 1_796_000_000_000_000 + i as i64 * 1000,
                flow_end_us: 1_796_000_000_500_000 + i as i64 * 1000,
                key,
                interface_name: "eth0".into(),
                packets: 10 + i as u64 % 100,
                bytes: 1500 * (10 + i as u64 % 100),
                tcp_flags: 0x1b,
                dscp: 0,
                end_reason: EndReason::IdleTimeout,
                host: "bench-host".into(),
                // A Community ID is 30 characters ("1:" + base64 of a SHA-1).
                community_id: format!("1:{:028}", i),
                ends: Default::default(),
            }
        })
        .collect()
}

fn encode_round(records: &[FlowRecord], enterprise: Option<u32>) -> (f64, f64) {
    let mut e = Encoder::new(EncoderConfig {
        domain_id: 1,
        max_message: 1372,
        enterprise,
    });
    let t = Instant::now();
    let mut bytes = 0usize;
    for chunk in records.chunks(4096) {
        e.records(chunk, 1);
        bytes += std::hint::black_box(e.take())
            .iter()
            .map(Vec::len)
            .sum::<usize>();
    }
    let secs = t.elapsed().as_secs_f64();
    (
        records.len() as f64 / secs,
        bytes as f64 / records.len() as f64,
    )
}

pub fn run(summary: &mut BTreeMap<String, f64>) -> Result<()> {
    let records = records();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    for (label, enterprise) in [("", Some(DEFAULT_ENTERPRISE_NUMBER)), ("_iana_only", None)] {
        let mut rates = Vec::new();
        let mut bpr = 0.0;
        for _ in 0..5 {
            let (r, b) = encode_round(&records, enterprise);
            rates.push(r);
            bpr = b;
        }
        summary.insert(
            format!("ipfix_encode_records_per_sec{label}"),
            med(&mut rates),
        );
        summary.insert(format!("ipfix_bytes_per_record{label}"), bpr);
    }

    // UDP sink end to end to a loopback receiver.
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    rx.set_read_timeout(Some(Duration::from_millis(500)))?;
    let port = rx.local_addr()?.port();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while rx.recv(&mut buf).is_ok() {
            g.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut sink = UdpSink::new(
        &format!("127.0.0.1:{port}"),
        &IpfixSettings::default(),
        "bench-host",
    )?;
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        for chunk in records.chunks(4096) {
            sink.write(chunk)?;
        }
        rates.push(records.len() as f64 / t.elapsed().as_secs_f64());
    }
    sink.close()?;
    anyhow::ensure!(sink.records_lost() == 0, "the UDP sink lost records");
    reader.join().ok();
    summary.insert("ipfix_udp_records_per_sec".into(), med(&mut rates));
    summary.insert(
        "ipfix_udp_messages_received".into(),
        got.load(Ordering::Relaxed) as f64,
    );
    Ok(())
}
