//! OTLP request builders: flow records in, protobuf messages out. Pure (no I/O, no clock of its
//! own), so they are unit-tested and benchmarked without a server.
//!
//! Each flow record becomes one OTLP log record: `time_unix_nano` is the flow end, the other
//! columns of [`COLUMNS`] become attributes named by [`ATTRIBUTES`] (OpenTelemetry semantic
//! convention names where one exists, `flow.*` otherwise), and the exporter host is the resource
//! attribute `host.name`. A test checks that [`ATTRIBUTES`] covers every column, and that the
//! encoder emits exactly the attributes it lists.
//!
//! [`COLUMNS`]: flowlens_schema::record::COLUMNS

use std::collections::BTreeMap;

use flowlens_schema::record::{
    EndIdentity, FlowRecord, direction_name, observation_point_name, transport_name,
};
use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{
        AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
        metric::Data, number_data_point,
    },
    resource::v1::Resource,
};

/// Where a schema column goes in an OTLP log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The log record's `time_unix_nano`.
    Timestamp,
    /// A log record attribute of this name.
    Attribute(&'static str),
    /// A resource attribute of this name (same for every record of one exporter).
    Resource(&'static str),
}

/// Column of the export schema → its place in the OTLP log record. Every column of
/// `schema::record::COLUMNS` appears exactly once (tested). Attribute value types: strings for
/// text columns, `int` for numbers; `vlan_id` is omitted when the record has none (null column).
pub const ATTRIBUTES: &[(&str, Target)] = &[
    ("flow_start", Target::Attribute("flow.start_time_unix_nano")),
    ("flow_end", Target::Timestamp),
    (
        "observation_point",
        Target::Attribute("flow.observation_point"),
    ),
    (
        "interface_name",
        Target::Attribute("network.interface.name"),
    ),
    ("interface_index", Target::Attribute("flow.interface.index")),
    ("direction", Target::Attribute("flow.direction")),
    ("network_type", Target::Attribute("network.type")),
    ("protocol", Target::Attribute("flow.protocol")),
    ("network_transport", Target::Attribute("network.transport")),
    ("source_address", Target::Attribute("source.address")),
    (
        "destination_address",
        Target::Attribute("destination.address"),
    ),
    ("source_port", Target::Attribute("source.port")),
    ("destination_port", Target::Attribute("destination.port")),
    ("icmp_type", Target::Attribute("flow.icmp.type")),
    ("icmp_code", Target::Attribute("flow.icmp.code")),
    ("vlan_id", Target::Attribute("flow.vlan.id")),
    ("packets", Target::Attribute("flow.packets")),
    ("bytes", Target::Attribute("flow.bytes")),
    ("tcp_flags", Target::Attribute("flow.tcp_flags")),
    ("dscp", Target::Attribute("flow.dscp")),
    ("flow_end_reason", Target::Attribute("flow.end_reason")),
    ("host", Target::Resource("host.name")),
    ("community_id", Target::Attribute("flow.community_id")),
    // Identity of each end (issue 12): OpenTelemetry's container/k8s/process names under the
    // end's prefix; omitted when null.
    ("source_cgroup", Target::Attribute("flow.source.cgroup")),
    (
        "source_container_id",
        Target::Attribute("source.container.id"),
    ),
    (
        "source_k8s_pod_uid",
        Target::Attribute("source.k8s.pod.uid"),
    ),
    (
        "source_process_name",
        Target::Attribute("source.process.executable.name"),
    ),
    (
        "source_process_pid",
        Target::Attribute("source.process.pid"),
    ),
    ("source_label", Target::Attribute("flow.source.label")),
    (
        "destination_cgroup",
        Target::Attribute("flow.destination.cgroup"),
    ),
    (
        "destination_container_id",
        Target::Attribute("destination.container.id"),
    ),
    (
        "destination_k8s_pod_uid",
        Target::Attribute("destination.k8s.pod.uid"),
    ),
    (
        "destination_process_name",
        Target::Attribute("destination.process.executable.name"),
    ),
    (
        "destination_process_pid",
        Target::Attribute("destination.process.pid"),
    ),
    (
        "destination_label",
        Target::Attribute("flow.destination.label"),
    ), // Kubernetes names of each end (issue 13): the draft network-flow convention's
    // `source.k8s.*` / `destination.*` names; the Service and the zone follow OpenTelemetry's
    // `k8s.service.name` and `cloud.availability_zone` under the end's prefix. Omitted when null.
    (
        "source_k8s_namespace",
        Target::Attribute("source.k8s.namespace.name"),
    ),
    (
        "source_k8s_pod_name",
        Target::Attribute("source.k8s.pod.name"),
    ),
    (
        "source_k8s_owner_kind",
        Target::Attribute("source.k8s.owner.type"),
    ),
    (
        "source_k8s_owner_name",
        Target::Attribute("source.k8s.owner.name"),
    ),
    (
        "source_k8s_node_name",
        Target::Attribute("source.k8s.node.name"),
    ),
    (
        "source_k8s_service_name",
        Target::Attribute("source.k8s.service.name"),
    ),
    (
        "source_zone",
        Target::Attribute("source.cloud.availability_zone"),
    ),
    (
        "destination_k8s_namespace",
        Target::Attribute("destination.k8s.namespace.name"),
    ),
    (
        "destination_k8s_pod_name",
        Target::Attribute("destination.k8s.pod.name"),
    ),
    (
        "destination_k8s_owner_kind",
        Target::Attribute("destination.k8s.owner.type"),
    ),
    (
        "destination_k8s_owner_name",
        Target::Attribute("destination.k8s.owner.name"),
    ),
    (
        "destination_k8s_node_name",
        Target::Attribute("destination.k8s.node.name"),
    ),
    (
        "destination_k8s_service_name",
        Target::Attribute("destination.k8s.service.name"),
    ),
    (
        "destination_zone",
        Target::Attribute("destination.cloud.availability_zone"),
    ),
];

/// `event_name` of every flow log record.
pub const EVENT_NAME: &str = "flowlens.flow";
/// Instrumentation scope name of everything flowlens exports.
pub const SCOPE_NAME: &str = "flowlens";
/// Name of the cumulative byte counter exported with `--otlp-metrics`.
pub const METRIC_BYTES: &str = "flowlens.flow.bytes";
/// Name of the cumulative packet counter exported with `--otlp-metrics`.
pub const METRIC_PACKETS: &str = "flowlens.flow.packets";
/// Cumulative byte counter per workload pair and zone pair (`--otlp-metrics`, issue 13).
pub const METRIC_WORKLOAD_BYTES: &str = "flowlens.workload.flow.bytes";
/// Cumulative packet counter per workload pair and zone pair.
pub const METRIC_WORKLOAD_PACKETS: &str = "flowlens.workload.flow.packets";
/// Cumulative count of records that went to the overflow series (the cap was reached).
pub const METRIC_WORKLOAD_OVERFLOW: &str = "flowlens.workload.flow.overflow_records";
/// Most workload series (distinct [`WorkloadKey`]s) one exporter keeps: past it, records of
/// new keys are counted in one overflow series (attribute `flowlens.overflow` = true, no
/// workload attributes) and in [`METRIC_WORKLOAD_OVERFLOW`]. Keys are never dropped (cumulative
/// counters must not go back), so this bounds the metric's cardinality for the exporter's life.
pub const MAX_WORKLOAD_SERIES: usize = 10_000;
/// Attribute names of a [`WorkloadKey`], per end: namespace, owner kind, owner name, zone.
pub const WORKLOAD_ATTRIBUTES: [[&str; 4]; 2] = [
    [
        "source.k8s.namespace.name",
        "source.k8s.owner.type",
        "source.k8s.owner.name",
        "source.cloud.availability_zone",
    ],
    [
        "destination.k8s.namespace.name",
        "destination.k8s.owner.type",
        "destination.k8s.owner.name",
        "destination.cloud.availability_zone",
    ],
];

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}

