//! The OTLP sink against a real gRPC peer: an in-test tonic server implementing the OTLP
//! LogsService and MetricsService on an ephemeral loopback port.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use flowlens_schema::{
    flow::{FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, OBS_NF_LOCAL_OUT, OBS_XDP, VLAN_NONE},
    record::{EndIdentity, EndReason, Ends, FlowRecord},
};
use flowlens_sinks::{
    Sink,
    otlp::{OtlpOptions, OtlpSink, encode, service::RetryPolicy},
};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{
            ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
            logs_service_server::{LogsService, LogsServiceServer},
        },
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    logs::v1::LogRecord,
    metrics::v1::{AggregationTemporality, metric::Data, number_data_point},
};
use prost::Message;
use tonic::{Code, Request, Response, Status, codec::CompressionEncoding};

/// What the server does with the next requests.
#[derive(Default)]
struct Behaviour {
    /// Fail this many log requests first, with this code (and RetryInfo delay if set).
    fail_first: usize,
    fail_code: Option<Code>,
    retry_info: Option<Duration>,
    /// Answer the first successful log request with a partial success rejecting this many.
    partial_reject: i64,
}

#[derive(Default)]
struct State {
    behaviour: Behaviour,
    /// Every log request attempt (failed ones included).
    attempts: usize,
    /// Accepted log requests.
    logs: Vec<ExportLogsServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    /// `grpc-encoding` of every request.
    encodings: Vec<String>,
}

#[derive(Clone, Default)]
struct Server(Arc<Mutex<State>>);

// google.rpc.Status / Any / RetryInfo / Duration, declared here independently of the sink.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<PbAny>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PbAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<PbDuration>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PbDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

fn encoding<T>(r: &Request<T>) -> String {
    r.metadata()
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .to_string()
}

#[tonic::async_trait]
impl LogsService for Server {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let mut st = self.0.lock().unwrap();
        st.attempts += 1;
        st.encodings.push(encoding(&request));
        if st.attempts <= st.behaviour.fail_first {
            let code = st.behaviour.fail_code.unwrap_or(Code::Unavailable);
            return Err(match st.behaviour.retry_info {
                Some(d) => {
                    let ri = RetryInfo {
                        retry_delay: Some(PbDuration {
                            seconds: d.as_secs() as i64,
                            nanos: d.subsec_nanos() as i32,
                        }),
                    };
                    let s = RpcStatus {
                        code: code as i32,
                        message: "busy".into(),
                        details: vec![PbAny {
                            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                            value: ri.encode_to_vec(),
                        }],
                    };
                    Status::with_details(code, "busy", s.encode_to_vec().into())
                }
                None => Status::new(code, "test server says no"),
            });
        }
        let partial = std::mem::take(&mut st.behaviour.partial_reject);
        st.logs.push(request.into_inner());
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: (partial > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: partial,
                error_message: "some records are bad".into(),
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Server {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut st = self.0.lock().unwrap();
        st.encodings.push(encoding(&request));
        st.metrics.push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Starts the server on 127.0.0.1:0 in its own thread; it lives until the test process ends.
fn start_server(behaviour: Behaviour) -> (SocketAddr, Server) {
    let server = Server(Arc::new(Mutex::new(State {
        behaviour,
        ..Default::default()
    })));
    let s = server.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
                    .unwrap();
            tx.send(incoming.local_addr().unwrap()).unwrap();
            tonic::transport::Server::builder()
                .add_service(
                    LogsServiceServer::new(s.clone()).accept_compressed(CompressionEncoding::Gzip),
                )
                .add_service(
                    MetricsServiceServer::new(s).accept_compressed(CompressionEncoding::Gzip),
                )
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
    });
    (rx.recv().unwrap(), server)
}

fn record(i: u32) -> FlowRecord {
    let mut key = FlowKey::ZERO;
    key.ip_version = 4;
    key.src_addr[10..].copy_from_slice(&[0xff, 0xff, 10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    key.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 192, 0, 2, 1]);
    key.protocol = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP][i as usize % 3];
    if key.protocol == IPPROTO_ICMP {
        key.icmp_type = 8;
    } else {
        key.src_port = 10_000 + (i % 50_000) as u16;
        key.dst_port = 443;
    }
    key.observation_point = if i.is_multiple_of(4) {
        OBS_NF_LOCAL_OUT
    } else {
        OBS_XDP
    };
    key.ifindex = 2 + i % 2;
    key.vlan_id = if i.is_multiple_of(5) { 100 } else { VLAN_NONE };
    FlowRecord {
        flow_start_us: 1_790_000_000_000_000 + i as i64,
        flow_end_us: 1_790_000_000_000_000 + 1_000_000 + i as i64,
        key,
        interface_name: if i.is_multiple_of(2) {
            "eth0".into()
        } else {
            "eth1".into()
        },
        packets: 1 + i as u64 % 7,
        bytes: 60 + i as u64,
        tcp_flags: if i.is_multiple_of(3) { 0x1b } else { 0 },
        dscp: (i % 64) as u8,
        end_reason: EndReason::IdleTimeout,
        host: "testhost".into(),
        community_id: format!("1:rec{i}"),
        ends: ends(i),
    }
}

