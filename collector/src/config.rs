//! Command line and config file: one struct ([`RunArgs`]) defines both. Every long option is also
//! a key of the `--config` TOML file (same name); a value given on the command line wins.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use flowlens_sinks::{
    SinkSpec,
    kafka::{DEFAULT_CLOSE_TIMEOUT, DEFAULT_QUEUE_MAX_RECORDS, KafkaFormat},
    otlp::{Headers, OtlpProtocol, TlsFiles},
};
use serde::{Deserialize, Deserializer};

use crate::{netfilter::Hook, probe::XdpAttachMode};

pub const DEFAULT_DRAIN_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_MAX_FLOWS: u32 = 131_072;
pub const DEFAULT_EARLY_DRAIN_FILL: u8 = 50;
pub const DEFAULT_SINK: &str = "parquet:./flows";
pub const DEFAULT_PARQUET_ROTATE_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_PARQUET_ROTATE_BYTES: u64 = 128 * 1024 * 1024;
pub const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_secs(10);
/// Parent of the per-sink spool directories (kafka and otlp sinks).
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/flowlens/spool";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = flowlens_sinks::spool::DEFAULT_MAX_BYTES;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = flowlens_sinks::spool::DEFAULT_GRACE;
/// Default netfilter hook priority: below every built-in hook of the kernel, the lowest of which
/// is conntrack's defragmentation at -400 (`NF_IP_PRI_CONNTRACK_DEFRAG`; then raw -300,
/// conntrack -200, mangle -150, DNAT -100, filter 0, SNAT 100). flowlens thus counts each packet
/// as it reached the hook: fragments as on the wire, addresses before NAT rewrites them, and
/// packets a firewall drops later. See docs/ARCHITECTURE.md for when to pick another value.
pub const DEFAULT_NETFILTER_PRIORITY: i32 = -450;
pub const DEFAULT_SINK_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts a TOML string list either as an array (`["a", "b"]`) or as one comma list (`"a,b"`).
fn de_comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(|p| p.trim().to_string()).collect(),
        OneOrMany::Many(v) => v,
    })
}

fn parse_priority(s: &str) -> Result<i32, String> {
    let p: i32 = s
        .trim()
        .parse()
        .map_err(|e| format!("{e} (a signed 32-bit integer, e.g. -450 or 200)"))?;
    check_priority(p)
}

fn check_priority(p: i32) -> Result<i32, String> {
    if crate::netfilter::RESERVED_PRIORITIES.contains(&p) {
        return Err(format!(
            "{p} is reserved by the kernel (NF_IP_PRI_FIRST/LAST); use a value strictly between"
        ));
    }
    Ok(p)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 15s, 1m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn de_from_str<'de, D: Deserializer<'de>, T>(d: D) -> Result<Option<T>, D::Error>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// `--otlp-header KEY=VALUE`: the error never shows the value (a secret).
fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err("expected KEY=VALUE (value not shown)".to_string()),
    }
}

/// Warns when the config file can be read by users other than its owner (it may hold secrets).
fn warn_if_world_readable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", m.permissions().mode() & 0o777),
            "config file is readable by every user; if it holds secrets (otlp-header, kafka-option passwords), chmod 600 it"
        );
    }
}