fn i(v: impl Into<i64>) -> Value {
    Value::IntValue(v.into())
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The resource every export carries: `service.name=flowlens`, `service.version`, `host.name`.
pub fn resource(host: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", s("flowlens")),
            kv("service.version", s(env!("CARGO_PKG_VERSION"))),
            kv("host.name", s(host)),
        ],
        ..Default::default()
    }
}

fn us_to_ns(us: i64) -> u64 {
    (us.max(0) as u64).saturating_mul(1000)
}

/// Attribute names of one end's Kubernetes names, in `K8S_END_FIELDS` order.
pub const K8S_ATTRIBUTES: [[&str; 7]; 2] = [
    [
        "source.k8s.namespace.name",
        "source.k8s.pod.name",
        "source.k8s.owner.type",
        "source.k8s.owner.name",
        "source.k8s.node.name",
        "source.k8s.service.name",
        "source.cloud.availability_zone",
    ],
    [
        "destination.k8s.namespace.name",
        "destination.k8s.pod.name",
        "destination.k8s.owner.type",
        "destination.k8s.owner.name",
        "destination.k8s.node.name",
        "destination.k8s.service.name",
        "destination.cloud.availability_zone",
    ],
];

/// Attribute names of one end's identity, in `END_FIELDS` order.
const END_ATTRIBUTES: [[&str; 6]; 2] = [
    [
        "flow.source.cgroup",
        "source.container.id",
        "source.k8s.pod.uid",
        "source.process.executable.name",
        "source.process.pid",
        "flow.source.label",
    ],
    [
        "flow.destination.cgroup",
        "destination.container.id",
        "destination.k8s.pod.uid",
        "destination.process.executable.name",
        "destination.process.pid",
        "flow.destination.label",
    ],
];

