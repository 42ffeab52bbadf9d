//! The metrics endpoint (`--metrics-listen`): Prometheus text exposition (format 0.0.4) on
//! `GET /metrics`, liveness on `GET /healthz`, readiness on `GET /readyz`.
//!
//! Data flows one way. The run loop owns the pipeline; once per drain cycle it copies the
//! pipeline's counters ([`RunStats`]: the [`Totals`], each sink's [`SinkMetrics`]) into a shared
//! [`Snapshot`] ([`Observer::cycle_end`]): one mutex lock and a few loads per cycle, nothing per
//! packet or per record. The HTTP server runs on its own thread and renders that snapshot on
//! each request, so a long drain never delays a scrape, and a scrape never delays a drain.
//!
//! * `/healthz`: 200 while the run loop makes progress (a drain cycle or a fill check started
//!   or ended within [`Observer::loop_stall`]), else 503.
//! * `/readyz`: 200 once the probes are attached, while the loop is live and every sink is
//!   healthy; else 503. A sink is unhealthy while it has lost or rejected records, or failed a
//!   write, within its stall window, or while it holds records waiting for delivery (queued,
//!   spooled or in flight) and none was acknowledged for its stall window
//!   (`--sink-stall-timeout`; Parquet sinks acknowledge when a file is completed, so their
//!   window adds `--parquet-rotate-interval`).
//!
//! The server is a small HTTP/1.1 responder on a std `TcpListener`: one request per
//! connection, request heads bounded to [`MAX_REQUEST`] bytes, read and write timeouts, at most
//! [`MAX_CONNECTIONS`] served at once (the rest get 503).

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use flowlens_schema::{record::observation_point_name, stats};
use flowlens_sinks::SinkMetrics;

use crate::stats::{Accounting, RunStats, Totals};

/// The port a bare `--metrics-listen` address without one would use (OpenTelemetry's
/// Prometheus exporter default; documented, never bound unless asked).
pub const DEFAULT_PORT: u16 = 9464;
/// Request heads larger than this are refused (431).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more get an immediate 503.
pub const MAX_CONNECTIONS: usize = 16;
/// Read and write timeout of one connection.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bounds (seconds) of the drain duration histogram.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--metrics-listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--metrics-listen: reading the bound address: {0}")]
    LocalAddr(std::io::Error),
    #[error("starting the metrics server thread: {0}")]
    Thread(std::io::Error),
}

/// Parses `--metrics-listen`: `PORT` or `:PORT` (loopback, 127.0.0.1), `IPV4:PORT`,
/// `[IPV6]:PORT` or `localhost:PORT`. Port 0 picks a free port (logged at start).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let hint = "expected PORT, IP:PORT or [IPV6]:PORT, e.g. 127.0.0.1:9464";
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port = port
            .parse::<u16>()
            .map_err(|e| format!("{s:?}: port {port:?}: {e}"))?;
        return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not a listen address ({hint})"))
}

/// Binds the endpoint's socket (before anything is attached, so a taken port is an early
/// one-line error). A non-loopback address is allowed but logged as a warning.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    let l = TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the metrics endpoint listens beyond loopback: anyone who can reach this address can read flowlens' counters and health"
        );
    }
    Ok(l)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Health of one sink, derived from its counters cycle by cycle.
#[derive(Debug, Clone)]
struct SinkState {
    name: String,
    /// Stall window: see the module documentation.
    window: Duration,
    m: SinkMetrics,
    /// `write`/`tick` calls that failed, and the records of failed writes (lost for this sink).
    errors: u64,
    write_lost: u64,
    last_ack_unix: Option<f64>,
    /// Last cycle at which the sink acknowledged something or had nothing waiting.
    progress_at: Instant,
    /// Last cycle at which it lost or rejected records or failed a call, and what happened.
    bad: Option<(Instant, String)>,
}

impl SinkState {
    fn waiting(m: &SinkMetrics) -> u64 {
        let in_flight = m.sent.saturating_sub(m.acknowledged + m.rejected + m.lost);
        (m.queued + m.spooled).max(in_flight)
    }

