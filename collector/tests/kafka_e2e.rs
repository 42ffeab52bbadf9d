//! End to end through a real Kafka broker: `flowlens run` in namespace B with XDP on B's
//! loopback (so both directions of each conversation are observed) and two sinks at once,
//! `--sink parquet:DIR --sink kafka:A:PORT/TOPIC`, where tansu (a Kafka-compatible broker
//! process) runs in namespace A behind a veth pair. The Kafka traffic itself crosses the veth,
//! which has no probe. The topic is consumed back with rdkafka, every message decoded
//! (protobuf, `schema/proto/flow.proto`) and compared field by field with the Parquet rows:
//! both sinks got exactly the same records. Keys: FNV-1a of the Community ID, both directions
//! of the TCP conversation in one partition. Needs root and tansu (`cargo xtask setup`).

use flowlens_testkit::temp_dir;
use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::Stdio,
    time::Duration,
};

use arrow_array::{
    Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt8Array,
    UInt16Array, UInt32Array,
};
use flowlens_sinks::kafka::encode::FlowMessage;
use flowlens_testkit::{
    Netns, icmp_echo,
    kafka::{Tansu, consume_all},
    tcp_transfer, udp_exchange, veth_pair,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use prost::Message as _;

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");

/// FNV-1a 64, written out here independently of the sink's `message_key`.
fn fnv1a(s: &str) -> [u8; 8] {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    h.to_be_bytes()
}

/// Parquet rows as `FlowMessage`s (the protobuf fields are named after the columns).
fn parquet_rows(dir: &Path) -> Vec<FlowMessage> {
    let mut out = Vec::new();
    for f in flowlens::top::parquet_files(dir).unwrap() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b: RecordBatch = b.unwrap();
            fn col<'a, T: 'static>(b: &'a RecordBatch, n: &str) -> &'a T {
                b.column_by_name(n)
                    .unwrap_or_else(|| panic!("no column {n}"))
                    .as_any()
                    .downcast_ref::<T>()
                    .unwrap_or_else(|| panic!("column {n} type"))
            }
            let s = |n: &str| col::<StringArray>(&b, n);
            let u8c = |n: &str| col::<UInt8Array>(&b, n);
            let u16c = |n: &str| col::<UInt16Array>(&b, n);
            let i64c = |n: &str| col::<Int64Array>(&b, n);
            let ts = |n: &str| col::<TimestampMicrosecondArray>(&b, n);
            let vlan = u16c("vlan_id");
            for i in 0..b.num_rows() {
                out.push(FlowMessage {
                    flow_start: ts("flow_start").value(i),
                    flow_end: ts("flow_end").value(i),
                    observation_point: s("observation_point").value(i).into(),
                    interface_name: s("interface_name").value(i).into(),
                    interface_index: col::<UInt32Array>(&b, "interface_index").value(i),
                    direction: s("direction").value(i).into(),
                    network_type: s("network_type").value(i).into(),
                    protocol: u8c("protocol").value(i).into(),
                    network_transport: s("network_transport").value(i).into(),
                    source_address: s("source_address").value(i).into(),
                    destination_address: s("destination_address").value(i).into(),
                    source_port: u16c("source_port").value(i).into(),
                    destination_port: u16c("destination_port").value(i).into(),
                    icmp_type: u8c("icmp_type").value(i).into(),
                    icmp_code: u8c("icmp_code").value(i).into(),
                    vlan_id: (!vlan.is_null(i)).then(|| vlan.value(i).into()),
                    packets: i64c("packets").value(i),
                    bytes: i64c("bytes").value(i),
                    tcp_flags: u16c("tcp_flags").value(i).into(),
                    dscp: u8c("dscp").value(i).into(),
                    flow_end_reason: s("flow_end_reason").value(i).into(),
                    host: s("host").value(i).into(),
                    community_id: s("community_id").value(i).into(),
                    source_cgroup: opt_str(&b, "source_cgroup", i),
                    source_container_id: opt_str(&b, "source_container_id", i),
                    source_k8s_pod_uid: opt_str(&b, "source_k8s_pod_uid", i),
                    source_process_name: opt_str(&b, "source_process_name", i),
                    source_process_pid: opt_u32(&b, "source_process_pid", i),
                    source_label: opt_str(&b, "source_label", i),
                    destination_cgroup: opt_str(&b, "destination_cgroup", i),
                    destination_container_id: opt_str(&b, "destination_container_id", i),
                    destination_k8s_pod_uid: opt_str(&b, "destination_k8s_pod_uid", i),
                    destination_process_name: opt_str(&b, "destination_process_name", i),
                    destination_process_pid: opt_u32(&b, "destination_process_pid", i),
                    destination_label: opt_str(&b, "destination_label", i),
                    source_k8s_namespace: opt_str(&b, "source_k8s_namespace", i),
                    source_k8s_pod_name: opt_str(&b, "source_k8s_pod_name", i),
                    source_k8s_owner_kind: opt_str(&b, "source_k8s_owner_kind", i),
                    source_k8s_owner_name: opt_str(&b, "source_k8s_owner_name", i),
                    source_k8s_node_name: opt_str(&b, "source_k8s_node_name", i),
                    source_k8s_service_name: opt_str(&b, "source_k8s_service_name", i),
                    source_zone: opt_str(&b, "source_zone", i),
                    destination_k8s_namespace: opt_str(&b, "destination_k8s_namespace", i),
                    destination_k8s_pod_name: opt_str(&b, "destination_k8s_pod_name", i),
                    destination_k8s_owner_kind: opt_str(&b, "destination_k8s_owner_kind", i),
                    destination_k8s_owner_name: opt_str(&b, "destination_k8s_owner_name", i),
                    destination_k8s_node_name: opt_str(&b, "destination_k8s_node_name", i),
                    destination_k8s_service_name: opt_str(&b, "destination_k8s_service_name", i),
                    destination_zone: opt_str(&b, "destination_zone", i),
                });
            }
        }
    }
    out
}