fn end_attributes(a: &mut Vec<KeyValue>, e: &EndIdentity, names: &[&str; 6]) {
    let texts = [
        (0, &e.cgroup),
        (1, &e.container_id),
        (2, &e.k8s_pod_uid),
        (3, &e.process_name),
    ];
    for (j, v) in texts {
        if let Some(v) = v {
            a.push(kv(names[j], s(&**v)));
        }
    }
    if let Some(pid) = e.process_pid {
        a.push(kv(names[4], i(pid)));
    }
    if let Some(l) = &e.label {
        a.push(kv(names[5], s(&**l)));
    }
}

fn k8s_attributes(a: &mut Vec<KeyValue>, e: &EndIdentity, names: &[&str; 7]) {
    for (name, v) in names.iter().zip(e.k8s_fields()) {
        if let Some(v) = v {
            a.push(kv(name, s(&**v)));
        }
    }
}

/// One flow record as an OTLP log record (see [`ATTRIBUTES`]).
pub fn log_record(r: &FlowRecord, observed_ns: u64) -> LogRecord {
    let k = &r.key;
    let mut a = Vec::with_capacity(22);
    a.push(kv(
        "flow.start_time_unix_nano",
        i(us_to_ns(r.flow_start_us) as i64),
    ));
    a.push(kv(
        "flow.observation_point",
        s(observation_point_name(k.observation_point)),
    ));
    a.push(kv("network.interface.name", s(&*r.interface_name)));
    a.push(kv("flow.interface.index", i(k.ifindex)));
    a.push(kv("flow.direction", s(direction_name(k.observation_point))));
    a.push(kv(
        "network.type",
        s(if k.ip_version == 4 { "ipv4" } else { "ipv6" }),
    ));
    a.push(kv("flow.protocol", i(k.protocol)));
    a.push(kv("network.transport", s(transport_name(k.protocol))));
    a.push(kv("source.address", s(r.source_address().to_string())));
    a.push(kv(
        "destination.address",
        s(r.destination_address().to_string()),
    ));
    a.push(kv("source.port", i(k.src_port)));
    a.push(kv("destination.port", i(k.dst_port)));
    a.push(kv("flow.icmp.type", i(k.icmp_type)));
    a.push(kv("flow.icmp.code", i(k.icmp_code)));
    if let Some(v) = r.vlan_id() {
        a.push(kv("flow.vlan.id", i(v)));
    }
    a.push(kv("flow.packets", i(r.packets as i64)));
    a.push(kv("flow.bytes", i(r.bytes as i64)));
    a.push(kv("flow.tcp_flags", i(r.tcp_flags)));
    a.push(kv("flow.dscp", i(r.dscp)));
    a.push(kv("flow.end_reason", s(r.end_reason.as_str())));
    a.push(kv("flow.community_id", s(r.community_id.as_str())));
    end_attributes(&mut a, &r.ends.source, &END_ATTRIBUTES[0]);
    end_attributes(&mut a, &r.ends.destination, &END_ATTRIBUTES[1]);
    k8s_attributes(&mut a, &r.ends.source, &K8S_ATTRIBUTES[0]);
    k8s_attributes(&mut a, &r.ends.destination, &K8S_ATTRIBUTES[1]);
    LogRecord {
        time_unix_nano: us_to_ns(r.flow_end_us),
        observed_time_unix_nano: observed_ns,
        // INFO: a flow record is an ordinary event, not a problem.
        severity_number: 9,
        severity_text: "INFO".into(),
        attributes: a,
        event_name: EVENT_NAME.into(),
        ..Default::default()
    }
}