/// Identity (issue 12) and Kubernetes names (issue 13) on some records: every field of both
/// ends set on every sixth, a few on others, none on the rest.
fn ends(i: u32) -> Ends {
    let mut e = Ends::default();
    let full = |tag: &str| EndIdentity {
        cgroup: Some(format!("/kubepods.slice/{tag}-{i}.scope").into()),
        container_id: Some(format!("{tag}{i:063x}").into()),
        k8s_pod_uid: Some(format!("{tag}-uid-{i}").into()),
        process_name: Some(format!("{tag}-proc").into()),
        process_pid: Some(1000 + i),
        label: Some(format!("{tag}-label").into()),
        k8s_namespace: Some(format!("{tag}-ns-{}", i % 3).into()),
        k8s_pod_name: Some(format!("{tag}-pod-{i}").into()),
        k8s_owner_kind: Some("Deployment".into()),
        k8s_owner_name: Some(format!("{tag}-app-{}", i % 5).into()),
        k8s_node_name: Some(format!("node-{}", i % 4).into()),
        k8s_service_name: Some(format!("{tag}-svc").into()),
        zone: Some(format!("zone-ü-{}", i % 2).into()),
    };
    match i % 6 {
        0 => {
            e.source = full("a");
            e.destination = full("b");
        }
        2 => {
            e.destination.k8s_namespace = Some("shop".into());
            e.destination.k8s_service_name = Some("frontend".into());
        }
        4 => {
            e.source.k8s_pod_name = Some(format!("solo-{i}").into());
            e.source.zone = Some("eu-west-1b".into());
        }
        _ => {}
    }
    e
}

/// Every identity and Kubernetes attribute of both ends (by the names docs/SCHEMA.md lists):
/// present with the record's value exactly when the record has one.
fn check_ends(r: &FlowRecord, a: &[KeyValue]) {
    for (end, e) in [
        ("source", &r.ends.source),
        ("destination", &r.ends.destination),
    ] {
        let texts = [
            (format!("flow.{end}.cgroup"), &e.cgroup),
            (format!("{end}.container.id"), &e.container_id),
            (format!("{end}.k8s.pod.uid"), &e.k8s_pod_uid),
            (format!("{end}.process.executable.name"), &e.process_name),
            (format!("flow.{end}.label"), &e.label),
            (format!("{end}.k8s.namespace.name"), &e.k8s_namespace),
            (format!("{end}.k8s.pod.name"), &e.k8s_pod_name),
            (format!("{end}.k8s.owner.type"), &e.k8s_owner_kind),
            (format!("{end}.k8s.owner.name"), &e.k8s_owner_name),
            (format!("{end}.k8s.node.name"), &e.k8s_node_name),
            (format!("{end}.k8s.service.name"), &e.k8s_service_name),
            (format!("{end}.cloud.availability_zone"), &e.zone),
        ];
        for (name, v) in texts {
            match v {
                Some(v) => assert_eq!(str_of(a, &name), &**v, "{name}"),
                None => assert!(value(a, &name).is_none(), "{name} should be absent"),
            }
        }
        let pid = format!("{end}.process.pid");
        match e.process_pid {
            Some(p) => assert_eq!(int_of(a, &pid), p as i64),
            None => assert!(value(a, &pid).is_none()),
        }
    }
}