    fn update(&mut self, m: SinkMetrics, errors: u64, write_lost: u64, now: Instant) {
        let p = self.m;
        if m.acknowledged > p.acknowledged {
            self.last_ack_unix = Some(unix_now());
        }
        if m.acknowledged > p.acknowledged || Self::waiting(&m) == 0 {
            self.progress_at = now;
        }
        let lost = (m.lost + write_lost).saturating_sub(p.lost + self.write_lost);
        let rejected = m.rejected.saturating_sub(p.rejected);
        let failed = errors.saturating_sub(self.errors);
        if lost + rejected + failed > 0 {
            self.bad = Some((
                now,
                format!("{lost} records lost, {rejected} rejected, {failed} failed calls"),
            ));
        }
        self.m = m;
        self.errors = errors;
        self.write_lost = write_lost;
    }

    /// `None`: healthy; else why not.
    fn problem(&self, now: Instant) -> Option<String> {
        if let Some((at, what)) = &self.bad {
            let ago = now.saturating_duration_since(*at);
            if ago < self.window {
                return Some(format!("{what} {:.1}s ago", ago.as_secs_f64()));
            }
        }
        let waiting = Self::waiting(&self.m);
        let stalled = now.saturating_duration_since(self.progress_at);
        if waiting > 0 && stalled >= self.window {
            return Some(format!(
                "{waiting} records waiting, none acknowledged for {:.1}s",
                stalled.as_secs_f64()
            ));
        }
        None
    }
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket of [`BUCKETS`], then +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
    }
}

/// What the endpoint serves, as of the last cycle.
#[derive(Debug, Clone)]
struct Snapshot {
    /// What is attached (e.g. `xdp: eth0; netfilter: forward`); `None` until attached.
    attached: Option<String>,
    stopping: bool,
    totals: Totals,
    /// Observation points in use (always exported, even at zero).
    points: Vec<u8>,
    flows_in_table: u64,
    max_flows: u64,
    /// New flows in the active kernel buffer at the last fill check.
    fill: Option<u64>,
    drain_seconds: Histogram,
    sinks: Vec<SinkState>,
    last_cycle_unix: Option<f64>,
}

struct State {
    start: Instant,
    start_unix: f64,
    loop_stall: Duration,
    /// Milliseconds since `start` of the loop's last sign of life.
    alive_ms: AtomicU64,
    snap: Mutex<Snapshot>,
}