/// One export request holding `records` (the caller splits batches to the request size).
pub fn logs_request(
    resource: &Resource,
    records: &[FlowRecord],
    observed_ns: u64,
) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records.iter().map(|r| log_record(r, observed_ns)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The low-cardinality attribute set of the capacity metrics: never per flow.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricKey {
    pub interface: String,
    pub direction: &'static str,
    pub transport: String,
    pub observation_point: &'static str,
}

impl MetricKey {
    fn attributes(&self) -> Vec<KeyValue> {
        vec![
            kv("network.interface.name", s(&self.interface)),
            kv("flow.direction", s(self.direction)),
            kv("network.transport", s(&self.transport)),
            kv("flow.observation_point", s(self.observation_point)),
        ]
    }
}

/// The workload attribute set (issue 13): per end (source, destination) its namespace, top
/// owner kind, top owner name and zone; a null name is an omitted attribute. The namespace pair
/// and the zone pair are part of it, so summing over the other attributes gives those views.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey(pub [[Option<std::sync::Arc<str>>; 4]; 2]);

impl WorkloadKey {
    /// `None` when neither end carries any of the names (such records stay out of the
    /// workload counters; they are in [`METRIC_BYTES`]).
    pub fn of(r: &FlowRecord) -> Option<WorkloadKey> {
        let end = |e: &EndIdentity| {
            [
                e.k8s_namespace.clone(),
                e.k8s_owner_kind.clone(),
                e.k8s_owner_name.clone(),
                e.zone.clone(),
            ]
        };
        let k = WorkloadKey([end(&r.ends.source), end(&r.ends.destination)]);
        k.0.iter().flatten().any(Option::is_some).then_some(k)
    }
    fn attributes(&self) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(8);
        for (names, vals) in WORKLOAD_ATTRIBUTES.iter().zip(&self.0) {
            for (n, v) in names.iter().zip(vals) {
                if let Some(v) = v {
                    a.push(kv(n, s(&**v)));
                }
            }
        }
        a
    }
}

/// Cumulative byte and packet totals per [`MetricKey`] since `start_ns`, and per
/// [`WorkloadKey`] (at most `workload_cap` keys, then the overflow series).
#[derive(Debug, Clone)]
pub struct MetricsAggregator {
    pub totals: BTreeMap<MetricKey, (u64, u64)>,
    pub workloads: BTreeMap<WorkloadKey, (u64, u64)>,
    /// Bytes, packets and records of the overflow series.
    pub overflow: (u64, u64, u64),
    pub workload_cap: usize,
}

impl Default for MetricsAggregator {
    fn default() -> Self {
        MetricsAggregator::with_workload_cap(MAX_WORKLOAD_SERIES)
    }
}

impl MetricsAggregator {
    pub fn with_workload_cap(cap: usize) -> Self {
        MetricsAggregator {
            totals: BTreeMap::new(),
            workloads: BTreeMap::new(),
            overflow: (0, 0, 0),
            workload_cap: cap,
        }
    }