fn options(addr: SocketAddr) -> OtlpOptions {
    let mut o = OtlpOptions::new(format!("http://{addr}"), "testhost".into());
    o.batch_records = 300;
    o.request_timeout = Duration::from_secs(5);
    o.close_timeout = Duration::from_secs(20);
    o.retry = RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(30),
    };
    o
}

fn value<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn str_of(attrs: &[KeyValue], key: &str) -> String {
    match value(attrs, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{key}: expected a string, got {other:?}"),
    }
}

fn int_of(attrs: &[KeyValue], key: &str) -> i64 {
    match value(attrs, key) {
        Some(Value::IntValue(v)) => *v,
        other => panic!("{key}: expected an int, got {other:?}"),
    }
}

/// All log records received, by community id, checking the resource of each request.
fn received(server: &Server) -> HashMap<String, LogRecord> {
    let st = server.0.lock().unwrap();
    let mut out = HashMap::new();
    for req in &st.logs {
        for rl in &req.resource_logs {
            let res = rl.resource.as_ref().expect("resource");
            assert_eq!(str_of(&res.attributes, "service.name"), "flowlens");
            assert_eq!(str_of(&res.attributes, "host.name"), "testhost");
            for sl in &rl.scope_logs {
                assert_eq!(sl.scope.as_ref().unwrap().name, "flowlens");
                for lr in &sl.log_records {
                    let cid = str_of(&lr.attributes, "flow.community_id");
                    assert!(out.insert(cid.clone(), lr.clone()).is_none(), "{cid} twice");
                }
            }
        }
    }
    out
}

fn check_record(r: &FlowRecord, l: &LogRecord) {
    let a = &l.attributes;
    assert_eq!(l.time_unix_nano, r.flow_end_us as u64 * 1000);
    assert!(l.observed_time_unix_nano > 1_700_000_000_000_000_000);
    assert_eq!(l.event_name, encode::EVENT_NAME);
    assert_eq!(str_of(a, "source.address"), r.source_address().to_string());
    assert_eq!(
        str_of(a, "destination.address"),
        r.destination_address().to_string()
    );
    assert_eq!(int_of(a, "source.port"), r.key.src_port as i64);
    assert_eq!(int_of(a, "destination.port"), r.key.dst_port as i64);
    let transport = match r.key.protocol {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "icmp",
    };
    assert_eq!(str_of(a, "network.transport"), transport);
    assert_eq!(str_of(a, "network.type"), "ipv4");
    assert_eq!(str_of(a, "network.interface.name"), &*r.interface_name);
    assert_eq!(int_of(a, "flow.interface.index"), r.key.ifindex as i64);
    assert_eq!(int_of(a, "flow.packets"), r.packets as i64);
    assert_eq!(int_of(a, "flow.bytes"), r.bytes as i64);
    assert_eq!(int_of(a, "flow.tcp_flags"), r.tcp_flags as i64);
    assert_eq!(int_of(a, "flow.dscp"), r.dscp as i64);
    assert_eq!(int_of(a, "flow.icmp.type"), r.key.icmp_type as i64);
    assert_eq!(int_of(a, "flow.protocol"), r.key.protocol as i64);
    assert_eq!(
        int_of(a, "flow.start_time_unix_nano"),
        r.flow_start_us * 1000
    );
    assert_eq!(str_of(a, "flow.end_reason"), "idle_timeout");
    let dir = if r.key.observation_point == OBS_NF_LOCAL_OUT {
        "egress"
    } else {
        "ingress"
    };
    assert_eq!(str_of(a, "flow.direction"), dir);
    match r.vlan_id() {
        Some(v) => assert_eq!(int_of(a, "flow.vlan.id"), v as i64),
        None => assert!(value(a, "flow.vlan.id").is_none()),
    }
    check_ends(r, a);
}

