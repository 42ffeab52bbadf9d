//! The metrics endpoint end to end: the real `flowlens run` binary with XDP on a veth in a
//! network namespace, real traffic, real sinks (Parquet, and an in-test OTLP/gRPC receiver),
//! `/metrics` scraped over TCP and parsed by a strict exposition-format parser written here,
//! values compared with what was sent, with an independent AF_PACKET capture, with the Parquet
//! files read back and with what the OTLP receiver got. Also `/healthz`, `/readyz` (attached;
//! a sink that cannot deliver; recovery), 404s, the loopback default (checked in
//! `/proc/PID/net/tcp`: flowlens' only listening socket) and a taken port. Needs root (CI
//! runs as root); never skips.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arrow_array::{Array, Int64Array};
use flowlens_testkit::{
    Capture, Link, Netns, otlp::LogsReceiver, temp_dir, udp_exchange, veth_pair,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");

// ---------------------------------------------------------------------------------------------
// A strict parser of the Prometheus text exposition format (0.0.4), enough for flowlens.

/// `name{k="v",...}` → value. Labels sorted by name.
type Series = BTreeMap<(String, Vec<(String, String)>), f64>;

#[derive(Debug)]
struct Exposition {
    series: Series,
    types: BTreeMap<String, String>,
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// Parses `k="v",...}` after the `{`; returns the labels and the rest after `}`.
fn parse_labels(s: &str) -> (Vec<(String, String)>, &str) {
    let mut labels = Vec::new();
    let mut rest = s;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return (labels, r);
        }
        let eq = rest.find('=').expect("label without =");
        let name = &rest[..eq];
        assert!(is_name(name), "bad label name {name:?}");
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .expect("label value not quoted");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next().expect("unterminated label value");
            match c {
                '\\' => match chars.next().expect("dangling escape").1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    o => panic!("bad escape \\{o}"),
                },
                '"' => break i,
                '\n' => panic!("newline in label value"),
                c => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            assert!(
                rest.starts_with('}'),
                "expected , or }} in labels: {rest:?}"
            );
        }
    }
}

fn parse_value(v: &str) -> f64 {
    match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|e| panic!("bad value {v:?}: {e}")),
    }
}

/// The family a sample belongs to (histogram samples carry suffixes).
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).map(String::as_str) == Some("histogram")
        {
            return base;
        }
    }
    name
}

fn parse_exposition(text: &str) -> Exposition {
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut series = Series::new();
    let mut types = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut seen_families: Vec<String> = Vec::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line in exposition");
        if let Some(h) = line.strip_prefix("# HELP ") {
            let (name, help) = h.split_once(' ').expect("HELP without text");
            assert!(is_name(name) && !help.is_empty(), "{line}");
            assert!(helps.insert(name.to_string()), "second HELP for {name}");
            continue;
        }
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').expect("TYPE without type");
            assert!(is_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(helps.contains(name), "TYPE before HELP for {name}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "second TYPE for {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let name_end = line.find(['{', ' ']).expect("sample without value");
        let name = &line[..name_end];
        assert!(is_name(name), "bad metric name {name:?}");
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(r) => parse_labels(r),
            None => (Vec::new(), &line[name_end..]),
        };
        let value = rest.strip_prefix(' ').expect("no space before value");
        assert!(!value.contains(' '), "timestamps are not used: {line}");
        let fam = family_of(name, &types).to_string();
        let kind = types
            .get(&fam)
            .unwrap_or_else(|| panic!("sample {name} before its TYPE line"));
        // All samples of a family are together.
        if seen_families.last() != Some(&fam) {
            assert!(
                !seen_families.contains(&fam),
                "family {fam} split in two groups"
            );
            seen_families.push(fam.clone());
        }
        if kind == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            );
        }
        assert!(
            name.starts_with("flowlens_"),
            "{name} lacks the flowlens_ prefix"
        );
        let mut labels = labels;
        labels.sort();
        let v = parse_value(value);
        if kind == "counter" || name.ends_with("_bucket") || name.ends_with("_count") {
            assert!(v >= 0.0 && v.fract() == 0.0, "{line}");
        }
        assert!(
            series.insert((name.to_string(), labels), v).is_none(),
            "duplicate series {line}"
        );
    }
    // Histograms: cumulative buckets ending in +Inf = _count.
    for (fam, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let buckets: Vec<(f64, f64)> = series
            .iter()
            .filter(|((n, _), _)| *n == format!("{fam}_bucket"))
            .map(|((_, l), v)| {
                let le = &l
                    .iter()
                    .find(|(k, _)| k == "le")
                    .expect("bucket without le")
                    .1;
                (parse_value(le), *v)
            })
            .collect();
        let mut sorted = buckets.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            sorted.windows(2).all(|w| w[0].1 <= w[1].1),
            "{fam}: buckets not cumulative"
        );
        let last = sorted.last().expect("histogram without buckets");
        assert!(last.0.is_infinite());
        assert_eq!(Some(&last.1), series.get(&(format!("{fam}_count"), vec![])));
    }
    Exposition { series, types }
}