    /// Adds records' bytes and packets to their attribute sets. Returns true when this call
    /// sent the first record to the workload overflow series (the caller logs it once).
    pub fn add(&mut self, records: &[FlowRecord]) -> bool {
        let overflowed_before = self.overflow.2 > 0;
        for r in records {
            if let Some(w) = WorkloadKey::of(r) {
                let cap = self.workload_cap;
                let n = self.workloads.len();
                let slot = match self.workloads.get_mut(&w) {
                    Some(v) => Some(v),
                    None if n < cap => Some(self.workloads.entry(w).or_default()),
                    None => None,
                };
                match slot {
                    Some(v) => {
                        v.0 = v.0.saturating_add(r.bytes);
                        v.1 = v.1.saturating_add(r.packets);
                    }
                    None => {
                        let o = &mut self.overflow;
                        o.0 = o.0.saturating_add(r.bytes);
                        o.1 = o.1.saturating_add(r.packets);
                        o.2 += 1;
                    }
                }
            }
            let k = &r.key;
            let key = MetricKey {
                interface: r.interface_name.to_string(),
                direction: direction_name(k.observation_point),
                transport: transport_name(k.protocol).into_owned(),
                observation_point: observation_point_name(k.observation_point),
            };
            let e = self.totals.entry(key).or_default();
            e.0 = e.0.saturating_add(r.bytes);
            e.1 = e.1.saturating_add(r.packets);
        }
        !overflowed_before && self.overflow.2 > 0
    }

    /// Workload data points (the overflow series last), picking bytes or packets.
    fn workload_points(
        &self,
        pick: fn(u64, u64) -> u64,
        start_ns: u64,
        now_ns: u64,
    ) -> Vec<NumberDataPoint> {
        let point = |attributes, v: u64| NumberDataPoint {
            attributes,
            start_time_unix_nano: start_ns,
            time_unix_nano: now_ns,
            value: Some(number_data_point::Value::AsInt(
                v.min(i64::MAX as u64) as i64
            )),
            ..Default::default()
        };
        let mut v: Vec<NumberDataPoint> = self
            .workloads
            .iter()
            .map(|(k, (b, p))| point(k.attributes(), pick(*b, *p)))
            .collect();
        if self.overflow.2 > 0 {
            v.push(point(
                vec![kv("flowlens.overflow", Value::BoolValue(true))],
                pick(self.overflow.0, self.overflow.1),
            ));
        }
        v
    }