#[test]
fn every_record_arrives_with_its_attributes() {
    let (addr, server) = start_server(Behaviour::default());
    let mut sink = OtlpSink::new(options(addr)).unwrap();
    let recs: Vec<FlowRecord> = (0..1000).map(record).collect();
    // Several writes, as the collector does once per drain.
    for chunk in recs.chunks(250) {
        sink.write(chunk).unwrap();
    }
    sink.close().unwrap();
    let got = received(&server);
    assert_eq!(got.len(), recs.len());
    for r in &recs {
        check_record(r, &got[&r.community_id]);
    }
    let st = server.0.lock().unwrap();
    // Requests are at most batch_records long, and gzip-compressed.
    assert!(st.logs.len() >= 4, "{} requests", st.logs.len());
    for req in &st.logs {
        let n: usize = req.resource_logs[0].scope_logs[0].log_records.len();
        assert!(n <= 300, "request of {n} records");
    }
    assert!(
        st.encodings.iter().all(|e| e == "gzip"),
        "{:?}",
        st.encodings
    );
    let m = sink.metrics();
    assert_eq!(
        (
            m.sent,
            m.acknowledged,
            m.retried,
            m.rejected,
            m.queued,
            m.lost
        ),
        (1000, 1000, 0, 0, 0, 0)
    );
}

#[test]
fn unavailable_is_retried_and_nothing_is_lost() {
    let (addr, server) = start_server(Behaviour {
        fail_first: 3,
        ..Default::default()
    });
    let mut opts = options(addr);
    opts.batch_records = 1000;
    let mut sink = OtlpSink::new(opts).unwrap();
    let recs: Vec<FlowRecord> = (0..500).map(record).collect();
    sink.write(&recs).unwrap();
    sink.close().unwrap();
    assert_eq!(received(&server).len(), 500);
    assert_eq!(server.0.lock().unwrap().attempts, 4);
    let m = sink.metrics();
    // One request of 500 records, re-sent three times.
    assert_eq!(
        (m.sent, m.acknowledged, m.retried, m.lost),
        (500, 500, 1500, 0)
    );
}

#[test]
fn retry_info_is_honoured_for_resource_exhausted() {
    let (addr, server) = start_server(Behaviour {
        fail_first: 1,
        fail_code: Some(Code::ResourceExhausted),
        retry_info: Some(Duration::from_millis(700)),
        ..Default::default()
    });
    let mut sink = OtlpSink::new(options(addr)).unwrap();
    let t = std::time::Instant::now();
    sink.write(&(0..10).map(record).collect::<Vec<_>>())
        .unwrap();
    sink.close().unwrap();
    // The backoff alone would be 10-20 ms; the server asked for 700 ms.
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(received(&server).len(), 10);
    assert_eq!(sink.metrics().retried, 10);
}

#[test]
fn resource_exhausted_without_retry_info_and_partial_success_are_not_retried() {
    let (addr, server) = start_server(Behaviour {
        fail_first: 1,
        fail_code: Some(Code::ResourceExhausted),
        ..Default::default()
    });
    let mut sink = OtlpSink::new(options(addr)).unwrap();
    sink.write(&(0..10).map(record).collect::<Vec<_>>())
        .unwrap();
    let err = sink.close().unwrap_err().to_string();
    assert!(err.contains("10 rejected"), "{err}");
    assert_eq!(server.0.lock().unwrap().attempts, 1);
    let m = sink.metrics();
    assert_eq!(
        (m.sent, m.acknowledged, m.retried, m.rejected, m.lost),
        (10, 0, 0, 10, 0)
    );

    let (addr, server) = start_server(Behaviour {
        partial_reject: 7,
        ..Default::default()
    });
    let mut sink = OtlpSink::new(options(addr)).unwrap();
    sink.write(&(0..600).map(record).collect::<Vec<_>>())
        .unwrap();
    let err = sink.close().unwrap_err().to_string();
    assert!(err.contains("7 rejected"), "{err}");
    let st = server.0.lock().unwrap();
    // Two requests of 300, each sent once: the partial success was not retried.
    assert_eq!((st.attempts, st.logs.len()), (2, 2));
    let m = sink.metrics();
    assert_eq!(
        (m.sent, m.acknowledged, m.retried, m.rejected, m.lost),
        (600, 593, 0, 7, 0)
    );
}