/// A nullable identity column (issue 12) of row `i`.
fn opt_str(b: &arrow_array::RecordBatch, n: &str, i: usize) -> Option<String> {
    let c = b
        .column_by_name(n)?
        .as_any()
        .downcast_ref::<StringArray>()?;
    (!c.is_null(i)).then(|| c.value(i).to_string())
}

fn opt_u32(b: &arrow_array::RecordBatch, n: &str, i: usize) -> Option<u32> {
    let c = b
        .column_by_name(n)?
        .as_any()
        .downcast_ref::<UInt32Array>()?;
    (!c.is_null(i)).then(|| c.value(i))
}

fn sort(v: &mut [FlowMessage]) {
    v.sort_by(|a, b| {
        (
            &a.community_id,
            &a.source_address,
            a.source_port,
            a.flow_start,
        )
            .cmp(&(
                &b.community_id,
                &b.source_address,
                b.source_port,
                b.flow_start,
            ))
    });
}

/// The `sink closed` line of the Kafka sink: (acknowledged, lost).
fn kafka_close_counts(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("sink closed") && l.contains("kafka:"))
        .unwrap_or_else(|| panic!("no kafka `sink closed` line:\n{stderr}"));
    let num = |k: &str| -> u64 {
        let i = line
            .find(&format!(" {k}="))
            .unwrap_or_else(|| panic!("{k} in {line}"));
        line[i + k.len() + 2..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("acknowledged"), num("lost"))
}