    /// A metrics export with two cumulative monotonic Sums (bytes `By`, packets `{packet}`), one
    /// data point per attribute set.
    pub fn request(
        &self,
        resource: &Resource,
        start_ns: u64,
        now_ns: u64,
    ) -> ExportMetricsServiceRequest {
        let points = |pick: fn(&(u64, u64)) -> u64| -> Vec<NumberDataPoint> {
            self.totals
                .iter()
                .map(|(k, v)| NumberDataPoint {
                    attributes: k.attributes(),
                    start_time_unix_nano: start_ns,
                    time_unix_nano: now_ns,
                    value: Some(number_data_point::Value::AsInt(
                        pick(v).min(i64::MAX as u64) as i64,
                    )),
                    ..Default::default()
                })
                .collect()
        };
        let sum = |name: &str, description: &str, unit: &str, data_points| Metric {
            name: name.into(),
            description: description.into(),
            unit: unit.into(),
            data: Some(Data::Sum(Sum {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics: {
                        let mut m = vec![
                            sum(
                                METRIC_BYTES,
                                "IP-layer bytes of exported flow records",
                                "By",
                                points(|v| v.0),
                            ),
                            sum(
                                METRIC_PACKETS,
                                "Packets of exported flow records",
                                "{packet}",
                                points(|v| v.1),
                            ),
                        ];
                        if !self.workloads.is_empty() || self.overflow.2 > 0 {
                            m.push(sum(
                                METRIC_WORKLOAD_BYTES,
                                "IP-layer bytes of exported flow records per source and destination workload (namespace, owner kind and name) and zone",
                                "By",
                                self.workload_points(|b, _| b, start_ns, now_ns),
                            ));
                            m.push(sum(
                                METRIC_WORKLOAD_PACKETS,
                                "Packets of exported flow records per source and destination workload and zone",
                                "{packet}",
                                self.workload_points(|_, p| p, start_ns, now_ns),
                            ));
                            m.push(sum(
                                METRIC_WORKLOAD_OVERFLOW,
                                "Records counted in the overflow series because the workload series cap was reached",
                                "{record}",
                                vec![NumberDataPoint {
                                    start_time_unix_nano: start_ns,
                                    time_unix_nano: now_ns,
                                    value: Some(number_data_point::Value::AsInt(
                                        self.overflow.2.min(i64::MAX as u64) as i64,
                                    )),
                                    ..Default::default()
                                }],
                            ));
                        }
                        m
                    },
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

/// `docs/SCHEMA.md`'s OTLP mapping table, generated from [`ATTRIBUTES`] and the schema columns.
pub fn markdown_table() -> String {
    let mut out = String::from("| column | OTLP log record | value |\n|---|---|---|\n");
    for (col, target) in ATTRIBUTES {
        let ty = flowlens_schema::record::COLUMNS
            .iter()
            .find(|c| c.name == *col)
            .map(|c| (c.data_type)());
        let value = match (target, ty) {
            (Target::Timestamp, _) => "unix ns".to_string(),
            (_, Some(arrow_schema::DataType::Utf8)) => "string".to_string(),
            (Target::Attribute("flow.start_time_unix_nano"), _) => "int (unix ns)".to_string(),
            (_, Some(_)) => "int".to_string(),
            (_, None) => "?".to_string(),
        };
        let place = match target {
            Target::Timestamp => "`time_unix_nano`".to_string(),
            Target::Attribute(n) => format!("attribute `{n}`"),
            Target::Resource(n) => format!("resource attribute `{n}`"),
        };
        let nullable = if flowlens_schema::record::COLUMNS
            .iter()
            .any(|c| c.name == *col && c.nullable)
        {
            " (omitted when null)"
        } else {
            ""
        };
        out.push_str(&format!("| `{col}` | {place} | {value}{nullable} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlens_schema::{
        flow::{FlowKey, IPPROTO_TCP, OBS_XDP},
        record::{COLUMNS, EndReason},
    };

    fn full_end(tag: &str) -> flowlens_schema::record::EndIdentity {
        flowlens_schema::record::EndIdentity {
            cgroup: Some(format!("/system.slice/{tag}.service").into()),
            container_id: Some(format!("{tag}-cid").into()),
            k8s_pod_uid: Some(format!("{tag}-pod").into()),
            process_name: Some(format!("{tag}-proc").into()),
            process_pid: Some(if tag == "s" { 11 } else { 22 }),
            label: Some(format!("{tag}-label").into()),
            k8s_namespace: Some(format!("{tag}-ns").into()),
            k8s_pod_name: Some(format!("{tag}-podname").into()),
            k8s_owner_kind: Some("Deployment".into()),
            k8s_owner_name: Some(format!("{tag}-owner").into()),
            k8s_node_name: Some(format!("{tag}-node").into()),
            k8s_service_name: Some(format!("{tag}-svc").into()),
            zone: Some(format!("{tag}-zone").into()),
        }
    }

    fn sample(vlan: u16) -> FlowRecord {
        let mut key = FlowKey::ZERO;
        key.ip_version = 6;
        key.src_addr = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        key.dst_addr = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        key.protocol = IPPROTO_TCP;
        key.src_port = 40000;
        key.dst_port = 443;
        key.observation_point = OBS_XDP;
        key.ifindex = 7;
        key.vlan_id = vlan;
        FlowRecord {
            flow_start_us: 1_700_000_000_000_000,
            flow_end_us: 1_700_000_001_500_000,
            key,
            interface_name: "eth0".into(),
            packets: 3,
            bytes: 180,
            tcp_flags: 0x12,
            dscp: 46,
            end_reason: EndReason::EndOfFlow,
            host: "h1".into(),
            community_id: "1:abc=".into(),
            ends: flowlens_schema::record::Ends {
                source: full_end("s"),
                destination: full_end("d"),
            },
        }
    }

    fn attr<'a>(l: &'a LogRecord, key: &str) -> Option<&'a Value> {
        l.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    /// docs/SCHEMA.md must contain the generated OTLP table verbatim (between the `otlp`
    /// markers). `FLOWLENS_BLESS=1 cargo test -p flowlens-sinks --lib` rewrites it.
    #[test]
    fn schema_doc_otlp_table_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/SCHEMA.md");
        let doc = std::fs::read_to_string(path).expect("docs/SCHEMA.md");
        let (begin, end) = ("<!-- otlp:begin -->\n", "<!-- otlp:end -->");
        let b = doc.find(begin).expect("otlp begin marker") + begin.len();
        let e = doc.find(end).expect("otlp end marker");
        if std::env::var_os("FLOWLENS_BLESS").is_some() {
            let new = format!("{}{}{}", &doc[..b], markdown_table(), &doc[e..]);
            std::fs::write(path, new).unwrap();
            return;
        }
        assert_eq!(
            &doc[b..e],
            markdown_table(),
            "docs/SCHEMA.md OTLP table is out of date; run FLOWLENS_BLESS=1 cargo test -p flowlens-sinks --lib"
        );
    }

    #[test]
    fn mapping_covers_every_column_once() {
        let mapped: Vec<&str> = ATTRIBUTES.iter().map(|(c, _)| *c).collect();
        let cols: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        assert_eq!(mapped, cols, "ATTRIBUTES must list COLUMNS in order");
        let mut names: Vec<&str> = ATTRIBUTES
            .iter()
            .filter_map(|(_, t)| match t {
                Target::Attribute(n) | Target::Resource(n) => Some(*n),
                Target::Timestamp => None,
            })
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "attribute names must be unique");
    }

    #[test]
    fn encoder_emits_exactly_the_mapped_attributes_with_values() {
        let l = log_record(&sample(42), 5);
        let mut emitted: Vec<&str> = l.attributes.iter().map(|a| a.key.as_str()).collect();
        let mut want: Vec<&str> = ATTRIBUTES
            .iter()
            .filter_map(|(_, t)| match t {
                Target::Attribute(n) => Some(*n),
                _ => None,
            })
            .collect();
        emitted.sort();
        want.sort();
        assert_eq!(emitted, want);
        assert_eq!(l.time_unix_nano, 1_700_000_001_500_000_000);
        assert_eq!(l.observed_time_unix_nano, 5);
        assert_eq!(attr(&l, "source.address"), Some(&s("2001:db8::1")));
        assert_eq!(attr(&l, "destination.address"), Some(&s("2001:db8::2")));
        assert_eq!(attr(&l, "source.port"), Some(&i(40000)));
        assert_eq!(attr(&l, "destination.port"), Some(&i(443)));
        assert_eq!(attr(&l, "network.transport"), Some(&s("tcp")));
        assert_eq!(attr(&l, "network.type"), Some(&s("ipv6")));
        assert_eq!(attr(&l, "flow.vlan.id"), Some(&i(42)));
        assert_eq!(attr(&l, "flow.tcp_flags"), Some(&i(0x12)));
        assert_eq!(attr(&l, "flow.dscp"), Some(&i(46)));
        assert_eq!(attr(&l, "flow.end_reason"), Some(&s("end_of_flow")));
        assert_eq!(
            attr(&l, "flow.start_time_unix_nano"),
            Some(&i(1_700_000_000_000_000_000i64))
        );
        assert_eq!(attr(&l, "source.container.id"), Some(&s("s-cid")));
        assert_eq!(attr(&l, "source.k8s.pod.uid"), Some(&s("s-pod")));
        assert_eq!(
            attr(&l, "source.process.executable.name"),
            Some(&s("s-proc"))
        );
        assert_eq!(attr(&l, "source.process.pid"), Some(&i(11)));
        assert_eq!(
            attr(&l, "flow.source.cgroup"),
            Some(&s("/system.slice/s.service"))
        );
        assert_eq!(attr(&l, "flow.source.label"), Some(&s("s-label")));
        assert_eq!(attr(&l, "destination.container.id"), Some(&s("d-cid")));
        assert_eq!(attr(&l, "destination.process.pid"), Some(&i(22)));
        assert_eq!(attr(&l, "flow.destination.label"), Some(&s("d-label")));
        for t in ["source", "destination"] {
            let tag = &t[..1];
            let a = |n: &str| attr(&l, &format!("{t}.{n}")).cloned();
            assert_eq!(a("k8s.namespace.name"), Some(s(format!("{tag}-ns"))));
            assert_eq!(a("k8s.pod.name"), Some(s(format!("{tag}-podname"))));
            assert_eq!(a("k8s.owner.type"), Some(s("Deployment")));
            assert_eq!(a("k8s.owner.name"), Some(s(format!("{tag}-owner"))));
            assert_eq!(a("k8s.node.name"), Some(s(format!("{tag}-node"))));
            assert_eq!(a("k8s.service.name"), Some(s(format!("{tag}-svc"))));
            assert_eq!(a("cloud.availability_zone"), Some(s(format!("{tag}-zone"))));
        }
        // No VLAN: the attribute is left out (the column is null).
        let l = log_record(&sample(flowlens_schema::flow::VLAN_NONE), 5);
        assert_eq!(attr(&l, "flow.vlan.id"), None);
        assert_eq!(l.attributes.len(), want.len() - 1);
        // No identity: its 12 + 14 attributes are left out.
        let mut r = sample(42);
        r.ends = Default::default();
        assert_eq!(log_record(&r, 5).attributes.len(), want.len() - 26);
    }

    #[test]
    fn workload_series_are_capped_with_an_overflow_series() {
        let mut m = MetricsAggregator::with_workload_cap(2);
        let rec = |owner: &str| {
            let mut r = sample(0);
            r.ends = Default::default();
            r.ends.source.k8s_owner_name = Some(owner.into());
            r
        };
        let mut plain = sample(0);
        plain.ends = Default::default();
        assert!(!m.add(&[rec("a"), rec("b"), rec("a"), plain]));
        assert_eq!(m.workloads.len(), 2);
        assert_eq!(m.overflow, (0, 0, 0));
        // A third key goes to the overflow series; the first add that overflows says so.
        assert!(m.add(&[rec("c"), rec("a")]));
        assert!(!m.add(&[rec("d")]));
        assert_eq!(m.workloads.len(), 2);
        assert_eq!(m.overflow, (360, 6, 2));
        let a = m
            .workloads
            .iter()
            .find(|(k, _)| k.0[0][2].as_deref() == Some("a"))
            .unwrap();
        assert_eq!(*a.1, (540, 9));
        let req = m.request(&resource("h"), 1, 2);
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                METRIC_BYTES,
                METRIC_PACKETS,
                METRIC_WORKLOAD_BYTES,
                METRIC_WORKLOAD_PACKETS,
                METRIC_WORKLOAD_OVERFLOW
            ]
        );
        let Some(Data::Sum(sum)) = &metrics[2].data else {
            panic!("sum")
        };
        assert_eq!(sum.data_points.len(), 3);
        let last = sum.data_points.last().unwrap();
        assert_eq!(
            last.attributes,
            vec![kv("flowlens.overflow", Value::BoolValue(true))]
        );
        assert_eq!(last.value, Some(number_data_point::Value::AsInt(360)));
        assert_eq!(
            sum.data_points[0].attributes,
            vec![kv("source.k8s.owner.name", s("a"))]
        );
        // Without any Kubernetes name, no workload metrics at all.
        let mut none = MetricsAggregator::default();
        none.add(&[plain_record()]);
        let req = none.request(&resource("h"), 1, 2);
        assert_eq!(req.resource_metrics[0].scope_metrics[0].metrics.len(), 2);
    }

    fn plain_record() -> FlowRecord {
        let mut r = sample(0);
        r.ends = Default::default();
        r
    }

    #[test]
    fn metrics_aggregate_per_attribute_set() {
        let mut m = MetricsAggregator::default();
        let mut b = sample(0);
        b.interface_name = "eth1".into();
        m.add(&[sample(0), sample(0), b]);
        assert_eq!(m.totals.len(), 2);
        let req = m.request(&resource("h"), 1, 2);
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        // The sample names workloads: bytes and packets, then the three workload metrics.
        assert_eq!(metrics.len(), 5);
        assert_eq!(m.workloads.len(), 1);
        let Some(Data::Sum(sum)) = &metrics[0].data else {
            panic!("sum")
        };
        let total: i64 = sum
            .data_points
            .iter()
            .map(|p| match p.value {
                Some(number_data_point::Value::AsInt(v)) => v,
                _ => 0,
            })
            .sum();
        assert_eq!(total, 540);
        assert!(sum.is_monotonic);
    }
}