#[test]
fn metrics_sum_to_the_record_totals() {
    let (addr, server) = start_server(Behaviour::default());
    let mut opts = options(addr);
    opts.metrics = true;
    opts.metrics_interval = Duration::from_millis(100);
    let mut sink = OtlpSink::new(opts).unwrap();
    let recs: Vec<FlowRecord> = (0..900).map(record).collect();
    for chunk in recs.chunks(300) {
        sink.write(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    sink.close().unwrap();
    let st = server.0.lock().unwrap();
    assert!(st.metrics.len() >= 2, "periodic exports plus the final one");
    // Expected totals per (interface, direction, transport, observation point).
    let mut want: HashMap<(String, String, String, String), (i64, i64)> = HashMap::new();
    for r in &recs {
        let e = want
            .entry((
                r.interface_name.to_string(),
                if r.key.observation_point == OBS_NF_LOCAL_OUT {
                    "egress"
                } else {
                    "ingress"
                }
                .into(),
                match r.key.protocol {
                    IPPROTO_TCP => "tcp",
                    IPPROTO_UDP => "udp",
                    _ => "icmp",
                }
                .into(),
                if r.key.observation_point == OBS_NF_LOCAL_OUT {
                    "nf_local_out"
                } else {
                    "xdp"
                }
                .into(),
            ))
            .or_default();
        e.0 += r.bytes as i64;
        e.1 += r.packets as i64;
    }
    let last = st.metrics.last().unwrap();
    let rm = &last.resource_metrics[0];
    assert_eq!(
        str_of(&rm.resource.as_ref().unwrap().attributes, "service.name"),
        "flowlens"
    );
    let metrics = &rm.scope_metrics[0].metrics;
    let mut seen = 0;
    for m in metrics {
        let Some(Data::Sum(sum)) = &m.data else {
            panic!("{} is not a Sum", m.name)
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let pick: fn(&(i64, i64)) -> i64 = match m.name.as_str() {
            encode::METRIC_BYTES => {
                assert_eq!(m.unit, "By");
                |v| v.0
            }
            encode::METRIC_PACKETS => |v| v.1,
            // Checked by workload_metrics_are_bounded_and_add_up.
            n if n.starts_with("flowlens.workload.") => continue,
            other => panic!("unexpected metric {other}"),
        };
        seen += 1;
        assert_eq!(
            sum.data_points.len(),
            want.len(),
            "one point per attribute set"
        );
        let mut total = 0;
        for p in &sum.data_points {
            let a = &p.attributes;
            assert_eq!(a.len(), 4, "low-cardinality attributes only");
            let key = (
                str_of(a, "network.interface.name"),
                str_of(a, "flow.direction"),
                str_of(a, "network.transport"),
                str_of(a, "flow.observation_point"),
            );
            let Some(number_data_point::Value::AsInt(v)) = p.value else {
                panic!("int")
            };
            assert_eq!(v, pick(&want[&key]), "{key:?}");
            assert!(p.start_time_unix_nano <= p.time_unix_nano);
            total += v;
        }
        let want_total: i64 = recs
            .iter()
            .map(|r| pick(&(r.bytes as i64, r.packets as i64)))
            .sum();
        assert_eq!(total, want_total);
    }
    assert_eq!(seen, 2);
}

/// One end's workload attributes as the test expects them: (namespace, kind, owner, zone).
type EndKey = [Option<String>; 4];

fn end_key(e: &EndIdentity) -> EndKey {
    [
        &e.k8s_namespace,
        &e.k8s_owner_kind,
        &e.k8s_owner_name,
        &e.zone,
    ]
    .map(|v| v.as_deref().map(str::to_string))
}

fn attr_key(a: &[KeyValue], end: &str) -> EndKey {
    [
        format!("{end}.k8s.namespace.name"),
        format!("{end}.k8s.owner.type"),
        format!("{end}.k8s.owner.name"),
        format!("{end}.cloud.availability_zone"),
    ]
    .map(|n| match value(a, &n) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        None => None,
        other => panic!("{n}: {other:?}"),
    })
}

/// `--otlp-metrics` workload counters (issue 13) at the receiver: one point per (source
/// workload + zone, destination workload + zone) in first-seen order up to the cap, then one
/// overflow point; every value is the sum over the records of its key (computed here from the
/// records); the overflow counter counts the records past the cap; records without any
/// Kubernetes name are not in them.
#[test]
fn workload_metrics_are_bounded_and_add_up() {
    for cap in [4usize, 10_000] {
        let (addr, server) = start_server(Behaviour::default());
        let mut opts = options(addr);
        opts.metrics = true;
        opts.metrics_interval = Duration::from_millis(100);
        opts.workload_series_cap = cap;
        let mut sink = OtlpSink::new(opts).unwrap();
        let recs: Vec<FlowRecord> = (0..600).map(record).collect();
        for chunk in recs.chunks(200) {
            sink.write(chunk).unwrap();
        }
        sink.close().unwrap();
        // Expected: keys in first-seen order; the first `cap` keep their own series.
        let mut order: Vec<(EndKey, EndKey)> = Vec::new();
        let mut want: HashMap<(EndKey, EndKey), (i64, i64)> = HashMap::new();
        let (mut over, mut over_records) = ((0i64, 0i64), 0i64);
        for r in &recs {
            let k = (end_key(&r.ends.source), end_key(&r.ends.destination));
            if k.0.iter().chain(&k.1).all(Option::is_none) {
                continue;
            }
            if !order.contains(&k) {
                order.push(k.clone());
            }
            if order.iter().position(|x| *x == k).unwrap() < cap {
                let e = want.entry(k).or_default();
                e.0 += r.bytes as i64;
                e.1 += r.packets as i64;
            } else {
                over.0 += r.bytes as i64;
                over.1 += r.packets as i64;
                over_records += 1;
            }
        }
        assert_eq!(
            order.len(),
            7,
            "distinct workload keys of the sample records"
        );
        let st = server.0.lock().unwrap();
        let last = st.metrics.last().unwrap();
        let metrics = &last.resource_metrics[0].scope_metrics[0].metrics;
        let get = |name: &str| {
            let m = metrics
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} missing"));
            let Some(Data::Sum(sum)) = &m.data else {
                panic!("{name} is not a Sum")
            };
            assert!(sum.is_monotonic);
            assert_eq!(
                sum.aggregation_temporality,
                AggregationTemporality::Cumulative as i32
            );
            sum.data_points.clone()
        };
        for (name, pick) in [
            (encode::METRIC_WORKLOAD_BYTES, 0usize),
            (encode::METRIC_WORKLOAD_PACKETS, 1),
        ] {
            let pick = |v: (i64, i64)| if pick == 0 { v.0 } else { v.1 };
            let points = get(name);
            let overflowed = order.len() > cap;
            assert_eq!(
                points.len(),
                order.len().min(cap) + overflowed as usize,
                "{name} cap {cap}"
            );
            let mut seen = std::collections::HashSet::new();
            for p in &points {
                let Some(number_data_point::Value::AsInt(v)) = p.value else {
                    panic!("int")
                };
                if value(&p.attributes, "flowlens.overflow").is_some() {
                    assert_eq!(p.attributes.len(), 1);
                    assert_eq!(v, pick(over), "{name} overflow");
                    continue;
                }
                let k = (
                    attr_key(&p.attributes, "source"),
                    attr_key(&p.attributes, "destination"),
                );
                assert!(seen.insert(k.clone()), "{k:?} twice");
                assert_eq!(
                    Some(&v),
                    want.get(&k).map(|w| pick(*w)).as_ref(),
                    "{name} {k:?}"
                );
            }
            assert_eq!(seen.len(), want.len());
        }
        let o = get(encode::METRIC_WORKLOAD_OVERFLOW);
        assert_eq!(o.len(), 1);
        assert_eq!(
            o[0].value,
            Some(number_data_point::Value::AsInt(over_records))
        );
        assert_eq!(over_records > 0, cap == 4);
    }
}

#[test]
fn queue_bound_and_unreachable_receiver_are_counted_as_lost() {
    // A port nobody listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut opts = options(port);
    opts.queue_records = 100;
    opts.close_timeout = Duration::from_millis(500);
    let mut sink = OtlpSink::new(opts).unwrap();
    sink.write(&(0..150).map(record).collect::<Vec<_>>())
        .unwrap();
    let m = sink.metrics();
    assert_eq!(m.lost, 50, "past the bound: {m:?}");
    assert!(m.queued <= 100 && m.queued > 0, "{m:?}");
    let err = sink.close().unwrap_err().to_string();
    assert!(err.contains("150 lost"), "{err}");
    let m = sink.metrics();
    assert_eq!((m.acknowledged, m.queued, m.lost), (0, 0, 150));
    assert!(m.retried > 0, "{m:?}");
}