/// An `OTEL_EXPORTER_OTLP_*` variable, if set and not empty.
fn otel_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn de_key_values<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_key_value(s).map_err(serde::de::Error::custom))
        .collect()
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Options of `flowlens run`.
#[derive(clap::Args, Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunArgs {
    /// TOML file whose keys are the long option names below (e.g. `xdp = ["eth0"]`,
    /// `idle-timeout = "15s"`); command-line values win. Put secrets (`otlp-header`,
    /// `kafka-option` passwords) here rather than on the command line, readable by root only:
    /// a file that others can read is warned about at start.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Attach the XDP probe to IFACE (repeatable). Default, when --netfilter is not given: every interface that is up, except loopback, bridge/bond ports, bridges and VLAN devices (which would see the same packets twice). With --netfilter, XDP runs only on the interfaces named here.
    #[arg(long = "xdp", value_name = "IFACE")]
    #[serde(default)]
    pub xdp: Vec<String>,

    /// XDP attach mode: `auto` (native; generic where the driver refuses native XDP, e.g. no driver support or an MTU too large for it, with one warning per interface naming the reason), `native` (fails if the driver refuses) or `skb` (generic). [default: auto]
    #[arg(long, value_enum, value_name = "MODE")]
    pub xdp_mode: Option<XdpAttachMode>,

    /// Attach the netfilter probe (Linux >= 6.4) to these hooks, IPv4 and IPv6: a comma list of pre_routing, local_in, forward, local_out, post_routing. It sees every interface of the network namespace, locally generated and forwarded traffic included. In the config file: `netfilter = ["forward"]` or `netfilter = "forward,local_out"`.
    #[arg(long, value_name = "HOOKS", value_delimiter = ',')]
    #[serde(default, deserialize_with = "de_comma_list")]
    pub netfilter: Vec<String>,

    /// Priority of the netfilter hooks (lower runs earlier). The default runs before conntrack defragmentation (-400), NAT (-100/100) and filtering (0): packets are counted as they reached the hook. Use e.g. 200 to see post-SNAT addresses at post_routing. [default: -450]
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_priority)]
    pub netfilter_priority: Option<i32>,

    /// Where records go (repeatable; every sink gets every record): `parquet:DIR`, `parquet:s3://BUCKET/PREFIX`, `kafka:BROKERS/TOPIC` (BROKERS = host:port[,host:port...]), `otlp:http://HOST:PORT` or `otlp:https://HOST:PORT` (OTLP/gRPC, or OTLP/HTTP with --otlp-protocol http/protobuf; bare `otlp` uses OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317, or :4318 for OTLP/HTTP) `ipfix:HOST:PORT` (IPFIX over UDP, e.g. to nfcapd or nfacctd; port 4739 is IPFIX's), `ipfix+tcp:HOST:PORT` (IPFIX over TCP, reconnecting, spooled) or `stdout`. [default: parquet:./flows]
    #[arg(long = "sink", value_name = "KIND:TARGET")]
    #[serde(default)]
    pub sink: Vec<String>,

    /// How often the kernel flow map is drained. [default: 1s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub drain_interval: Option<Duration>,

    /// A record is emitted for a flow that has been open this long, even if it is still active. [default: 60s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub active_timeout: Option<Duration>,

    /// A flow with no packet for this long is ended. [default: 15s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,

    /// Flows the kernel holds between two drains (each of the two LRU flow buffers has this many entries, plus a flow cache of a quarter of it, at most 16384 slots). [default: 131072]
    #[arg(long, value_name = "N")]
    pub max_flows: Option<u32>,

    /// Read the precise clock (bpf_ktime_get_ns) for every packet, XDP and netfilter. By default XDP reads the kernel's coarse clock (bpf_ktime_get_coarse_ns: the same monotonic clock at scheduler-tick resolution, e.g. 4 ms) for every packet, first and last alike, which saves about 15 ns per packet; flow start and end times are then up to one tick early. Netfilter hooks (which may not call the coarse helper) read the precise clock once per tick per CPU by default (also up to one tick early), and for every packet with this flag. `--precise-timestamps=false` turns it off again when the config file sets it. [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub precise_timestamps: Option<bool>,

    /// Drain before the interval is up once the kernel buffer is this full (percent of --max-flows; 0 disables), so that bursts of new flows are not evicted. [default: 50]
    #[arg(long, value_name = "PERCENT")]
    pub early_drain_fill: Option<u8>,

    /// Stop after this long (detaches, drains a last time and closes the sinks). [default: run until SIGINT/SIGTERM]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub duration: Option<Duration>,

    /// Close a Parquet file and start a new one after this long. [default: 5m]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub parquet_rotate_interval: Option<Duration>,

    /// Close a Parquet file once it holds about this many bytes. [default: 134217728]
    #[arg(long, value_name = "BYTES")]
    pub parquet_rotate_bytes: Option<u64>,

    /// parquet:s3://: local directory where files are written before upload (and kept if an upload fails for good, or is unfinished when --shutdown-grace is up; uploaded at the next start). Keep it on a durable file system, not a tmpfs. [default: /var/lib/flowlens/s3-staging/BUCKET/PREFIX]
    #[arg(long, value_name = "DIR")]
    pub parquet_spool_dir: Option<PathBuf>,

    /// parquet:s3://: an object_store S3 setting (repeatable), e.g. `endpoint=http://127.0.0.1:9000`, `region=eu-west-1`, `allow_http=true`; wins over the AWS_* environment variables.
    #[arg(long = "s3-option", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    #[serde(default, deserialize_with = "de_key_values")]
    pub s3_option: Vec<(String, String)>,

    /// OTLP: flow log records per export request. [default: 2048]
    #[arg(long, value_name = "N")]
    pub otlp_batch_records: Option<usize>,

    /// OTLP: records waiting in memory at most while the receiver is slow or down; records past the bound go to the spool (with --no-spool: counted as lost). Comes off the --max-memory budget. [default: 65536]
    #[arg(long, value_name = "N")]
    pub otlp_queue_records: Option<usize>,

    /// OTLP: timeout of one export attempt (failed attempts are retried with backoff). [default: 10s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub otlp_timeout: Option<Duration>,

    /// OTLP: also export cumulative byte and packet counters per interface, direction, transport and observation point, and (for records with Kubernetes names) per source and destination workload and zone, at most 10,000 workload series, then one overflow series (every 10s and at shutdown). `--otlp-metrics=false` turns it off again when the config file sets it. [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub otlp_metrics: Option<bool>,

    // --- OTLP transports, TLS and authentication (issue 14) ---
    /// OTLP transport: `grpc` (default port 4317) or `http/protobuf` (POST to ENDPOINT/v1/logs and /v1/metrics, gzip; default port 4318). Default: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc.
    #[arg(long, value_name = "PROTOCOL", value_parser = |s: &str| s.parse::<OtlpProtocol>())]
    #[serde(default, deserialize_with = "de_from_str")]
    pub otlp_protocol: Option<OtlpProtocol>,

    /// OTLP over https://: PEM file of the CA certificates to trust instead of the system roots. Default: OTEL_EXPORTER_OTLP_CERTIFICATE. A certificate the CA did not sign, or one for another name, stops flowlens at start.
    #[arg(long, value_name = "FILE")]
    pub otlp_ca: Option<PathBuf>,

    /// OTLP over https://: PEM client certificate for mutual TLS (with --otlp-client-key). Default: OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE.
    #[arg(long, value_name = "FILE")]
    pub otlp_client_cert: Option<PathBuf>,

    /// OTLP over https://: PEM private key of --otlp-client-cert. Default: OTEL_EXPORTER_OTLP_CLIENT_KEY.
    #[arg(long, value_name = "FILE")]
    pub otlp_client_key: Option<PathBuf>,

    /// OTLP: header KEY=VALUE sent with every export request (repeatable), e.g. `authorization=Bearer TOKEN`. Values are never logged; prefer the config file (or OTEL_EXPORTER_OTLP_HEADERS, `k1=v1,k2=v2`, the default) over the command line, which other local users can read.
    // Parsed in `resolve`, not by clap: clap's own error would quote the whole value.
    #[arg(long = "otlp-header", value_name = "KEY=VALUE")]
    #[serde(default)]
    pub otlp_header: Vec<String>,

    /// Kafka message format: `protobuf` (flowlens.v1.FlowRecord, schema/proto/flow.proto) or `json` (keys = column names). [default: protobuf]
    #[arg(long, value_name = "FORMAT", value_parser = |s: &str| s.parse::<KafkaFormat>())]
    #[serde(default, deserialize_with = "de_from_str")]
    pub kafka_format: Option<KafkaFormat>,

    /// librdkafka producer property KEY=VALUE (repeatable), e.g. `security.protocol=SASL_SSL`, `sasl.mechanism=SCRAM-SHA-512`, `sasl.username=U`, `sasl.password=P`, `ssl.ca.location=FILE` (default: the system CA store), `ssl.certificate.location`/`ssl.key.location` (mTLS); overrides flowlens' defaults (zstd, linger.ms=100, acks=all). Checked at start: a TLS or SASL failure stops flowlens before it attaches. Put passwords in the config file.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    #[serde(default)]
    pub kafka_option: Vec<String>,

    /// Records waiting for the Kafka brokers (unacknowledged) in memory at most; past it, new records go to the spool (with --no-spool: dropped and counted as lost). [default: 100000]
    #[arg(long, value_name = "N")]
    pub kafka_queue_max_records: Option<u32>,

    /// At shutdown, how long to wait for Kafka acknowledgements before counting the rest as lost (only with --no-spool; with the spool, --shutdown-grace applies). [default: 30s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub kafka_close_timeout: Option<Duration>,

    // --- IPFIX (issue 15) ---
    /// IPFIX over UDP: how often templates, options templates, the sampling record and interface names are sent again (a collector that starts late decodes records from the next refresh on). Over TCP they are sent once per connection. [default: 60s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub ipfix_template_refresh: Option<Duration>,

    /// IPFIX observation domain id in every message header. [default: derived from the host name, so two hosts do not collide at one collector]
    #[arg(long, value_name = "N")]
    pub ipfix_domain_id: Option<u32>,

    /// IPFIX over UDP: largest IP packet of one message (IP and UDP headers included), 1280-65535; records are never split across messages. [default: 1400]
    #[arg(long, value_name = "BYTES")]
    pub ipfix_mtu: Option<u16>,

    /// IPFIX: also export flowlens-specific elements (community id, observation point, interface name, host) as enterprise-specific elements under --ipfix-enterprise-number; `off` sends IANA elements only. [default: on]
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    #[serde(default, deserialize_with = "de_on_off")]
    pub ipfix_enterprise_fields: Option<bool>,

    /// IPFIX: Private Enterprise Number of the flowlens-specific elements. flowlens has no registered PEN; the default 32473 is IANA's PEN for documentation (RFC 5612): set your organisation's PEN in production. [default: 32473]
    #[arg(long, value_name = "PEN")]
    pub ipfix_enterprise_number: Option<u32>,

    // --- identity (issue 12) ---
    /// Label both ends of every record by address (`source_label`, `destination_label`): a CSV file of `CIDR,LABEL` lines, or TOML (`.toml`: `"CIDR" = "LABEL"` pairs); the longest matching prefix wins. At most 4 MiB; a bad line stops the start with an error naming it. [default: no labels]
    #[arg(long, value_name = "FILE")]
    pub label_cidrs: Option<PathBuf>,

    // --- Kubernetes names (issue 13) ---
    /// Name both ends of every record with Kubernetes names (`*_k8s_namespace`, `*_k8s_pod_name`, `*_k8s_owner_kind`/`_name` (Deployment via its ReplicaSet, CronJob via its Job, else the controller, else Pod), `*_k8s_node_name`, `*_k8s_service_name`, `*_zone`): watches Pods, ReplicaSets, Jobs, Services and Nodes cluster-wide (read-only: get/list/watch). Local ends by their pod UID, other ends by the address the pod, Service ClusterIP or node held at the record's last packet. Credentials: `--kubeconfig`, else KUBECONFIG or ~/.kube/config, else the in-cluster service account. An API server that is down or slow never holds up the export: names stay null until known (docs/KUBERNETES.md). [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub kubernetes: Option<bool>,

    /// Kubernetes credentials and API server for --kubernetes (a kubeconfig file; its current context). Implies --kubernetes. [default: KUBECONFIG, ~/.kube/config, else in-cluster]
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    // --- metrics endpoint (issue 7) ---
    /// Serve Prometheus metrics (`/metrics`), liveness (`/healthz`) and readiness (`/readyz`) over HTTP on this address: `PORT` or `:PORT` (binds 127.0.0.1), `IP:PORT`, `[IPV6]:PORT`; port 0 picks a free one (logged). An address beyond loopback is allowed but warned about. [default: off; the usual port is 9464]
    #[arg(long, value_name = "ADDR:PORT", value_parser = crate::metrics::parse_listen)]
    #[serde(default, deserialize_with = "de_listen")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Readiness: a sink holding records that it has not had acknowledged for this long (or that lost or rejected records this recently) makes /readyz fail. Parquet sinks get --parquet-rotate-interval on top (they acknowledge when a file is completed). [default: 60s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub sink_stall_timeout: Option<Duration>,

    /// Parent directory of the on-disk spools: kafka and otlp sinks keep records they cannot deliver (destination down or slow past the memory queue, or still unacknowledged at shutdown) in DIR/<sink> and replay them in order, also after a restart; a local Parquet sink keeps its write-ahead journal there (a full output disk or a SIGKILL loses nothing). Must be writable (checked at start). [default: /var/lib/flowlens/spool]
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Bound of each sink's spool on disk; past it, records are dropped and counted as lost. [default: 1073741824]
    #[arg(long, value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,

    /// No on-disk spool: records past a sink's memory queue, or unacknowledged at shutdown, are counted as lost. `--no-spool=false` keeps the spool when the config file sets `no-spool = true`. [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub no_spool: Option<bool>,

    /// On SIGTERM/SIGINT (or --duration), how long the sinks get in total to deliver what they hold (S3 uploads included); what is still undelivered then stays in the spool (S3: the staging directory) for the next start. A service manager's stop timeout must be longer (the systemd unit's TimeoutStopSec is 45s). [default: 30s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub shutdown_grace: Option<Duration>,

    // --- memory (issue 17) ---
    /// Bound of flowlens' user-space memory (BYTES, or with a unit: 256MiB, 1GiB). It bounds the flow table and the queues between the stages (one drain's deltas, the records handed to the sinks, the Kafka and OTLP memory queues, whose bounds are subtracted first). Past the resulting flow cap (logged at start), the flows seen least recently end early with flowEndReason `lack_of_resources`: their packets and bytes are exported as usual, counted in `flowlens_flows_ended_lack_of_resources_total` and one rate-limited log line. Kernel flow buffers (--max-flows) are not included. The default keeps flowlens with its kernel maps (about 40 MiB at the default --max-flows) far below a 512 MiB systemd or DaemonSet limit (docs/ARCHITECTURE.md, "Memory"). [default: 256MiB]
    #[arg(long, value_name = "BYTES", value_parser = crate::memory::parse_bytes)]
    #[serde(default, deserialize_with = "de_bytes")]
    pub max_memory: Option<u64>,
}