#[test]
fn flowlens_exports_the_same_records_to_kafka_and_parquet() {
    let a = Netns::new("kafa").unwrap();
    let b = Netns::new("kafb").unwrap();
    let link = veth_pair(&a, &b).unwrap();
    let tansu = Tansu::start_in(Some(&a), link.a_v4).unwrap();
    tansu.create_topic("flows", 3).unwrap();
    let out = temp_dir("kafka-e2e").unwrap();

    let child = b
        .command(FLOWLENS)
        .args(["run", "--xdp", "lo", "--xdp-mode", "skb"])
        .args(["--drain-interval", "500ms", "--idle-timeout", "2s"])
        .arg("--sink")
        .arg(format!("parquet:{}", out.display()))
        .arg("--sink")
        .arg(format!("kafka:{}/flows", tansu.bootstrap()))
        .arg("--spool-dir")
        .arg(out.with_extension("sinkspool"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    b.wait_xdp("lo", true).unwrap();

    // Traffic on B's loopback: both directions of each conversation pass the probe.
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(
        tcp_transfer(
            &b,
            &b,
            SocketAddr::new(lo, 41001),
            SocketAddr::new(lo, 7101),
            200_000
        )
        .unwrap(),
        200_000
    );
    assert_eq!(
        udp_exchange(
            &b,
            &b,
            SocketAddr::new(lo, 41002),
            SocketAddr::new(lo, 7102),
            25,
            100
        )
        .unwrap(),
        25
    );
    assert_eq!(icmp_echo(&b, lo, lo, 3, 56, 0x4b41).unwrap(), 3);
    // Let some records leave by idle timeout while running (the rest at the final drain).
    std::thread::sleep(Duration::from_secs(3));

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let res = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
    eprint!("{stderr}");
    assert!(res.status.success(), "flowlens exited with {}", res.status);

    let mut from_parquet = parquet_rows(&out);
    let n = from_parquet.len();
    let (acked, lost) = kafka_close_counts(&stderr);
    assert_eq!((acked, lost), (n as u64, 0), "kafka sink counters");

    let got = a
        .run_in({
            let bootstrap = tansu.bootstrap();
            move || {
                consume_all(
                    &bootstrap,
                    "flows",
                    n,
                    Duration::from_secs(2),
                    Duration::from_secs(60),
                )
            }
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\ntansu log:\n{}", tansu.log()));
    assert_eq!(got.len(), n, "kafka messages vs parquet rows");
    let mut partition_of: BTreeMap<[u8; 8], i32> = BTreeMap::new();
    let mut from_kafka: Vec<FlowMessage> = got
        .iter()
        .map(|c| {
            let m = FlowMessage::decode(&c.payload[..]).expect("protobuf FlowRecord");
            let key = fnv1a(&m.community_id);
            assert_eq!(
                c.key.as_deref(),
                Some(&key[..]),
                "key of {}",
                m.community_id
            );
            let p = *partition_of.entry(key).or_insert(c.partition);
            assert_eq!(p, c.partition, "{} split over partitions", m.community_id);
            m
        })
        .collect();
    sort(&mut from_kafka);
    sort(&mut from_parquet);
    assert_eq!(
        from_kafka, from_parquet,
        "the two sinks got different records"
    );

    // Our conversations are there, in both directions where the protocol has two.
    let tcp: Vec<&FlowMessage> = from_kafka
        .iter()
        .filter(|m| m.protocol == 6 && [m.source_port, m.destination_port].contains(&7101))
        .collect();
    assert!(
        tcp.iter().any(|m| m.source_port == 41001) && tcp.iter().any(|m| m.source_port == 7101),
        "TCP conversation not seen in both directions: {tcp:?}"
    );
    assert!(tcp.iter().all(|m| m.community_id == tcp[0].community_id));
    let tcp_bytes: i64 = tcp
        .iter()
        .filter(|m| m.source_port == 41001)
        .map(|m| m.bytes)
        .sum();
    assert!(tcp_bytes > 200_000, "TCP bytes A->B {tcp_bytes}");
    let udp_packets: i64 = from_kafka
        .iter()
        .filter(|m| m.protocol == 17 && m.source_port == 41002 && m.destination_port == 7102)
        .map(|m| m.packets)
        .sum();
    assert_eq!(udp_packets, 25);
    let icmp: Vec<&FlowMessage> = from_kafka.iter().filter(|m| m.protocol == 1).collect();
    assert!(
        icmp.iter().any(|m| m.icmp_type == 8) && icmp.iter().any(|m| m.icmp_type == 0),
        "echo request and reply: {icmp:?}"
    );
    assert!(from_kafka.iter().all(|m| m.interface_name == "lo"));
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(out.with_extension("sinkspool")).ok();
}