impl State {
    fn mark_alive(&self) {
        self.alive_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    fn since_alive(&self, now: Instant) -> Duration {
        let at = self.start + Duration::from_millis(self.alive_ms.load(Relaxed));
        now.saturating_duration_since(at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        // A panic while holding the lock leaves plain counters behind: still worth serving.
        self.snap.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The run loop's handle on the endpoint's state.
#[derive(Clone)]
pub struct Observer {
    state: Arc<State>,
}

/// One sink as the observer sees it: its name and stall window.
pub struct SinkInfo {
    pub name: String,
    pub stall_window: Duration,
}

impl Observer {
    /// `points`: observation points in use; `loop_stall`: how long the loop may show no sign of
    /// life before `/healthz` fails.
    pub fn new(
        points: Vec<u8>,
        max_flows: u32,
        loop_stall: Duration,
        sinks: Vec<SinkInfo>,
    ) -> Self {
        let now = Instant::now();
        let sinks = sinks
            .into_iter()
            .map(|s| SinkState {
                name: s.name,
                window: s.stall_window,
                m: SinkMetrics::default(),
                errors: 0,
                write_lost: 0,
                last_ack_unix: None,
                progress_at: now,
                bad: None,
            })
            .collect();
        Observer {
            state: Arc::new(State {
                start: now,
                start_unix: unix_now(),
                loop_stall,
                alive_ms: AtomicU64::new(0),
                snap: Mutex::new(Snapshot {
                    attached: None,
                    stopping: false,
                    totals: Totals::default(),
                    points,
                    flows_in_table: 0,
                    max_flows: max_flows as u64,
                    fill: None,
                    drain_seconds: Histogram::default(),
                    sinks,
                    last_cycle_unix: None,
                }),
            }),
        }
    }

    /// `/healthz` fails after this long without a sign of life from the run loop: three drain
    /// intervals, and never less than 30 s (a large drain or a slow sink call is not a hang).
    pub fn loop_stall(drain_interval: Duration) -> Duration {
        (drain_interval * 3).max(Duration::from_secs(30))
    }

    /// The probes are attached: `/readyz` can succeed from now on.
    pub fn attached(&self, what: String) {
        self.state.lock().attached = Some(what);
        self.state.mark_alive();
    }

    /// Shutdown began: `/readyz` fails from now on (`/healthz` stays up until exit).
    pub fn stopping(&self) {
        self.state.lock().stopping = true;
    }

    /// A drain cycle starts (a sign of life; no lock).
    pub fn cycle_start(&self) {
        self.state.mark_alive();
    }

    /// A drain cycle ended after `took`: copies the pipeline's counters.
    pub fn cycle_end(&self, run: &dyn RunStats, took: Duration) {
        let now = Instant::now();
        let sinks = run.sink_stats();
        {
            let mut s = self.state.lock();
            s.totals = *run.totals();
            s.flows_in_table = run.flows_in_table();
            s.drain_seconds.observe(took.as_secs_f64());
            s.last_cycle_unix = Some(unix_now());
            for (st, (m, f)) in s.sinks.iter_mut().zip(sinks) {
                st.update(m, f.errors, f.records_lost, now);
            }
        }
        self.state.mark_alive();
    }

    /// The fill check read `inserted` new flows in the active kernel buffer.
    pub fn fill(&self, inserted: u64) {
        self.state.lock().fill = Some(inserted);
        self.state.mark_alive();
    }

    /// Starts serving on `listener` (from [`bind`]) until the returned server is dropped.
    pub fn serve(&self, listener: TcpListener) -> Result<Server, MetricsError> {
        let addr = listener.local_addr().map_err(MetricsError::LocalAddr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let state = self.state.clone();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("flowlens-metrics".into())
            .spawn(move || accept_loop(listener, state, stop2))
            .map_err(MetricsError::Thread)?;
        tracing::info!(%addr, "metrics endpoint listening (GET /metrics, /healthz, /readyz)");
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The body `GET /metrics` would serve now (benchmarks).
    pub fn render_metrics(&self) -> String {
        render(&self.state, Instant::now())
    }

    /// Renders the response to `GET path` (status, content type, body) as of now.
    #[cfg(test)]
    fn respond(&self, path: &str) -> (u16, &'static str, String) {
        respond(&self.state, path, Instant::now())
    }
}

/// The running endpoint; dropping it stops the server thread.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // Wake the blocking accept with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut errors = flowlens_sinks::log_limit::RateLimited::default();
    for conn in listener.incoming() {
        if stop.load(Relaxed) {
            return;
        }
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                if let Some(suppressed) = errors.check() {
                    tracing::warn!(error = %e, suppressed, "metrics endpoint: accept failed");
                }
                // EMFILE and the like: do not spin.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
        let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
        if active.fetch_add(1, Relaxed) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Relaxed);
            let _ = write_response(
                &mut conn,
                503,
                "text/plain",
                "too many connections\n",
                false,
            );
            continue;
        }
        let (st, act) = (state.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("flowlens-metrics-conn".into())
            .spawn(move || {
                serve_conn(conn, &st);
                act.fetch_sub(1, Relaxed);
            });
        if spawned.is_err() {
            // The connection was moved into the closure and dropped: the client sees a reset.
            active.fetch_sub(1, Relaxed);
        }
    }
}

/// Reads one request head (bounded), answers it and closes the connection.
fn serve_conn(mut conn: TcpStream, state: &State) {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            let _ = write_response(
                &mut conn,
                431,
                "text/plain",
                "request head too large\n",
                false,
            );
            return;
        }
        if Instant::now() >= deadline {
            return;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        let _ = write_response(&mut conn, 400, "text/plain", "bad request\n", false);
        return;
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        let _ = write_response(&mut conn, 400, "text/plain", "bad request\n", false);
        return;
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let _ = write_response(&mut conn, 405, "text/plain", "only GET and HEAD\n", false);
        return;
    }
    let path = target.split('?').next().unwrap_or_default();
    let (status, ctype, body) = respond(state, path, Instant::now());
    let _ = write_response(&mut conn, status, ctype, &body, head_only);
}

fn write_response(
    conn: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    conn.write_all(out.as_bytes())?;
    conn.flush()
}

const TEXT: &str = "text/plain; charset=utf-8";
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

fn respond(state: &State, path: &str, now: Instant) -> (u16, &'static str, String) {
    match path {
        "/metrics" => (200, EXPOSITION, render(state, now)),
        "/healthz" => match liveness(state, now) {
            Ok(()) => (200, TEXT, "ok: run loop live\n".into()),
            Err(e) => (503, TEXT, format!("unhealthy: {e}\n")),
        },
        "/readyz" => {
            let (ok, text) = readiness(state, now);
            (if ok { 200 } else { 503 }, TEXT, text)
        }
        _ => (
            404,
            TEXT,
            "not found (try /metrics, /healthz or /readyz)\n".into(),
        ),
    }
}

fn liveness(state: &State, now: Instant) -> Result<(), String> {
    let quiet = state.since_alive(now);
    if quiet > state.loop_stall {
        return Err(format!(
            "run loop silent for {:.1}s (limit {:.0}s)",
            quiet.as_secs_f64(),
            state.loop_stall.as_secs_f64()
        ));
    }
    Ok(())
}

/// `(ready, body)`: the body names what is ready or what is not.
fn readiness(state: &State, now: Instant) -> (bool, String) {
    let live = liveness(state, now);
    let s = state.lock();
    let mut not = Vec::new();
    let mut ok = Vec::new();
    match &s.attached {
        Some(a) => ok.push(format!("probes attached ({a})")),
        None => not.push("probes not attached yet".to_string()),
    }
    if s.stopping {
        not.push("shutting down".into());
    }
    if let Err(e) = live {
        not.push(e);
    }
    for sink in &s.sinks {
        match sink.problem(now) {
            None => ok.push(format!("sink {}", sink.name)),
            Some(p) => not.push(format!("sink {}: {p}", sink.name)),
        }
    }
    if !not.is_empty() {
        (false, format!("not ready: {}\n", not.join("; ")))
    } else {
        (true, format!("ready: {}\n", ok.join("; ")))
    }
}

/// Escapes a label value (exposition format: backslash, double quote, newline).
fn label(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", label(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }
    /// One family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
}

/// Prometheus text exposition of the snapshot.
fn render(state: &State, now: Instant) -> String {
    let alive = liveness(state, now).is_ok();
    let (ready, _) = readiness(state, now);
    let s = state.lock().clone();
    let mut o = Out(String::with_capacity(8192));
    o.family(
        "flowlens_build_info",
        "gauge",
        "Always 1; the labels name the flowlens version.",
    );
    o.sample(
        "flowlens_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    o.single(
        "flowlens_start_time_seconds",
        "gauge",
        "When flowlens started (unix seconds).",
        s_f(state.start_unix),
    );
    o.single(
        "flowlens_up",
        "gauge",
        "1 while the run loop is live (as /healthz).",
        u8::from(alive),
    );
    o.single(
        "flowlens_ready",
        "gauge",
        "1 while probes are attached and every sink is healthy (as /readyz).",
        u8::from(ready),
    );

    // Per observation point: the probe's own counters, as of the last drain.
    let t = &s.totals;
    let mut points = s.points.clone();
    for (p, a) in t.per_observation_point.iter().enumerate() {
        if a.seen_packets > 0 && !points.contains(&(p as u8)) {
            points.push(p as u8);
        }
    }
    points.sort_unstable();
    type PointField = fn(&Accounting) -> u64;
    let per_point: [(&str, &str, PointField); 9] = [
        (
            "flowlens_packets_seen_total",
            "Packets the probe saw (every packet passes; counted at each drain).",
            |a| a.seen_packets,
        ),
        (
            "flowlens_packets_non_ip_total",
            "Packets that were neither IPv4 nor IPv6 (not keyed).",
            |a| a.non_ip_packets,
        ),
        (
            "flowlens_packets_unparsed_total",
            "IP packets whose headers could not be parsed (truncated, bogus lengths; not keyed).",
            |a| a.unparsed_packets,
        ),
        (
            "flowlens_packets_keyed_total",
            "Packets counted into a flow of the kernel buffer.",
            |a| a.keyed_packets,
        ),
        (
            "flowlens_keyed_bytes_total",
            "IP-layer bytes of the keyed packets.",
            |a| a.keyed_bytes,
        ),
        (
            "flowlens_packets_evicted_total",
            "Keyed packets lost because the kernel LRU evicted their flow before a drain.",
            |a| a.evicted_packets,
        ),
        (
            "flowlens_evicted_bytes_total",
            "IP-layer bytes of the evicted packets.",
            |a| a.evicted_bytes,
        ),
        (
            "flowlens_packets_map_error_total",
            "Packets lost because the kernel refused to insert their flow.",
            |a| a.map_error_packets,
        ),
        (
            "flowlens_flows_created_total",
            "Flow entries the probe created in the kernel buffers.",
            |a| a.new_flows,
        ),
    ];
    for (name, help, f) in per_point {
        o.family(name, "counter", help);
        for &p in &points {
            let a = t.per_observation_point[p as usize % stats::OBS_SLOTS as usize];
            o.sample(
                name,
                &[("observation_point", observation_point_name(p))],
                f(&a),
            );
        }
    }
    o.single(
        "flowlens_drained_packets_total",
        "counter",
        "Packets moved out of the kernel buffers into the flow table.",
        t.drained_packets,
    );
    o.single(
        "flowlens_drained_bytes_total",
        "counter",
        "IP-layer bytes moved out of the kernel buffers into the flow table.",
        t.drained_bytes,
    );
    o.single(
        "flowlens_flow_records_total",
        "counter",
        "Flow records exported (handed to every sink).",
        t.records,
    );
    o.single(
        "flowlens_flow_record_packets_total",
        "counter",
        "Packets in the exported flow records.",
        t.packets,
    );
    o.single(
        "flowlens_flow_record_bytes_total",
        "counter",
        "IP-layer bytes in the exported flow records.",
        t.bytes,
    );
    o.single(
        "flowlens_flows_open",
        "gauge",
        "Flows in the user-space flow table (not yet ended).",
        s.flows_in_table,
    );
    o.single(
        "flowlens_flows_ended_lack_of_resources_total",
        "counter",
        "Flow records ended early (flowEndReason lack_of_resources) because the flow table was at its --max-memory cap; their packets are in them.",
        t.flows_ended_lack_of_resources,
    );
    o.single(
        "flowlens_drains_total",
        "counter",
        "Drains of the kernel flow buffer (timer and early).",
        t.drains,
    );
    o.single(
        "flowlens_early_drains_total",
        "counter",
        "Drains started before the interval because the kernel buffer was filling up.",
        t.early_drains,
    );
    o.single(
        "flowlens_drain_failures_total",
        "counter",
        "Drains of the kernel flow buffer that failed (a bpf() call returned an error); what they did not move stays in the kernel map for a later drain.",
        t.drain_failures,
    );
    o.family(
        "flowlens_drain_duration_seconds",
        "histogram",
        "One drain cycle: kernel drain, flow table merge and expiry, records handed to the sinks.",
    );
    let mut cum = 0;
    for (i, b) in BUCKETS.iter().enumerate() {
        cum += s.drain_seconds.counts[i];
        o.sample(
            "flowlens_drain_duration_seconds_bucket",
            &[("le", &b.to_string())],
            cum,
        );
    }
    cum += s.drain_seconds.counts[BUCKETS.len()];
    o.sample(
        "flowlens_drain_duration_seconds_bucket",
        &[("le", "+Inf")],
        cum,
    );
    o.sample(
        "flowlens_drain_duration_seconds_sum",
        &[],
        s_f(s.drain_seconds.sum),
    );
    o.sample("flowlens_drain_duration_seconds_count", &[], cum);
    if let Some(at) = s.last_cycle_unix {
        o.single(
            "flowlens_last_drain_timestamp_seconds",
            "gauge",
            "When the last drain cycle ended (unix seconds).",
            s_f(at),
        );
    }
    o.single(
        "flowlens_flow_map_max_flows",
        "gauge",
        "Capacity of each kernel flow buffer (--max-flows).",
        s.max_flows,
    );
    if let Some(inserted) = s.fill {
        o.single(
            "flowlens_flow_map_fill_ratio",
            "gauge",
            "New flows in the active kernel buffer / --max-flows, at the last fill check.",
            s_f(inserted as f64 / s.max_flows.max(1) as f64),
        );
    }

    type SinkField = fn(&SinkState) -> u64;
    let sink_families: [(&str, &str, &str, SinkField); 11] = [
        (
            "flowlens_sink_records_sent_total",
            "counter",
            "Records handed to the destination.",
            |x| x.m.sent,
        ),
        (
            "flowlens_sink_records_acknowledged_total",
            "counter",
            "Records the destination confirmed durable.",
            |x| x.m.acknowledged,
        ),
        (
            "flowlens_sink_records_retried_total",
            "counter",
            "Records re-sent after a retryable failure (once per retry).",
            |x| x.m.retried,
        ),
        (
            "flowlens_sink_records_rejected_total",
            "counter",
            "Records the destination refused for good.",
            |x| x.m.rejected,
        ),
        (
            "flowlens_sink_records_lost_total",
            "counter",
            "Records the sink accepted but could not deliver, plus records of failed writes.",
            |x| x.m.lost + x.write_lost,
        ),
        (
            "flowlens_sink_records_dropped_total",
            "counter",
            "Records dropped because the sink fell behind the record rate (its thread's queue full; also in records_lost).",
            |x| x.m.dropped,
        ),
        (
            "flowlens_sink_errors_total",
            "counter",
            "Sink calls (write, tick) that returned an error.",
            |x| x.errors,
        ),
        (
            "flowlens_sink_records_queued",
            "gauge",
            "Records waiting in memory for delivery.",
            |x| x.m.queued,
        ),
        (
            "flowlens_sink_records_spooled",
            "gauge",
            "Records waiting in the on-disk spool.",
            |x| x.m.spooled,
        ),
        (
            "flowlens_sink_spool_bytes",
            "gauge",
            "Size of the on-disk spool.",
            |x| x.m.spool_bytes,
        ),
        (
            "flowlens_sink_stall_window_seconds",
            "gauge",
            "How long the sink may hold records without an acknowledgement before it is reported unhealthy.",
            |x| x.window.as_secs(),
        ),
    ];
    for (name, kind, help, f) in sink_families {
        o.family(name, kind, help);
        for x in &s.sinks {
            o.sample(name, &[("sink", &x.name)], f(x));
        }
    }
    o.family(
        "flowlens_sink_healthy",
        "gauge",
        "1 while the sink is healthy (see /readyz).",
    );
    for x in &s.sinks {
        let healthy = u8::from(x.problem(now).is_none());
        o.sample("flowlens_sink_healthy", &[("sink", &x.name)], healthy);
    }
    o.family(
        "flowlens_sink_last_export_timestamp_seconds",
        "gauge",
        "When the sink's acknowledged count last grew (unix seconds; absent until the first).",
    );
    for x in &s.sinks {
        if let Some(at) = x.last_ack_unix {
            o.sample(
                "flowlens_sink_last_export_timestamp_seconds",
                &[("sink", &x.name)],
                s_f(at),
            );
        }
    }
    o.0
}

/// A float sample value (never in exponent form; integers without a fraction).
fn s_f(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_finite() {
        format!("{v:.6}")
    } else {
        "NaN".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(name: &str, window: u64) -> SinkInfo {
        SinkInfo {
            name: name.into(),
            stall_window: Duration::from_secs(window),
        }
    }

    #[test]
    fn listen_addresses() {
        let lo = |p| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p);
        assert_eq!(parse_listen("9464"), Ok(lo(9464)));
        assert_eq!(parse_listen(":0"), Ok(lo(0)));
        assert_eq!(parse_listen("localhost:9100"), Ok(lo(9100)));
        assert_eq!(
            parse_listen("0.0.0.0:9464").unwrap().to_string(),
            "0.0.0.0:9464"
        );
        assert_eq!(parse_listen("[::1]:1").unwrap().to_string(), "[::1]:1");
        for bad in [
            "",
            "abc",
            "127.0.0.1",
            "127.0.0.1:70000",
            "host:1",
            "localhost:x",
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn sink_health_follows_progress_and_losses() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut st = SinkState {
            name: "x".into(),
            window: Duration::from_secs(10),
            m: SinkMetrics::default(),
            errors: 0,
            write_lost: 0,
            last_ack_unix: None,
            progress_at: t0,
            bad: None,
        };
        // Records waiting but acknowledged in time: healthy.
        let mut m = SinkMetrics {
            sent: 10,
            queued: 10,
            ..Default::default()
        };
        st.update(m, 0, 0, t0 + s);
        assert_eq!(st.problem(t0 + s * 9), None);
        m.acknowledged = 10;
        m.queued = 0;
        st.update(m, 0, 0, t0 + s * 9);
        assert!(st.last_ack_unix.is_some());
        assert_eq!(st.problem(t0 + s * 30), None, "nothing waiting");
        st.update(m, 0, 0, t0 + s * 30);
        // New records that are never acknowledged: unhealthy once the window has passed.
        m.sent = 20;
        m.queued = 10;
        st.update(m, 0, 0, t0 + s * 31);
        st.update(m, 0, 0, t0 + s * 35);
        assert_eq!(st.problem(t0 + s * 36), None);
        let p = st.problem(t0 + s * 41).unwrap();
        assert!(p.contains("10 records waiting"), "{p}");
        // Progress again: healthy.
        m.acknowledged = 20;
        m.queued = 0;
        st.update(m, 0, 0, t0 + s * 42);
        assert_eq!(st.problem(t0 + s * 42), None);
        // Losses (sink counters or failed writes) make it unhealthy for one window.
        st.update(m, 1, 5, t0 + s * 50);
        let p = st.problem(t0 + s * 51).unwrap();
        assert!(
            p.contains("5 records lost") && p.contains("1 failed"),
            "{p}"
        );
        assert_eq!(st.problem(t0 + s * 61), None);
        m.rejected = 2;
        st.update(m, 1, 5, t0 + s * 70);
        assert!(st.problem(t0 + s * 71).unwrap().contains("2 rejected"));
    }

    #[test]
    fn endpoints_answer_from_the_snapshot() {
        let obs = Observer::new(
            vec![flowlens_schema::OBS_XDP],
            1000,
            Duration::from_secs(30),
            vec![sink("parquet:/tmp/a \"b\"", 60)],
        );
        let (code, _, body) = obs.respond("/readyz");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("probes not attached"), "{body}");
        obs.attached("xdp: veth0".into());
        let (code, _, body) = obs.respond("/readyz");
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("veth0") && body.contains("sink parquet:"),
            "{body}"
        );
        assert_eq!(obs.respond("/healthz").0, 200);
        assert_eq!(obs.respond("/nope").0, 404);
        let (code, ctype, text) = obs.respond("/metrics");
        assert_eq!((code, ctype), (200, EXPOSITION));
        assert!(text.contains("flowlens_packets_seen_total{observation_point=\"xdp\"} 0\n"));
        assert!(text.contains("flowlens_sink_healthy{sink=\"parquet:/tmp/a \\\"b\\\"\"} 1\n"));
        assert!(text.contains("flowlens_drain_duration_seconds_bucket{le=\"+Inf\"} 0\n"));
        obs.stopping();
        let (code, _, body) = obs.respond("/readyz");
        assert_eq!(code, 503);
        assert!(body.contains("shutting down"), "{body}");
    }

    #[test]
    fn healthz_fails_when_the_loop_goes_silent() {
        let obs = Observer::new(Vec::new(), 1, Duration::from_millis(50), Vec::new());
        obs.cycle_start();
        assert_eq!(obs.respond("/healthz").0, 200);
        std::thread::sleep(Duration::from_millis(120));
        let (code, _, body) = obs.respond("/healthz");
        assert_eq!(code, 503);
        assert!(body.contains("run loop silent"), "{body}");
        assert!(obs.respond("/metrics").2.contains("flowlens_up 0\n"));
        obs.cycle_start();
        assert_eq!(obs.respond("/healthz").0, 200);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        for s in [0.0005, 0.003, 0.003, 0.7, 9.0] {
            h.observe(s);
        }
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[2], 2);
        assert_eq!(h.counts[BUCKETS.len()], 1);
        assert!((h.sum - 9.7065).abs() < 1e-9);
    }
}
