//! Shared checks for the Kafka sink tests: what was consumed back equals what was written.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use flowlens_schema::record::FlowRecord;
use flowlens_sinks::kafka::{
    KafkaFormat,
    encode::{FlowMessage, rfc3339_micros},
    message_key,
};
use flowlens_testkit::kafka::Consumed;
use prost::Message as _;

/// Decodes every consumed message and checks that, as a multiset, they are exactly `records`
/// (every field), that every key is the record's key, and that both directions of each
/// conversation (same key) went to one partition.
pub fn assert_consumed_exactly(records: &[FlowRecord], got: &[Consumed], format: KafkaFormat) {
    assert_eq!(got.len(), records.len(), "consumed count");
    let mut want: Vec<FlowMessage> = records
        .iter()
        .map(|r| {
            let mut m = FlowMessage::default();
            m.fill(r);
            m
        })
        .collect();
    let key_of: HashMap<&str, [u8; 8]> = records
        .iter()
        .map(|r| (r.community_id.as_str(), message_key(r)))
        .collect();
    let mut partition_of_key: BTreeMap<Vec<u8>, i32> = BTreeMap::new();
    let mut decoded = Vec::with_capacity(got.len());
    for c in got {
        let m = match format {
            KafkaFormat::Protobuf => FlowMessage::decode(&c.payload[..])
                .unwrap_or_else(|e| panic!("offset {}: not a FlowRecord: {e}", c.offset)),
            KafkaFormat::Json => from_json(&c.payload),
        };
        let key = c.key.as_deref().expect("message without key");
        assert_eq!(
            key,
            &key_of
                .get(m.community_id.as_str())
                .unwrap_or_else(|| panic!("unknown community id {}", m.community_id))[..],
            "key of {}",
            m.community_id
        );
        let p = *partition_of_key.entry(key.to_vec()).or_insert(c.partition);
        assert_eq!(
            p, c.partition,
            "both directions of {} in one partition",
            m.community_id
        );
        decoded.push(m);
    }
    let order = |a: &FlowMessage, b: &FlowMessage| {
        (&a.community_id, &a.source_address, a.flow_end).cmp(&(
            &b.community_id,
            &b.source_address,
            b.flow_end,
        ))
    };
    want.sort_by(order);
    decoded.sort_by(order);
    for (i, (w, d)) in want.iter().zip(&decoded).enumerate() {
        assert_eq!(w, d, "record {i} (sorted)");
    }
}

/// A JSON message back into the protobuf struct (same field names), checking the timestamps'
/// text form on the way.
fn from_json(b: &[u8]) -> FlowMessage {
    let v: serde_json::Value = serde_json::from_slice(b).expect("JSON message");
    let s = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} not a string"))
            .to_string()
    };
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} not a number"));
    let ts = |k: &str| {
        let text = s(k);
        // Parse back by search: the encoder's format is fixed-width, so compare via re-format.
        let us = parse_rfc3339_micros(&text);
        assert_eq!(rfc3339_micros(us), text);
        us
    };
    FlowMessage {
        flow_start: ts("flow_start"),
        flow_end: ts("flow_end"),
        observation_point: s("observation_point"),
        interface_name: s("interface_name"),
        interface_index: n("interface_index") as u32,
        direction: s("direction"),
        network_type: s("network_type"),
        protocol: n("protocol") as u32,
        network_transport: s("network_transport"),
        source_address: s("source_address"),
        destination_address: s("destination_address"),
        source_port: n("source_port") as u32,
        destination_port: n("destination_port") as u32,
        icmp_type: n("icmp_type") as u32,
        icmp_code: n("icmp_code") as u32,
        vlan_id: v["vlan_id"].as_u64().map(|x| x as u32),
        packets: n("packets") as i64,
        bytes: n("bytes") as i64,
        tcp_flags: n("tcp_flags") as u32,
        dscp: n("dscp") as u32,
        flow_end_reason: s("flow_end_reason"),
        host: s("host"),
        community_id: s("community_id"),
        source_cgroup: v["source_cgroup"].as_str().map(str::to_string),
        source_container_id: v["source_container_id"].as_str().map(str::to_string),
        source_k8s_pod_uid: v["source_k8s_pod_uid"].as_str().map(str::to_string),
        source_process_name: v["source_process_name"].as_str().map(str::to_string),
        source_process_pid: v["source_process_pid"].as_u64().map(|x| x as u32),
        source_label: v["source_label"].as_str().map(str::to_string),
        destination_cgroup: v["destination_cgroup"].as_str().map(str::to_string),
        destination_container_id: v["destination_container_id"].as_str().map(str::to_string),
        destination_k8s_pod_uid: v["destination_k8s_pod_uid"].as_str().map(str::to_string),
        destination_process_name: v["destination_process_name"].as_str().map(str::to_string),
        destination_process_pid: v["destination_process_pid"].as_u64().map(|x| x as u32),
        destination_label: v["destination_label"].as_str().map(str::to_string),
        source_k8s_namespace: v["source_k8s_namespace"].as_str().map(str::to_string),
        source_k8s_pod_name: v["source_k8s_pod_name"].as_str().map(str::to_string),
        source_k8s_owner_kind: v["source_k8s_owner_kind"].as_str().map(str::to_string),
        source_k8s_owner_name: v["source_k8s_owner_name"].as_str().map(str::to_string),
        source_k8s_node_name: v["source_k8s_node_name"].as_str().map(str::to_string),
        source_k8s_service_name: v["source_k8s_service_name"].as_str().map(str::to_string),
        source_zone: v["source_zone"].as_str().map(str::to_string),
        destination_k8s_namespace: v["destination_k8s_namespace"].as_str().map(str::to_string),
        destination_k8s_pod_name: v["destination_k8s_pod_name"].as_str().map(str::to_string),
        destination_k8s_owner_kind: v["destination_k8s_owner_kind"].as_str().map(str::to_string),
        destination_k8s_owner_name: v["destination_k8s_owner_name"].as_str().map(str::to_string),
        destination_k8s_node_name: v["destination_k8s_node_name"].as_str().map(str::to_string),
        destination_k8s_service_name: v["destination_k8s_service_name"]
            .as_str()
            .map(str::to_string),
        destination_zone: v["destination_zone"].as_str().map(str::to_string),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` → µs since the epoch (days from civil, Hinnant).
fn parse_rfc3339_micros(t: &str) -> i64 {
    let num = |a: usize, b: usize| t[a..b].parse::<i64>().expect("digits");
    let (y, m, d) = (num(0, 4), num(5, 7), num(8, 10));
    let (hh, mm, ss, us) = (num(11, 13), num(14, 16), num(17, 19), num(20, 26));
    assert!(t.ends_with('Z'));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us
}