/// `max-memory = "256MiB"` or `268435456`.
fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u64),
        Str(String),
    }
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(Some(n)),
        NumOrStr::Str(s) => crate::memory::parse_bytes(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

/// `ipfix-enterprise-fields = "off"` or `false`.
fn de_on_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Str(String),
    }
    match B::deserialize(d)? {
        B::Bool(b) => Ok(Some(b)),
        B::Str(s) => parse_on_off(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// `metrics-listen = "127.0.0.1:9464"`, `"9464"` or `9464`.
fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum PortOrAddr {
        Port(u16),
        Addr(String),
    }
    let s = match PortOrAddr::deserialize(d)? {
        PortOrAddr::Port(p) => p.to_string(),
        PortOrAddr::Addr(a) => a,
    };
    crate::metrics::parse_listen(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `flowlens run` settings after merging the config file, the command line and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// Empty: every interface that is up except loopback (resolved at start).
    pub xdp: Vec<String>,
    pub xdp_mode: XdpAttachMode,
    /// Netfilter hooks to attach to (IPv4 and IPv6 each); empty: none.
    pub netfilter: Vec<Hook>,
    pub netfilter_priority: i32,
    pub sinks: Vec<SinkSpec>,
    pub drain_interval: Duration,
    pub active_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_flows: u32,
    /// 0 = off.
    pub early_drain_fill: u8,
    pub precise_timestamps: bool,
    pub duration: Option<Duration>,
    pub parquet_rotate_interval: Duration,
    pub parquet_rotate_bytes: u64,
    pub parquet_spool_dir: Option<PathBuf>,
    pub s3_options: Vec<(String, String)>,
    pub otlp_batch_records: usize,
    pub otlp_queue_records: usize,
    pub otlp_timeout: Duration,
    pub otlp_metrics: bool,
    pub otlp_protocol: OtlpProtocol,
    pub otlp_tls: TlsFiles,
    /// Header values are secrets (`Debug` shows keys only).
    pub otlp_headers: Headers,
    pub kafka_format: KafkaFormat,
    /// Validated `--kafka-option` pairs, in order.
    pub kafka_options: Vec<(String, String)>,
    pub kafka_queue_max_records: u32,
    pub kafka_close_timeout: Duration,
    pub ipfix: flowlens_sinks::ipfix::IpfixSettings,

    /// `--label-cidrs` file (read when the run starts).
    pub label_cidrs: Option<PathBuf>,
    /// `--kubernetes` (or `--kubeconfig`): fill the Kubernetes names.
    pub kubernetes: bool,
    pub kubeconfig: Option<PathBuf>,
    /// `None`: no metrics endpoint.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub sink_stall_timeout: Duration,
    /// `None`: no spool (`--no-spool`).
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: u64,
    pub shutdown_grace: Duration,
    /// `--max-memory`, bytes.
    pub max_memory: u64,
}

impl RunConfig {
    /// What the sinks crate needs to build the sinks (`flowlens_sinks::build`).
    pub fn sink_options(&self, host: std::sync::Arc<str>) -> flowlens_sinks::build::BuildOptions {
        flowlens_sinks::build::BuildOptions {
            host,
            spool_dir: self.spool_dir.clone(),
            spool_max_bytes: self.spool_max_bytes,
            shutdown_grace: self.shutdown_grace,
            parquet_rotate_bytes: self.parquet_rotate_bytes,
            parquet_rotate_interval: self.parquet_rotate_interval,
            s3_staging_dir: self.parquet_spool_dir.clone(),
            s3_options: self.s3_options.clone(),
            otlp_batch_records: self.otlp_batch_records,
            otlp_queue_records: self.otlp_queue_records,
            otlp_timeout: self.otlp_timeout,
            otlp_metrics: self.otlp_metrics,
            otlp_protocol: self.otlp_protocol,
            otlp_tls: self.otlp_tls.clone(),
            otlp_headers: self.otlp_headers.clone(),
            kafka_format: self.kafka_format,
            kafka_options: self.kafka_options.clone(),
            kafka_queue_max_records: self.kafka_queue_max_records,
            kafka_close_timeout: self.kafka_close_timeout,
            ipfix: self.ipfix.clone(),
            sink_queue_records: flowlens_sinks::worker::DEFAULT_QUEUE_RECORDS,
        }
    }
}

/// A TOML error as one line: `config file PATH line L column C: MESSAGE`.
fn toml_error(path: &std::path::Path, text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let col = before.len() - line_start + 1;
            // The key of a `key = value` line whose value is wrong, so the line names it.
            let key = text[line_start..]
                .lines()
                .next()
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && span.start > line_start + k.len())
                .map(|k| format!(" ({k})"))
                .unwrap_or_default();
            format!(
                "config file {} line {line} column {col}{key}: {msg}",
                path.display()
            )
        }
        None => format!("config file {}: {msg}", path.display()),
    }
}