impl Exposition {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        self.series.get(&(name.to_string(), l)).copied()
    }
    fn val(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
    }
}

#[test]
fn exposition_parser_rejects_malformed_text() {
    let ok = "# HELP flowlens_a_total A.\n# TYPE flowlens_a_total counter\nflowlens_a_total{x=\"a\\\"b\"} 3\n";
    let e = parse_exposition(ok);
    assert_eq!(e.val("flowlens_a_total", &[("x", "a\"b")]), 3.0);
    assert_eq!(e.types["flowlens_a_total"], "counter");
    for bad in [
        // no TYPE
        "flowlens_a_total 1\n",
        // counter without _total
        "# HELP flowlens_a A.\n# TYPE flowlens_a counter\nflowlens_a 1\n",
        // duplicate series
        "# HELP flowlens_a A.\n# TYPE flowlens_a gauge\nflowlens_a 1\nflowlens_a 2\n",
        // bad value
        "# HELP flowlens_a A.\n# TYPE flowlens_a gauge\nflowlens_a one\n",
        // unterminated label
        "# HELP flowlens_a A.\n# TYPE flowlens_a gauge\nflowlens_a{x=\"1} 1\n",
        // non-cumulative histogram
        "# HELP flowlens_h H.\n# TYPE flowlens_h histogram\nflowlens_h_bucket{le=\"1\"} 2\nflowlens_h_bucket{le=\"+Inf\"} 1\nflowlens_h_sum 1\nflowlens_h_count 1\n",
    ] {
        let r = std::panic::catch_unwind(|| parse_exposition(bad));
        assert!(r.is_err(), "accepted: {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP and process helpers.

/// One HTTP/1.1 request from inside `ns` (where flowlens' loopback is); returns status and body.
fn http(ns: &Netns, addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = ns
        .run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap()
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("no end of head");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("no Content-Length")
        .parse()
        .unwrap();
    if method != "HEAD" {
        assert_eq!(len, body.len(), "Content-Length mismatch");
    }
    if path == "/metrics" && status == 200 {
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
    }
    (status, body.to_string())
}

fn scrape(ns: &Netns, addr: SocketAddr) -> Exposition {
    let (status, body) = http(ns, addr, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body)
}

/// A running `flowlens run` whose stderr is collected as it comes.
struct Flowlens {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Flowlens {
    fn start(ns: &Netns, args: &[String]) -> Flowlens {
        let mut child = ns
            .command(FLOWLENS)
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flowlens");
        let log = Arc::new(Mutex::new(String::new()));
        let (l2, err) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut l = l2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Flowlens {
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The address from the "metrics endpoint listening" line.
    fn metrics_addr(&self) -> SocketAddr {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log
                .lines()
                .find(|l| l.contains("metrics endpoint listening"))
            {
                let a = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .unwrap_or_else(|| panic!("no addr= in {line}"));
                return a.parse().unwrap();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no metrics endpoint after 20 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, wait; returns success and the whole log (echoed).
    fn stop(mut self) -> (bool, String) {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let st = child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log();
        eprint!("{log}");
        (st.success(), log)
    }
}

impl Drop for Flowlens {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            eprint!("{}", self.log());
        }
    }
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two hosts; A's interface without IPv6, so A sends nothing on its own (no router or
/// listener solicitations) and B's interface receives only the test's traffic.
fn quiet_hosts(tag: &str) -> (Netns, Netns, Link) {
    let a = Netns::new(&format!("{tag}a")).unwrap();
    let b = Netns::new(&format!("{tag}b")).unwrap();
    let link = veth_pair(&a, &b).unwrap();
    // /proc/sys/net is the namespace's own under `ip netns exec`.
    let o = a
        .command("sh")
        .arg("-c")
        .arg(format!(
            "echo 1 > /proc/sys/net/ipv6/conf/{}/disable_ipv6",
            link.a_if
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (a, b, link)
}

/// (rows, packets, bytes) of every completed Parquet file under `dir`.
fn parquet_totals(dir: &Path) -> (i64, i64, i64) {
    let (mut rows, mut packets, mut bytes) = (0, 0, 0);
    for f in flowlens::top::parquet_files(dir).unwrap() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let col = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            let (p, by) = (col("packets"), col("bytes"));
            rows += b.num_rows() as i64;
            for i in 0..b.num_rows() {
                packets += p.value(i);
                bytes += by.value(i);
            }
        }
    }
    (rows, packets, bytes)
}

/// Socket inodes `pid` holds.
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Rows of `/proc/PID/net/{file}` (the process's network namespace) owned by `pid`:
/// (local address hex, state hex).
fn owned_sockets(pid: u32, file: &str) -> Vec<(String, String)> {
    let inodes = socket_inodes(pid);
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let inode: u64 = f.get(9)?.parse().ok()?;
            inodes
                .contains(&inode)
                .then(|| (f[1].to_string(), f[3].to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

/// The metrics match the traffic (packets seen at the XDP point = frames captured = datagrams
/// sent), the Parquet files read back and the OTLP receiver's records; health and readiness
/// answer 200, other paths 404; the endpoint listens on loopback only.
#[test]
fn metrics_match_traffic_and_sinks() {
    let (a, b, link) = quiet_hosts("met");
    let out = temp_dir("metrics-e2e").unwrap();
    let otlp_listener = b
        .run_in(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let otlp_addr = otlp_listener.local_addr().unwrap();
    let recv = LogsReceiver::default();
    let _otlp = recv.serve(otlp_listener).unwrap();

    let t_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let fl = Flowlens::start(
        &b,
        &[
            "--xdp".into(),
            link.b_if.clone(),
            "--xdp-mode".into(),
            "skb".into(),
            "--drain-interval".into(),
            "200ms".into(),
            "--idle-timeout".into(),
            "500ms".into(),
            "--sink".into(),
            format!("parquet:{}", out.display()),
            "--parquet-rotate-interval".into(),
            "1s".into(),
            "--sink".into(),
            format!("otlp:http://{otlp_addr}"),
            // Port only: loopback, any free port.
            "--metrics-listen".into(),
            "0".into(),
        ],
    );
    let addr = fl.metrics_addr();
    assert_eq!(addr.ip(), IpAddr::from([127, 0, 0, 1]), "default address");

    // Readiness follows attachment (and nothing is waiting in the sinks yet).
    let body = wait_until("/readyz 200", Duration::from_secs(20), || {
        let (st, body) = http(&b, addr, "GET", "/readyz");
        (st == 200).then_some(body)
    });
    assert!(b.xdp_attached(&link.b_if).unwrap());
    assert!(
        body.starts_with("ready:") && body.contains(&format!("xdp: {}", link.b_if)),
        "{body}"
    );
    assert!(
        body.contains("sink parquet:") && body.contains("sink otlp:"),
        "{body}"
    );

    // The only socket flowlens listens on is the endpoint, on 127.0.0.1; no UDP socket.
    let pid = fl.pid();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "flowlens"
    );
    let listening: Vec<String> = ["tcp", "tcp6"]
        .iter()
        .flat_map(|f| owned_sockets(pid, f))
        .filter(|(_, state)| state == "0A")
        .map(|(local, _)| local)
        .collect();
    assert_eq!(
        listening,
        vec![format!("0100007F:{:04X}", addr.port())],
        "flowlens' listening sockets"
    );
    let udp: Vec<_> = ["udp", "udp6"]
        .iter()
        .flat_map(|f| owned_sockets(pid, f))
        .collect();
    assert!(udp.is_empty(), "flowlens holds UDP sockets: {udp:?}");

    // Traffic: 4 UDP flows of 25 datagrams of 100 bytes, A → B, captured independently.
    let cap = Capture::start(&b, &link.b_if).unwrap();
    let (src, dst) = (IpAddr::V4(link.a_v4), IpAddr::V4(link.b_v4));
    const FLOWS: u16 = 4;
    const PER_FLOW: u32 = 25;
    const PAYLOAD: usize = 100;
    for f in 0..FLOWS {
        let n = udp_exchange(
            &a,
            &b,
            SocketAddr::new(src, 32100 + f),
            SocketAddr::new(dst, 9400 + f),
            PER_FLOW,
            PAYLOAD,
        )
        .unwrap();
        assert_eq!(n, PER_FLOW);
    }
    let sent_packets = FLOWS as f64 * PER_FLOW as f64;
    let ip_bytes = sent_packets * (20 + 8 + PAYLOAD) as f64;

    // Flows end (idle 500 ms), are exported and acknowledged by both sinks (Parquet rotates
    // every second) while flowlens runs.
    let parquet = format!("parquet:{}", out.display());
    let otlp = format!("otlp:http://{otlp_addr}");
    let m = wait_until(
        "4 records acknowledged by both sinks",
        Duration::from_secs(30),
        || {
            let m = scrape(&b, addr);
            let done = m.val("flowlens_flow_records_total", &[]) == FLOWS as f64
                && m.val(
                    "flowlens_sink_records_acknowledged_total",
                    &[("sink", &parquet)],
                ) == FLOWS as f64
                && m.val(
                    "flowlens_sink_records_acknowledged_total",
                    &[("sink", &otlp)],
                ) == FLOWS as f64;
            done.then_some(m)
        },
    );
    let frames = cap.stop().unwrap();
    let xdp = [("observation_point", "xdp")];

    // The probe's counters against the sender and the capture.
    assert_eq!(frames.len() as f64, sent_packets, "captured frames");
    assert_eq!(m.val("flowlens_packets_seen_total", &xdp), sent_packets);
    assert_eq!(m.val("flowlens_packets_keyed_total", &xdp), sent_packets);
    assert_eq!(m.val("flowlens_keyed_bytes_total", &xdp), ip_bytes);
    for zero in [
        "flowlens_packets_non_ip_total",
        "flowlens_packets_unparsed_total",
        "flowlens_packets_evicted_total",
        "flowlens_evicted_bytes_total",
        "flowlens_packets_map_error_total",
    ] {
        assert_eq!(m.val(zero, &xdp), 0.0, "{zero}");
    }
    // A flow whose packets straddle a buffer swap is created once in each buffer.
    assert!(m.val("flowlens_flows_created_total", &xdp) >= FLOWS as f64);
    assert_eq!(m.val("flowlens_drained_packets_total", &[]), sent_packets);
    assert_eq!(m.val("flowlens_drained_bytes_total", &[]), ip_bytes);
    assert_eq!(
        m.val("flowlens_flow_record_packets_total", &[]),
        sent_packets
    );
    assert_eq!(m.val("flowlens_flow_record_bytes_total", &[]), ip_bytes);
    assert_eq!(m.val("flowlens_flows_open", &[]), 0.0);
    // Only the attached observation point appears.
    assert_eq!(
        m.get(
            "flowlens_packets_seen_total",
            &[("observation_point", "nf_forward")]
        ),
        None
    );

    // Drains: every cycle is in the histogram.
    let drains = m.val("flowlens_drains_total", &[]);
    assert!(drains >= 5.0, "{drains} drains");
    assert_eq!(m.val("flowlens_drain_duration_seconds_count", &[]), drains);
    assert!(m.val("flowlens_drain_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(m.val("flowlens_early_drains_total", &[]), 0.0);
    assert_eq!(m.val("flowlens_drain_failures_total", &[]), 0.0);
    assert_eq!(m.val("flowlens_flow_map_max_flows", &[]), 131_072.0);
    let fill = m.val("flowlens_flow_map_fill_ratio", &[]);
    assert!((0.0..=1.0).contains(&fill), "{fill}");

    // Sinks against their destinations.
    let (rows, pk, by) = parquet_totals(&out);
    assert_eq!(
        (rows, pk as f64, by as f64),
        (FLOWS as i64, sent_packets, ip_bytes)
    );
    assert_eq!(recv.records(), FLOWS as usize);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for sink in [&parquet, &otlp] {
        let s = [("sink", sink.as_str())];
        assert_eq!(
            m.val("flowlens_sink_records_sent_total", &s),
            FLOWS as f64,
            "{sink}"
        );
        for zero in [
            "flowlens_sink_records_rejected_total",
            "flowlens_sink_records_lost_total",
            "flowlens_sink_errors_total",
            "flowlens_sink_records_queued",
            "flowlens_sink_records_spooled",
            "flowlens_sink_spool_bytes",
        ] {
            assert_eq!(m.val(zero, &s), 0.0, "{zero} {sink}");
        }
        assert_eq!(m.val("flowlens_sink_healthy", &s), 1.0);
        let last = m.val("flowlens_sink_last_export_timestamp_seconds", &s);
        assert!(last >= t_start - 1.0 && last <= now + 1.0, "{sink}: {last}");
    }
    assert_eq!(m.val("flowlens_up", &[]), 1.0);
    assert_eq!(m.val("flowlens_ready", &[]), 1.0);
    assert_eq!(
        m.val(
            "flowlens_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let started = m.val("flowlens_start_time_seconds", &[]);
    assert!(started >= t_start - 1.0 && started <= now, "{started}");

    // Health, other paths and methods.
    let (st, body) = http(&b, addr, "GET", "/healthz");
    assert_eq!(st, 200, "{body}");
    assert_eq!(http(&b, addr, "GET", "/readyz?verbose=1").0, 200);
    assert_eq!(http(&b, addr, "GET", "/").0, 404);
    assert_eq!(http(&b, addr, "GET", "/metrics/x").0, 404);
    assert_eq!(http(&b, addr, "POST", "/metrics").0, 405);
    let (st, body) = http(&b, addr, "HEAD", "/metrics");
    assert_eq!((st, body.as_str()), (200, ""));

    let (ok, log) = fl.stop();
    assert!(ok, "flowlens failed");
    assert!(log.contains("lost_packets=0"), "conservation line");
    std::fs::remove_dir_all(&out).unwrap();
}

/// A sink that cannot deliver (OTLP to a closed port) makes /readyz fail, naming it, while
/// /healthz stays up; when the receiver comes up the records are delivered and /readyz
/// recovers.
#[test]
fn readyz_fails_while_a_sink_cannot_deliver() {
    let (a, b, link) = quiet_hosts("rdy");
    // A port that was free in B a moment ago, and is closed now.
    let closed = b
        .run_in(|| std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().unwrap()))
        .unwrap()
        .unwrap();
    let otlp = format!("otlp:http://{closed}");
    let fl = Flowlens::start(
        &b,
        &[
            "--xdp".into(),
            link.b_if.clone(),
            "--xdp-mode".into(),
            "skb".into(),
            "--drain-interval".into(),
            "200ms".into(),
            "--idle-timeout".into(),
            "500ms".into(),
            "--sink".into(),
            otlp.clone(),
            "--sink-stall-timeout".into(),
            "1s".into(),
            "--metrics-listen".into(),
            ":0".into(),
        ],
    );
    let addr = fl.metrics_addr();
    wait_until(
        "/readyz 200 before traffic",
        Duration::from_secs(20),
        || (http(&b, addr, "GET", "/readyz").0 == 200).then_some(()),
    );

    let n = udp_exchange(
        &a,
        &b,
        SocketAddr::new(IpAddr::V4(link.a_v4), 32200),
        SocketAddr::new(IpAddr::V4(link.b_v4), 9401),
        10,
        64,
    )
    .unwrap();
    assert_eq!(n, 10);

    let body = wait_until("/readyz 503", Duration::from_secs(20), || {
        let (st, body) = http(&b, addr, "GET", "/readyz");
        (st == 503).then_some(body)
    });
    assert!(
        body.starts_with("not ready:")
            && body.contains(&format!("sink {otlp}"))
            && body.contains("records waiting"),
        "{body}"
    );
    assert_eq!(http(&b, addr, "GET", "/healthz").0, 200, "the loop is fine");
    let m = scrape(&b, addr);
    let s = [("sink", otlp.as_str())];
    assert_eq!(m.val("flowlens_sink_healthy", &s), 0.0);
    assert_eq!(m.val("flowlens_ready", &[]), 0.0);
    assert_eq!(m.val("flowlens_up", &[]), 1.0);
    assert_eq!(m.val("flowlens_sink_records_acknowledged_total", &s), 0.0);
    assert_eq!(
        m.get("flowlens_sink_last_export_timestamp_seconds", &s),
        None
    );
    assert_eq!(m.val("flowlens_flow_records_total", &[]), 1.0);

    // The receiver comes up on that port: the retry delivers, readiness recovers.
    let recv = LogsReceiver::default();
    let listener = b
        .run_in(move || std::net::TcpListener::bind(closed))
        .unwrap()
        .unwrap();
    let _otlp = recv.serve(listener).unwrap();
    wait_until(
        "/readyz 200 after recovery",
        Duration::from_secs(60),
        || (http(&b, addr, "GET", "/readyz").0 == 200).then_some(()),
    );
    let m = scrape(&b, addr);
    assert_eq!(m.val("flowlens_sink_records_acknowledged_total", &s), 1.0);
    assert!(m.val("flowlens_sink_records_retried_total", &s) >= 1.0);
    assert_eq!(m.val("flowlens_sink_healthy", &s), 1.0);
    assert_eq!(recv.records(), 1);
    let (ok, _) = fl.stop();
    assert!(ok, "flowlens failed");
}

/// A taken port is a one-line error before anything is attached; an address beyond loopback
/// is allowed with a warning.
#[test]
fn metrics_listen_errors_and_warnings() {
    let (_a, b, link) = quiet_hosts("mpt");
    let taken = b
        .run_in(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let port = taken.local_addr().unwrap().port();
    let o = b
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
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].starts_with("flowlens: error: --metrics-listen 127.0.0.1:")
            && lines[0].contains("in use"),
        "{err}"
    );
    assert!(!b.xdp_attached(&link.b_if).unwrap());
    drop(taken);

    let o = b
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
        .args(["--metrics-listen", "0.0.0.0:0", "--duration", "500ms"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("WARN") && err.contains("listens beyond loopback"),
        "{err}"
    );

    let o = b
        .command(FLOWLENS)
        .args(["run", "--metrics-listen", "eth0:80"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "clap usage error: {err}");
    assert!(
        err.contains("--metrics-listen") && err.contains("eth0:80"),
        "{err}"
    );
}

/// A kernel buffer too small for the traffic overflows at every drain: the evictions are
/// counted exactly in the metrics (keyed = drained + evicted, seen = frames captured), while the
/// repeating warning is logged once (rate-limited), not once per drain.
#[test]
fn evictions_are_counted_and_their_warning_rate_limited() {
    let (a, b, link) = quiet_hosts("evi");
    let fl = Flowlens::start(
        &b,
        &[
            "--xdp".into(),
            link.b_if.clone(),
            "--xdp-mode".into(),
            "skb".into(),
            "--drain-interval".into(),
            "300ms".into(),
            "--idle-timeout".into(),
            "500ms".into(),
            "--max-flows".into(),
            "8".into(),
            "--early-drain-fill".into(),
            "0".into(),
            "--sink".into(),
            "stdout".into(),
            "--metrics-listen".into(),
            "0".into(),
        ],
    );
    let addr = fl.metrics_addr();
    wait_until("/readyz 200", Duration::from_secs(20), || {
        (http(&b, addr, "GET", "/readyz").0 == 200).then_some(())
    });
    let cap = Capture::start(&b, &link.b_if).unwrap();
    let xdp = [("observation_point", "xdp")];
    let (src, dst) = (IpAddr::V4(link.a_v4), IpAddr::V4(link.b_v4));
    let mut sent = 0u32;
    let mut evicted_after = Vec::new();
    // Three rounds of 200 one-datagram flows, each round drained before the next.
    for round in 0..3u16 {
        for f in 0..200u16 {
            sent += udp_exchange(
                &a,
                &b,
                // A port of its own per flow: no socket is bound twice to one port.
                SocketAddr::new(src, 0),
                SocketAddr::new(dst, 20000 + round * 1000 + f),
                1,
                32,
            )
            .unwrap();
        }
        let before = evicted_after.last().copied().unwrap_or(0.0);
        let m = wait_until(
            "every packet of the round drained or evicted",
            Duration::from_secs(20),
            || {
                let m = scrape(&b, addr);
                let seen = m.val("flowlens_packets_seen_total", &xdp);
                (seen == sent as f64).then_some(m)
            },
        );
        let evicted = m.val("flowlens_packets_evicted_total", &xdp);
        assert!(
            evicted > before,
            "round {round}: no new evictions ({evicted})"
        );
        assert_eq!(
            m.val("flowlens_packets_keyed_total", &xdp),
            m.val("flowlens_drained_packets_total", &[]) + evicted,
            "keyed = drained + evicted"
        );
        evicted_after.push(evicted);
    }
    assert_eq!(sent, 600);
    let frames = cap.stop().unwrap();
    assert_eq!(frames.len(), 600, "captured frames");
    let m = scrape(&b, addr);
    assert_eq!(m.val("flowlens_packets_seen_total", &xdp), 600.0);
    assert_eq!(m.val("flowlens_packets_map_error_total", &xdp), 0.0);
    // Every record printed counts as delivered by the stdout sink.
    let stdout = [("sink", "stdout")];
    // Sinks write on their own threads: their counters reach the endpoint up to a cycle after
    // the records were made.
    let m = wait_until("every drained flow ended", Duration::from_secs(20), || {
        let m = scrape(&b, addr);
        (m.val("flowlens_flows_open", &[]) == 0.0
            && m.val("flowlens_flow_record_packets_total", &[])
                == m.val("flowlens_drained_packets_total", &[])
            && m.val("flowlens_sink_records_acknowledged_total", &stdout)
                == m.val("flowlens_flow_records_total", &[]))
        .then_some(m)
    });
    let records = m.val("flowlens_flow_records_total", &[]);
    assert!(records > 0.0);
    assert_eq!(m.val("flowlens_sink_records_sent_total", &stdout), records);
    assert_eq!(
        m.val("flowlens_sink_records_acknowledged_total", &stdout),
        records
    );
    let log = fl.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("kernel flow buffer overflowed between two drains"))
        .count();
    assert_eq!(
        warnings, 1,
        "one warning for three overflowing drains:\n{log}"
    );
    let (ok, log) = fl.stop();
    assert!(ok, "flowlens failed");
    // The shutdown summary still has every lost packet.
    let lost = format!("lost_packets={}", evicted_after[2] as u64);
    assert!(
        log.lines()
            .any(|l| l.contains("conservation:") && l.contains(&lost)),
        "{lost} in the shutdown summary:\n{log}"
    );
}

/// XDP and a netfilter hook at once: each observation point has its own series, and each
/// counts the traffic it saw (the same datagrams, once per point).
#[test]
fn metrics_per_observation_point() {
    let (a, b, link) = quiet_hosts("mop");
    let fl = Flowlens::start(
        &b,
        &[
            "--xdp".into(),
            link.b_if.clone(),
            "--xdp-mode".into(),
            "skb".into(),
            "--netfilter".into(),
            "local_in".into(),
            "--drain-interval".into(),
            "200ms".into(),
            "--sink".into(),
            "stdout".into(),
            "--metrics-listen".into(),
            "0".into(),
        ],
    );
    let addr = fl.metrics_addr();
    let body = wait_until("/readyz 200", Duration::from_secs(20), || {
        let (st, body) = http(&b, addr, "GET", "/readyz");
        (st == 200).then_some(body)
    });
    assert!(
        body.contains(&format!("xdp: {}", link.b_if)) && body.contains("netfilter: local_in"),
        "{body}"
    );
    let n = udp_exchange(
        &a,
        &b,
        SocketAddr::new(IpAddr::V4(link.a_v4), 32300),
        SocketAddr::new(IpAddr::V4(link.b_v4), 9403),
        30,
        200,
    )
    .unwrap();
    assert_eq!(n, 30);
    let m = wait_until("both points drained", Duration::from_secs(20), || {
        let m = scrape(&b, addr);
        let seen = |p| m.val("flowlens_packets_seen_total", &[("observation_point", p)]);
        (seen("xdp") >= 30.0 && seen("nf_local_in") >= 30.0).then_some(m)
    });
    // XDP on B's veth sees exactly the datagrams. local_in also sees every locally delivered
    // packet of the namespace, including the scrapes themselves over loopback: at least 30.
    let x = [("observation_point", "xdp")];
    let nf = [("observation_point", "nf_local_in")];
    assert_eq!(m.val("flowlens_packets_seen_total", &x), 30.0);
    assert_eq!(m.val("flowlens_packets_keyed_total", &x), 30.0);
    assert_eq!(m.val("flowlens_keyed_bytes_total", &x), 30.0 * 228.0);
    let nf_keyed = m.val("flowlens_packets_keyed_total", &nf);
    assert!(nf_keyed >= 30.0, "{nf_keyed}");
    assert!(m.val("flowlens_keyed_bytes_total", &nf) >= 30.0 * 228.0);
    assert_eq!(m.val("flowlens_packets_seen_total", &nf), nf_keyed);
    // The two points add up to what was drained (no eviction at this scale).
    assert_eq!(
        m.val("flowlens_drained_packets_total", &[]),
        30.0 + nf_keyed
    );
    assert_eq!(
        m.get(
            "flowlens_packets_seen_total",
            &[("observation_point", "nf_forward")]
        ),
        None
    );
    let (ok, _) = fl.stop();
    assert!(ok, "flowlens failed");
}