impl RunArgs {
    /// Reads `--config` (if given) and merges it under the command-line values.
    pub fn resolve(self) -> Result<RunConfig> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                let parsed = toml::from_str::<RunArgs>(&text)
                    .map_err(|e| anyhow::anyhow!("{}", toml_error(path, &text, &e)))?;
                // After parsing: a file that is refused is one error line, nothing else.
                warn_if_world_readable(path);
                parsed
            }
            None => RunArgs::default(),
        };
        let pick_vec =
            |cli: Vec<String>, file: Vec<String>| if cli.is_empty() { file } else { cli };
        let xdp = pick_vec(self.xdp, file.xdp);
        let netfilter = pick_vec(self.netfilter, file.netfilter)
            .iter()
            .map(|h| {
                h.trim()
                    .parse::<Hook>()
                    .map_err(|e| anyhow::anyhow!("--netfilter: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let netfilter_priority = match self.netfilter_priority.or(file.netfilter_priority) {
            Some(p) => {
                check_priority(p).map_err(|e| anyhow::anyhow!("--netfilter-priority: {e}"))?
            }
            None => DEFAULT_NETFILTER_PRIORITY,
        };
        let sink_strs = pick_vec(self.sink, file.sink);
        let sink_strs = if sink_strs.is_empty() {
            vec![DEFAULT_SINK.to_string()]
        } else {
            sink_strs
        };
        let otlp_protocol = match self.otlp_protocol.or(file.otlp_protocol) {
            Some(p) => p,
            None => match otel_env("OTEL_EXPORTER_OTLP_PROTOCOL") {
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_PROTOCOL: {e}"))?,
                None => OtlpProtocol::default(),
            },
        };
        let sinks = sink_strs
            .iter()
            .map(|s| {
                // Bare `otlp` over OTLP/HTTP: the OpenTelemetry default port is 4318.
                if s == "otlp"
                    && otlp_protocol == OtlpProtocol::HttpProtobuf
                    && otel_env("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
                {
                    return Ok(SinkSpec::Otlp(
                        flowlens_sinks::otlp::DEFAULT_HTTP_ENDPOINT.to_string(),
                    ));
                }
                s.parse::<SinkSpec>().map_err(anyhow::Error::from)
            })
            .collect::<Result<Vec<_>>>()?;
        let path_or_env = |cli: Option<PathBuf>, file: Option<PathBuf>, env: &str| {
            cli.or(file).or_else(|| otel_env(env).map(PathBuf::from))
        };
        let otlp_tls = TlsFiles {
            ca: path_or_env(self.otlp_ca, file.otlp_ca, "OTEL_EXPORTER_OTLP_CERTIFICATE"),
            client_cert: path_or_env(
                self.otlp_client_cert,
                file.otlp_client_cert,
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            ),
            client_key: path_or_env(
                self.otlp_client_key,
                file.otlp_client_key,
                "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            ),
        };
        let headers_of = |v: &[String]| {
            v.iter()
                .map(|h| parse_header(h).map_err(|e| anyhow::anyhow!("--otlp-header: {e}")))
                .collect::<Result<Vec<_>>>()
        };
        let otlp_headers = if !self.otlp_header.is_empty() {
            headers_of(&self.otlp_header)?
        } else if !file.otlp_header.is_empty() {
            headers_of(&file.otlp_header)?
        } else {
            match otel_env("OTEL_EXPORTER_OTLP_HEADERS") {
                Some(v) => {
                    flowlens_sinks::otlp::tls::parse_env_headers(&v).map_err(anyhow::Error::msg)?
                }
                None => Vec::new(),
            }
        };
        let otlp_headers = Headers(otlp_headers);
        otlp_headers
            .validate()
            .map_err(|e| anyhow::anyhow!("--otlp-header: {e}"))?;
        let kafka_options = pick_vec(self.kafka_option, file.kafka_option)
            .iter()
            .map(|o| flowlens_sinks::kafka::parse_option(o).map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?;
        let cfg = RunConfig {
            xdp,
            xdp_mode: self.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
            netfilter,
            netfilter_priority,
            sinks,
            drain_interval: self
                .drain_interval
                .or(file.drain_interval)
                .unwrap_or(DEFAULT_DRAIN_INTERVAL),
            active_timeout: self
                .active_timeout
                .or(file.active_timeout)
                .unwrap_or(DEFAULT_ACTIVE_TIMEOUT),
            idle_timeout: self
                .idle_timeout
                .or(file.idle_timeout)
                .unwrap_or(DEFAULT_IDLE_TIMEOUT),
            max_flows: self
                .max_flows
                .or(file.max_flows)
                .unwrap_or(DEFAULT_MAX_FLOWS),
            precise_timestamps: self
                .precise_timestamps
                .or(file.precise_timestamps)
                .unwrap_or(false),
            early_drain_fill: self
                .early_drain_fill
                .or(file.early_drain_fill)
                .unwrap_or(DEFAULT_EARLY_DRAIN_FILL),
            duration: self.duration.or(file.duration),
            parquet_rotate_interval: self
                .parquet_rotate_interval
                .or(file.parquet_rotate_interval)
                .unwrap_or(DEFAULT_PARQUET_ROTATE_INTERVAL),
            parquet_rotate_bytes: self
                .parquet_rotate_bytes
                .or(file.parquet_rotate_bytes)
                .unwrap_or(DEFAULT_PARQUET_ROTATE_BYTES),
            parquet_spool_dir: self.parquet_spool_dir.or(file.parquet_spool_dir),
            s3_options: if self.s3_option.is_empty() {
                file.s3_option
            } else {
                self.s3_option
            },
            otlp_batch_records: self
                .otlp_batch_records
                .or(file.otlp_batch_records)
                .unwrap_or(flowlens_sinks::otlp::DEFAULT_BATCH_RECORDS),
            otlp_queue_records: self
                .otlp_queue_records
                .or(file.otlp_queue_records)
                .unwrap_or(flowlens_sinks::otlp::DEFAULT_QUEUE_RECORDS),
            otlp_timeout: self
                .otlp_timeout
                .or(file.otlp_timeout)
                .unwrap_or(DEFAULT_OTLP_TIMEOUT),
            otlp_metrics: self.otlp_metrics.or(file.otlp_metrics).unwrap_or(false),
            otlp_protocol,
            otlp_tls,
            otlp_headers,
            kafka_format: self.kafka_format.or(file.kafka_format).unwrap_or_default(),
            kafka_options,
            kafka_queue_max_records: self
                .kafka_queue_max_records
                .or(file.kafka_queue_max_records)
                .unwrap_or(DEFAULT_QUEUE_MAX_RECORDS),
            kafka_close_timeout: self
                .kafka_close_timeout
                .or(file.kafka_close_timeout)
                .unwrap_or(DEFAULT_CLOSE_TIMEOUT),
            ipfix: flowlens_sinks::ipfix::IpfixSettings {
                template_refresh: self
                    .ipfix_template_refresh
                    .or(file.ipfix_template_refresh)
                    .unwrap_or(flowlens_sinks::ipfix::DEFAULT_TEMPLATE_REFRESH),
                domain_id: self.ipfix_domain_id.or(file.ipfix_domain_id),
                mtu: self
                    .ipfix_mtu
                    .or(file.ipfix_mtu)
                    .unwrap_or(flowlens_sinks::ipfix::DEFAULT_MTU),
                enterprise: self
                    .ipfix_enterprise_fields
                    .or(file.ipfix_enterprise_fields)
                    .unwrap_or(true)
                    .then(|| {
                        self.ipfix_enterprise_number
                            .or(file.ipfix_enterprise_number)
                            .unwrap_or(flowlens_sinks::ipfix::DEFAULT_ENTERPRISE_NUMBER)
                    }),
            },

            label_cidrs: self.label_cidrs.clone().or(file.label_cidrs.clone()),
            kubernetes: self.kubernetes.or(file.kubernetes).unwrap_or(false)
                || self.kubeconfig.is_some()
                || file.kubeconfig.is_some(),
            kubeconfig: self.kubeconfig.clone().or(file.kubeconfig.clone()),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            sink_stall_timeout: self
                .sink_stall_timeout
                .or(file.sink_stall_timeout)
                .unwrap_or(DEFAULT_SINK_STALL_TIMEOUT),
            spool_dir: if self.no_spool.or(file.no_spool).unwrap_or(false) {
                None
            } else {
                Some(
                    self.spool_dir
                        .or(file.spool_dir)
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR)),
                )
            },
            spool_max_bytes: self
                .spool_max_bytes
                .or(file.spool_max_bytes)
                .unwrap_or(DEFAULT_SPOOL_MAX_BYTES),
            shutdown_grace: self
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            max_memory: self
                .max_memory
                .or(file.max_memory)
                .unwrap_or(crate::memory::DEFAULT_MAX_MEMORY),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl RunConfig {
    /// The options of a `parquet:s3://` sink: files staged in `--parquet-spool-dir` (default
    /// [`flowlens_sinks::s3::default_staging_dir`]), uploads given `--shutdown-grace` at close.
    pub fn s3_options(
        &self,
        target: &flowlens_sinks::s3::S3Target,
        host: std::sync::Arc<str>,
    ) -> flowlens_sinks::s3::S3Options {
        self.sink_options(host).s3_options(target)
    }

    fn validate(&self) -> Result<()> {
        if self.max_flows == 0 {
            bail!("--max-flows must be at least 1");
        }
        if self.early_drain_fill > 100 {
            bail!(
                "--early-drain-fill {} is not a percentage (0-100; 0 disables early drains)",
                self.early_drain_fill
            );
        }
        if self.drain_interval > self.idle_timeout {
            bail!(
                "--drain-interval ({}) must not exceed --idle-timeout ({}): flows would end late",
                humantime::format_duration(self.drain_interval),
                humantime::format_duration(self.idle_timeout)
            );
        }
        if self.parquet_rotate_bytes == 0 {
            bail!("--parquet-rotate-bytes must be greater than zero");
        }
        if self.kafka_queue_max_records == 0 {
            bail!("--kafka-queue-max-records must be at least 1");
        }
        if self.spool_max_bytes < 1 << 20 {
            bail!(
                "--spool-max-bytes {} is too small (at least 1048576)",
                self.spool_max_bytes
            );
        }
        if self.ipfix.mtu < flowlens_sinks::ipfix::MIN_MTU {
            bail!(
                "--ipfix-mtu {} is too small (at least {}: every record must fit one message)",
                self.ipfix.mtu,
                flowlens_sinks::ipfix::MIN_MTU
            );
        }
        if self.ipfix.template_refresh.is_zero() {
            bail!("--ipfix-template-refresh must be greater than zero");
        }
        if self.otlp_batch_records == 0 || self.otlp_queue_records == 0 {
            bail!("--otlp-batch-records and --otlp-queue-records must be at least 1");
        }
        let s3_sinks = self
            .sinks
            .iter()
            .filter(|s| matches!(s, SinkSpec::ParquetS3(_)))
            .count();
        if s3_sinks > 1 && self.parquet_spool_dir.is_some() {
            bail!(
                "--parquet-spool-dir is shared by every parquet:s3:// sink; with several, leave it unset (each gets its own)"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for i in &self.xdp {
            if !seen.insert(i) {
                bail!("--xdp {i} given twice");
            }
        }
        let mut hooks = std::collections::HashSet::new();
        for h in &self.netfilter {
            if !hooks.insert(h) {
                bail!("--netfilter: hook {h} given twice");
            }
        }
        // Two sinks on one directory would write files with the same names.
        let mut dirs = std::collections::HashSet::new();
        for s in &self.sinks {
            let key = match s {
                SinkSpec::Parquet(d) => std::path::absolute(d)
                    .unwrap_or_else(|_| d.clone())
                    .components()
                    .collect::<PathBuf>(),
                SinkSpec::Stdout => PathBuf::from("-"),
                SinkSpec::Kafka { .. } => PathBuf::from(s.to_string()),
                SinkSpec::Otlp(e) => PathBuf::from(format!("otlp:{e}")),
                SinkSpec::Ipfix { .. } => PathBuf::from(s.to_string()),
                SinkSpec::ParquetS3(t) => PathBuf::from(format!("s3:{t}")),
            };
            if !dirs.insert(key) {
                bail!("--sink {s} given twice (same destination)");
            }
        }
        self.memory_budget().map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// How `--max-memory` is split, and the flow cap (`memory::plan`): the sinks' memory
    /// queues (twice for a spooled sink: the spool keeps a copy until they are settled) come off
    /// the flow table's share.
    pub fn memory_budget(&self) -> Result<crate::memory::Budget, String> {
        let spooled = if self.spool_dir.is_some() { 2 } else { 1 };
        let queued: u64 = self
            .sinks
            .iter()
            .map(|s| match s {
                SinkSpec::Kafka { .. } => self.kafka_queue_max_records as u64 * spooled,
                SinkSpec::Otlp(_) => self.otlp_queue_records as u64 * spooled,
                _ => 0,
            })
            .sum::<u64>()
            // Every sink's thread queue (flowlens_sinks::worker): batches are shared between
            // sinks, but sinks that fall behind at different times hold different ones.
            + self.sinks.len() as u64 * flowlens_sinks::worker::DEFAULT_QUEUE_RECORDS;
        crate::memory::plan(self.max_memory, self.max_flows, queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        a: RunArgs,
    }

    fn args(v: &[&str]) -> RunArgs {
        T::try_parse_from(std::iter::once("t").chain(v.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn defaults() {
        let c = args(&[]).resolve().unwrap();
        assert_eq!(c.sinks, vec![SinkSpec::Parquet("./flows".into())]);
        assert_eq!(c.active_timeout, Duration::from_secs(60));
        assert_eq!(c.idle_timeout, Duration::from_secs(15));
        assert_eq!(c.drain_interval, Duration::from_secs(1));
        assert_eq!(c.xdp_mode, XdpAttachMode::Auto);
        assert!(c.xdp.is_empty());
        assert!(c.netfilter.is_empty());
        assert_eq!(c.netfilter_priority, DEFAULT_NETFILTER_PRIORITY);
        assert_eq!(c.duration, None);
        assert_eq!(c.kafka_format, KafkaFormat::Protobuf);
        assert_eq!(c.kafka_queue_max_records, 100_000);
        assert_eq!(c.kafka_close_timeout, Duration::from_secs(30));
        assert!(c.kafka_options.is_empty());
        assert_eq!(c.early_drain_fill, 50);
        assert!(!c.precise_timestamps);
        assert_eq!(c.metrics_listen, None, "no listener unless asked");
        assert_eq!(c.sink_stall_timeout, DEFAULT_SINK_STALL_TIMEOUT);
        assert_eq!(c.spool_dir, Some(PathBuf::from("/var/lib/flowlens/spool")));
        assert_eq!(c.spool_max_bytes, 1 << 30);
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.ipfix, flowlens_sinks::ipfix::IpfixSettings::default());
    }

    /// issue 15: the `--ipfix-*` flags, from the command line and the config file.
    #[test]
    fn ipfix_flags() {
        let c = args(&[
            "--sink",
            "ipfix+tcp:c:4739",
            "--ipfix-template-refresh",
            "5s",
            "--ipfix-domain-id",
            "7",
            "--ipfix-mtu",
            "9000",
            "--ipfix-enterprise-number",
            "99",
        ])
        .resolve()
        .unwrap();
        assert_eq!(
            c.ipfix,
            flowlens_sinks::ipfix::IpfixSettings {
                template_refresh: Duration::from_secs(5),
                domain_id: Some(7),
                mtu: 9000,
                enterprise: Some(99),
            }
        );
        let c = args(&["--ipfix-enterprise-fields", "off"])
            .resolve()
            .unwrap();
        assert_eq!(c.ipfix.enterprise, None);
        let e = args(&["--ipfix-mtu", "576"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ipfix-mtu 576 is too small"), "{e}");
        assert!(T::try_parse_from(["t", "--ipfix-enterprise-fields", "maybe"]).is_err());
        let f: RunArgs =
            toml::from_str("ipfix-enterprise-fields = \"off\"\nipfix-mtu = 1500\n").unwrap();
        assert_eq!(f.ipfix_enterprise_fields, Some(false));
        assert_eq!(f.ipfix_mtu, Some(1500));
    }

    #[test]
    fn spool_and_grace_from_cli_and_file() {
        let c = args(&[
            "--spool-dir",
            "/tmp/sp",
            "--spool-max-bytes",
            "2000000",
            "--shutdown-grace",
            "5s",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.spool_dir, Some(PathBuf::from("/tmp/sp")));
        assert_eq!(c.spool_max_bytes, 2_000_000);
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        assert_eq!(args(&["--no-spool"]).resolve().unwrap().spool_dir, None);
        let dir = std::env::temp_dir().join(format!("flowlens-cfg-spool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.toml");
        std::fs::write(
            &f,
            "spool-dir = \"/srv/sp\"\nspool-max-bytes = 5000000\nshutdown-grace = \"1m\"\n",
        )
        .unwrap();
        let c = args(&["--config", f.to_str().unwrap()]).resolve().unwrap();
        assert_eq!(c.spool_dir, Some(PathBuf::from("/srv/sp")));
        assert_eq!(c.spool_max_bytes, 5_000_000);
        assert_eq!(c.shutdown_grace, Duration::from_secs(60));
        std::fs::write(&f, "no-spool = true\n").unwrap();
        let c = args(&["--config", f.to_str().unwrap()]).resolve().unwrap();
        assert_eq!(c.spool_dir, None);
        std::fs::write(&f, "shutdown-grace = \"soon\"\n").unwrap();
        let e = format!(
            "{:#}",
            args(&["--config", f.to_str().unwrap()])
                .resolve()
                .unwrap_err()
        );
        assert!(e.contains("shutdown-grace") && e.contains("s.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = args(&["--spool-max-bytes", "100"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--spool-max-bytes 100"), "{e}");
    }

    #[test]
    fn metrics_options_from_cli_and_file() {
        let c = args(&["--metrics-listen", "9464", "--sink-stall-timeout", "5s"])
            .resolve()
            .unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.sink_stall_timeout, Duration::from_secs(5));
        let e = T::try_parse_from(["t", "--metrics-listen", "nowhere"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("metrics-listen") && e.contains("nowhere"), "{e}");
        let dir = std::env::temp_dir().join(format!("flowlens-cfg-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("m.toml");
        std::fs::write(&f, "metrics-listen = \"[::1]:9100\"\n").unwrap();
        let c = args(&["--config", f.to_str().unwrap()]).resolve().unwrap();
        assert_eq!(c.metrics_listen, Some("[::1]:9100".parse().unwrap()));
        std::fs::write(&f, "metrics-listen = 9464\n").unwrap();
        let c = args(&["--config", f.to_str().unwrap()]).resolve().unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        std::fs::write(&f, "metrics-listen = \"eth0:1\"\n").unwrap();
        let e = format!(
            "{:#}",
            args(&["--config", f.to_str().unwrap()])
                .resolve()
                .unwrap_err()
        );
        assert!(e.contains("eth0:1") && e.contains("m.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 14: transport flags from the command line and the config file; secrets never in
    /// errors or `Debug`. (The OTEL_EXPORTER_OTLP_* variables are exercised through a real run
    /// in collector/tests/transports_cli.rs: tests here do not mutate the environment.)
    #[test]
    fn otlp_transport_options_from_cli_and_file() {
        let c = args(&[
            "--sink",
            "otlp:https://c.example:4318",
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-ca",
            "/etc/ca.pem",
            "--otlp-client-cert",
            "/etc/c.pem",
            "--otlp-client-key",
            "/etc/c.key",
            "--otlp-header",
            "authorization=Bearer tok-secret",
            "--otlp-header",
            "x-tenant=a=b",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.otlp_tls.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.otlp_tls.client_key, Some(PathBuf::from("/etc/c.key")));
        assert_eq!(
            c.otlp_headers.0,
            vec![
                ("authorization".to_string(), "Bearer tok-secret".to_string()),
                ("x-tenant".to_string(), "a=b".to_string())
            ]
        );
        let b = c.sink_options("h".into());
        assert_eq!(b.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(b.otlp_headers, c.otlp_headers);
        for dbg in [format!("{c:?}"), format!("{b:?}")] {
            assert!(!dbg.contains("tok-secret"), "{dbg}");
        }
        // A malformed header never echoes its value; a bad protocol is named.
        let e = args(&["--otlp-header", "tok-secret"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--otlp-header") && !e.contains("tok-secret"),
            "{e}"
        );
        let e = T::try_parse_from(["t", "--otlp-protocol", "http/json"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("http/json is not supported"), "{e}");
        let e = args(&["--otlp-header", "bad key=tok-secret"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--otlp-header") && !e.contains("tok-secret"),
            "{e}"
        );

        let dir = std::env::temp_dir().join(format!("flowlens-cfg-otlp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("o.toml");
        std::fs::write(
            &f,
            "sink = [\"otlp:https://c:4317\"]\notlp-protocol = \"grpc\"\notlp-ca = \"/f/ca.pem\"\notlp-header = [\"api-key=k1\"]\n",
        )
        .unwrap();
        let c = args(&["--config", f.to_str().unwrap()]).resolve().unwrap();
        assert_eq!(c.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(c.otlp_tls.ca, Some(PathBuf::from("/f/ca.pem")));
        assert_eq!(c.otlp_headers.0, vec![("api-key".into(), "k1".into())]);
        // The command line wins over the file.
        let c = args(&[
            "--config",
            f.to_str().unwrap(),
            "--otlp-header",
            "api-key=k2",
            "--otlp-ca",
            "/cli/ca.pem",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.otlp_headers.0, vec![("api-key".into(), "k2".into())]);
        assert_eq!(c.otlp_tls.ca, Some(PathBuf::from("/cli/ca.pem")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kafka_options_from_cli_and_file() {
        let c = args(&[
            "--sink",
            "kafka:127.0.0.1:9092,127.0.0.1:9093/flows",
            "--sink",
            "parquet:/tmp/x",
            "--kafka-format",
            "json",
            "--kafka-option",
            "security.protocol=SASL_PLAINTEXT",
            "--kafka-option",
            "sasl.password=a=b",
            "--kafka-queue-max-records",
            "5000",
        ])
        .resolve()
        .unwrap();
        assert_eq!(
            c.sinks[0],
            SinkSpec::Kafka {
                brokers: "127.0.0.1:9092,127.0.0.1:9093".into(),
                topic: "flows".into()
            }
        );
        assert_eq!(c.kafka_format, KafkaFormat::Json);
        assert_eq!(
            c.kafka_options,
            vec![
                ("security.protocol".into(), "SASL_PLAINTEXT".into()),
                ("sasl.password".into(), "a=b".into())
            ]
        );
        assert_eq!(c.kafka_queue_max_records, 5000);
        let dir = std::env::temp_dir().join(format!("flowlens-cfg-k-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k.toml");
        std::fs::write(
            &f,
            "sink = [\"kafka:b:9092/t\"]\nkafka-format = \"json\"\nkafka-option = [\"linger.ms=5\"]\nkafka-close-timeout = \"2s\"\n",
        )
        .unwrap();
        let c = args(&["--config", f.to_str().unwrap()]).resolve().unwrap();
        assert_eq!(c.kafka_format, KafkaFormat::Json);
        assert_eq!(c.kafka_options, vec![("linger.ms".into(), "5".into())]);
        assert_eq!(c.kafka_close_timeout, Duration::from_secs(2));
        std::fs::write(&f, "kafka-format = \"avro\"\n").unwrap();
        let e = format!(
            "{:#}",
            args(&["--config", f.to_str().unwrap()])
                .resolve()
                .unwrap_err()
        );
        assert!(e.contains("avro") && e.contains("k.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `--kubernetes` / `--kubeconfig` and their config keys; the command line wins, a
    /// kubeconfig implies --kubernetes.
    #[test]
    fn kubernetes_options() {
        assert!(!args(&[]).resolve().unwrap().kubernetes);
        let c = args(&["--kubernetes"]).resolve().unwrap();
        assert!(c.kubernetes && c.kubeconfig.is_none());
        let c = args(&["--kubeconfig", "/k/config"]).resolve().unwrap();
        assert!(c.kubernetes);
        assert_eq!(
            c.kubeconfig.as_deref(),
            Some(std::path::Path::new("/k/config"))
        );
        let dir = std::env::temp_dir().join(format!("flowlens-cfg-k8s-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k.toml");
        std::fs::write(&f, "kubernetes = true\n").unwrap();
        let on = args(&["--config", f.to_str().unwrap()]).resolve().unwrap();
        assert!(on.kubernetes);
        let off = args(&["--config", f.to_str().unwrap(), "--kubernetes=false"])
            .resolve()
            .unwrap();
        assert!(!off.kubernetes);
        std::fs::write(&f, "kubeconfig = \"/etc/k\"\n").unwrap();
        let c = args(&["--config", f.to_str().unwrap()]).resolve().unwrap();
        assert!(c.kubernetes);
        assert_eq!(
            c.kubeconfig.as_deref(),
            Some(std::path::Path::new("/etc/k"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn drain_and_clock_options() {
        let c = args(&["--early-drain-fill", "0", "--precise-timestamps"])
            .resolve()
            .unwrap();
        assert_eq!(c.early_drain_fill, 0);
        assert!(c.precise_timestamps);
        let e = format!(
            "{:#}",
            args(&["--early-drain-fill", "101"]).resolve().unwrap_err()
        );
        assert!(
            e.contains("--early-drain-fill 101") && e.contains("0-100"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("flowlens-cfg-drain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "early-drain-fill = 75\nprecise-timestamps = true\n").unwrap();
        let c = args(&["--config", f.to_str().unwrap()]).resolve().unwrap();
        assert_eq!((c.early_drain_fill, c.precise_timestamps), (75, true));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The shipped service definitions and the code agree on S3: the staging directory is in
    /// the state the unit keeps (`StateDirectory`, the DaemonSet's state volume), not in a
    /// private /tmp the unit empties at every start; uploads get --shutdown-grace at close; and
    /// the stop timeout covers that, the close slack and a margin for detaching and the last
    /// drain.
    #[test]
    fn s3_staging_and_close_fit_the_shipped_units() {
        /// Detaching the probes, the last drain and exit, on top of the sinks' close.
        const STOP_MARGIN: Duration = Duration::from_secs(10);
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let target = flowlens_sinks::s3::S3Target::parse("s3://bkt/a/b").unwrap();
        let check = |what: &str, cfg: &RunConfig, state: &std::path::Path, stop: Duration| {
            let o = cfg.s3_options(&target, "h".into());
            assert!(
                o.spool_dir.starts_with(state) && o.spool_dir.ends_with("bkt/a/b"),
                "{what}: S3 staging {} is not in the kept state {}",
                o.spool_dir.display(),
                state.display()
            );
            assert!(
                !o.spool_dir.starts_with("/tmp") && !o.spool_dir.starts_with("/var/tmp"),
                "{what}: {}",
                o.spool_dir.display()
            );
            assert_eq!(o.close_timeout, cfg.shutdown_grace, "{what}");
            assert!(
                o.close_timeout + flowlens_sinks::s3::CLOSE_SLACK + STOP_MARGIN <= stop,
                "{what}: stop timeout {stop:?} < S3 close {:?} + slack + margin",
                o.close_timeout
            );
        };

        // systemd: the unit's own command line, with the shipped config file.
        let unit = std::fs::read_to_string(deploy.join("systemd/flowlens.service")).unwrap();
        let key = |k: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{k} not in the unit"))
                .trim()
                .to_string()
        };
        assert_eq!(key("PrivateTmp"), "yes");
        let state = PathBuf::from("/var/lib").join(key("StateDirectory"));
        let stop = humantime::parse_duration(&key("TimeoutStopSec")).unwrap();
        let exec = key("ExecStart");
        let mut argv: Vec<String> = exec.split_whitespace().skip(2).map(String::from).collect();
        let at = argv.iter().position(|a| a == "--config").unwrap() + 1;
        assert_eq!(argv[at], "/etc/flowlens/flowlens.toml");
        argv[at] = deploy.join("flowlens.toml").to_str().unwrap().to_string();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        check("systemd", &args(&argv).resolve().unwrap(), &state, stop);

        // Kubernetes: the DaemonSet's config map, state volume and grace period.
        let ds = std::fs::read_to_string(deploy.join("kubernetes/daemonset.yaml")).unwrap();
        let grace = ds
            .lines()
            .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
            .unwrap();
        let stop = Duration::from_secs(grace.trim().parse().unwrap());
        assert!(ds.contains("{name: state, mountPath: /var/lib/flowlens}"));
        let toml: String = ds
            .lines()
            .skip_while(|l| !l.contains("flowlens.toml: |"))
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", l.trim()))
            .collect();
        let dir = std::env::temp_dir().join(format!("flowlens-cfg-ds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ds.toml");
        std::fs::write(&f, toml).unwrap();
        let cfg = args(&["--config", f.to_str().unwrap()]).resolve().unwrap();
        assert_eq!(cfg.sinks.len(), 1, "the config map was read");
        check(
            "kubernetes",
            &cfg,
            std::path::Path::new("/var/lib/flowlens"),
            stop,
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every boolean the config file can turn on, the command line can turn off again
    /// (`--X=false`), and the other way round; a bare `--X` still means true.
    #[test]
    fn config_file_booleans_can_be_overridden_on_the_command_line() {
        let dir = std::env::temp_dir().join(format!("flowlens-cfg-bool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let on = dir.join("on.toml");
        std::fs::write(
            &on,
            "precise-timestamps = true\notlp-metrics = true\nno-spool = true\n",
        )
        .unwrap();
        let on = on.to_str().unwrap();
        let c = args(&["--config", on]).resolve().unwrap();
        assert!(c.precise_timestamps && c.otlp_metrics && c.spool_dir.is_none());
        let c = args(&[
            "--config",
            on,
            "--precise-timestamps=false",
            "--otlp-metrics=false",
            "--no-spool=false",
        ])
        .resolve()
        .unwrap();
        assert!(!c.precise_timestamps && !c.otlp_metrics);
        assert_eq!(c.spool_dir, Some(PathBuf::from(DEFAULT_SPOOL_DIR)));

        let off = dir.join("off.toml");
        std::fs::write(
            &off,
            "precise-timestamps = false\notlp-metrics = false\nno-spool = false\n",
        )
        .unwrap();
        let off = off.to_str().unwrap();
        let c = args(&[
            "--config",
            off,
            "--precise-timestamps",
            "--otlp-metrics=true",
            "--no-spool",
        ])
        .resolve()
        .unwrap();
        assert!(c.precise_timestamps && c.otlp_metrics && c.spool_dir.is_none());
        // `=` is required: a bare flag never swallows the next argument.
        let c = args(&["--no-spool", "--sink", "stdout"]).resolve().unwrap();
        assert_eq!((c.spool_dir, c.sinks), (None, vec![SinkSpec::Stdout]));
        assert!(T::try_parse_from(["t", "--otlp-metrics=maybe"]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sink_options_from_cli_and_file() {
        let c = args(&[
            "--sink",
            "otlp:http://127.0.0.1:4317",
            "--sink",
            "parquet:s3://bkt/pre",
            "--otlp-metrics",
            "--otlp-batch-records",
            "100",
            "--s3-option",
            "endpoint=http://127.0.0.1:9000",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.sinks.len(), 2);
        assert!(c.otlp_metrics);
        assert_eq!(c.otlp_batch_records, 100);
        assert_eq!(
            c.otlp_queue_records,
            flowlens_sinks::otlp::DEFAULT_QUEUE_RECORDS
        );
        assert_eq!(
            c.s3_options,
            vec![("endpoint".to_string(), "http://127.0.0.1:9000".to_string())]
        );
        let dir = std::env::temp_dir().join(format!("flowlens-cfg-s3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.toml");
        std::fs::write(
            &f,
            "otlp-metrics = true\notlp-timeout = \"3s\"\ns3-option = [\"region=eu-west-1\"]\nparquet-spool-dir = \"/var/spool/fl\"\n",
        )
        .unwrap();
        let c = args(&["--config", f.to_str().unwrap()]).resolve().unwrap();
        assert!(c.otlp_metrics);
        assert_eq!(c.otlp_timeout, Duration::from_secs(3));
        assert_eq!(
            c.s3_options,
            vec![("region".to_string(), "eu-west-1".to_string())]
        );
        assert_eq!(c.parquet_spool_dir, Some(PathBuf::from("/var/spool/fl")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn netfilter_hooks_and_priority() {
        let c = args(&[
            "--netfilter",
            "forward,local_out",
            "--netfilter-priority",
            "-200",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.netfilter, vec![Hook::Forward, Hook::LocalOut]);
        assert_eq!(c.netfilter_priority, -200);
        let c = args(&["--netfilter", "pre_routing", "--netfilter", "post_routing"])
            .resolve()
            .unwrap();
        assert_eq!(c.netfilter, vec![Hook::PreRouting, Hook::PostRouting]);
        for (argv, want) in [
            (
                vec!["--netfilter", "forwrd"],
                "unknown netfilter hook \"forwrd\"",
            ),
            (
                vec!["--netfilter", "forward,"],
                "unknown netfilter hook \"\"",
            ),
            (
                vec!["--netfilter", "forward,forward"],
                "forward given twice",
            ),
        ] {
            let e = format!("{:#}", args(&argv).resolve().unwrap_err());
            assert!(
                e.contains(want) && e.contains("--netfilter"),
                "{argv:?}: {e}"
            );
        }
        for bad in ["-2147483648", "2147483647", "low", "99999999999"] {
            let e = T::try_parse_from(["t", "--netfilter-priority", bad])
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"))
                .to_string();
            assert!(e.contains("netfilter-priority"), "{bad}: {e}");
        }
    }

    #[test]
    fn netfilter_in_the_config_file() {
        let dir = std::env::temp_dir().join(format!("flowlens-cfg-nf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (text, want) in [
            (
                "netfilter = \"forward, local_in\"\nnetfilter-priority = 300\n",
                Ok((vec![Hook::Forward, Hook::LocalIn], 300)),
            ),
            (
                "netfilter = [\"post_routing\"]\n",
                Ok((vec![Hook::PostRouting], DEFAULT_NETFILTER_PRIORITY)),
            ),
            (
                "netfilter = [\"input\"]\n",
                Err("unknown netfilter hook \"input\""),
            ),
            ("netfilter-priority = 2147483647\n", Err("reserved")),
        ] {
            let f = dir.join("nf.toml");
            std::fs::write(&f, text).unwrap();
            let r = args(&["--config", f.to_str().unwrap()]).resolve();
            match want {
                Ok((hooks, prio)) => {
                    let c = r.unwrap();
                    assert_eq!((c.netfilter, c.netfilter_priority), (hooks, prio), "{text}");
                }
                Err(w) => {
                    let e = format!("{:#}", r.unwrap_err());
                    assert!(e.contains(w), "{text}: {e}");
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_values_apply_and_cli_wins() {
        let dir = std::env::temp_dir().join(format!("flowlens-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.toml");
        std::fs::write(
            &f,
            "xdp = [\"eth9\"]\nxdp-mode = \"skb\"\nidle-timeout = \"20s\"\nmax-flows = 1000\nsink = [\"stdout\"]\n",
        )
        .unwrap();
        let c = args(&["--config", f.to_str().unwrap(), "--idle-timeout", "30s"])
            .resolve()
            .unwrap();
        assert_eq!(c.xdp, vec!["eth9".to_string()]);
        assert_eq!(c.xdp_mode, XdpAttachMode::Skb);
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.max_flows, 1000);
        assert_eq!(c.sinks, vec![SinkSpec::Stdout]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let dir = std::env::temp_dir().join(format!("flowlens-cfg-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("bogus-key = 1\n", "unknown field"),
            ("idle-timeout = \"soon\"\n", "idle-timeout"),
            ("xdp-mode = \"turbo\"\n", "unknown variant"),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let f = dir.join(format!("{i}.toml"));
            std::fs::write(&f, text).unwrap();
            let e = format!(
                "{:#}",
                args(&["--config", f.to_str().unwrap()])
                    .resolve()
                    .unwrap_err()
            );
            assert!(
                e.contains(want) && e.contains(f.to_str().unwrap()),
                "{text}: {e}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(T::try_parse_from(["t", "--idle-timeout", "0s"]).is_err());
        assert!(T::try_parse_from(["t", "--drain-interval", "x"]).is_err());
        let e = args(&["--sink", "bogus:x"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown sink kind"), "{e}");
        let e = args(&["--sink", "kafka:x"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("kafka:BROKERS/TOPIC"), "{e}");
        for (opt, want) in [
            ("acks", "expected key=value"),
            ("bad key=1", "not a librdkafka property"),
            ("bootstrap.servers=h:1", "--sink kafka:BROKERS/TOPIC"),
            (
                "queue.buffering.max.messages=5",
                "--kafka-queue-max-records",
            ),
        ] {
            let e = args(&["--kafka-option", opt])
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{opt}: {e}");
        }
        assert!(T::try_parse_from(["t", "--kafka-format", "avro"]).is_err());
        let e = args(&["--kafka-queue-max-records", "0"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("kafka-queue-max-records"), "{e}");
        let e = args(&["--sink", "kafka:h:1/t", "--sink", "kafka:h:1/t"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
        let e = args(&["--drain-interval", "20s"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("must not exceed"), "{e}");
        let e = args(&["--max-flows", "0"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("max-flows"), "{e}");
        let e = args(&["--sink", "otlp:ftp://x:4317"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("https://HOST:PORT"), "{e}");
        let e = args(&["--sink", "parquet:s3://"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("s3://BUCKET"), "{e}");
        assert!(T::try_parse_from(["t", "--s3-option", "novalue"]).is_err());
        let e = args(&[
            "--sink",
            "parquet:s3://a/x",
            "--sink",
            "parquet:s3://a/y",
            "--parquet-spool-dir",
            "/tmp/s",
        ])
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("parquet-spool-dir"), "{e}");
        let e = args(&["--sink", "otlp:http://h:1", "--sink", "otlp:http://h:1"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
        let e = args(&["--otlp-batch-records", "0"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("otlp-batch-records"), "{e}");
        let e = args(&["--config", "/nonexistent/x.toml"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }
}
