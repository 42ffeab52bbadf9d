//! An in-test Kubernetes API server (issue 13): the list/watch protocol of the real one, on
//! loopback, over plain HTTP/1.1, for the resources flowlens watches (pods, services and nodes
//! in `core/v1`, replicasets in `apps/v1`, jobs in `batch/v1`). Driven by the real `kube`
//! client in the tests; no Kubernetes binary exists on these machines.
//!
//! What it implements, as the API server does:
//! * one cluster-wide `resourceVersion` counter, bumped by every change; each object carries
//!   the version of its last change;
//! * `GET /api/v1/pods?limit=N&continue=T`: chunked lists (`metadata.continue` while more
//!   remain, `metadata.resourceVersion` = the list's snapshot version; later pages come from
//!   the same snapshot). A continue token that expired ([`KubeApi::expire_continue_tokens`])
//!   answers `410 Gone` with a `Status` of reason `Expired`, as etcd compaction does;
//! * `?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=S`: a chunked
//!   stream of `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK","object":...}` lines, starting
//!   with every change after `N`; `BOOKMARK`s carry the current version; the stream ends
//!   after `timeoutSeconds`. A version older than the compaction point
//!   ([`KubeApi::expire_watches`]) gets one `ERROR` event with a `Status` of code 410 and the
//!   stream ends, which makes a client relist;
//! * `namespaces/<ns>/` paths and `fieldSelector=spec.nodeName=<node>` for pods;
//! * faults: [`KubeApi::set_delay`] (every response waits), [`KubeApi::drop_connections`]
//!   (open streams end without their final chunk), [`KubeApi::set_down`] (the listener is
//!   closed: connection refused; back up on the same port).
//!
//! [`KubeApi::requests`] logs every request line for the tests' assertions.

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::FromRawFd,
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

/// A resource the server serves: (plural, group path, kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Res {
    Pods,
    Services,
    Nodes,
    ReplicaSets,
    Jobs,
}

impl Res {
    const ALL: [Res; 5] = [
        Res::Pods,
        Res::Services,
        Res::Nodes,
        Res::ReplicaSets,
        Res::Jobs,
    ];
    fn plural(self) -> &'static str {
        match self {
            Res::Pods => "pods",
            Res::Services => "services",
            Res::Nodes => "nodes",
            Res::ReplicaSets => "replicasets",
            Res::Jobs => "jobs",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Res::Pods | Res::Services | Res::Nodes => "/api/v1",
            Res::ReplicaSets => "/apis/apps/v1",
            Res::Jobs => "/apis/batch/v1",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Res::Pods | Res::Services | Res::Nodes => "v1",
            Res::ReplicaSets => "apps/v1",
            Res::Jobs => "batch/v1",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Res::Pods => "Pod",
            Res::Services => "Service",
            Res::Nodes => "Node",
            Res::ReplicaSets => "ReplicaSet",
            Res::Jobs => "Job",
        }
    }
}

struct Change {
    rv: u64,
    res: Res,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (resource, namespace, name) → object.
    objects: BTreeMap<(Res, String, String), Value>,
    log: Vec<Change>,
    /// Watches from a version below this get 410.
    compacted: u64,
    /// Continue token → remaining items of the list snapshot and its version.
    pages: HashMap<String, (Vec<Value>, u64)>,
    next_token: u64,
    /// Bumped to end every open connection.
    generation: u64,
    /// Bumped to send 410 on every open watch.
    expiry: u64,
    delay: Duration,
    down: bool,
    requests: Vec<String>,
    uid: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    bookmark_every: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The server (stops its listener on drop; open connection threads end at their next wake-up).
pub struct KubeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// The network namespace the listener lives in (`None`: the caller's).
    netns: Option<std::path::PathBuf>,
    listener_stop: Arc<Mutex<Option<Arc<std::sync::atomic::AtomicBool>>>>,
}

impl KubeApi {
    /// Starts on a free loopback port; bookmarks every 500 ms on watches that ask for them.
    pub fn start() -> KubeApi {
        Self::start_with(Duration::from_millis(500))
    }

    /// Starts on a free loopback port of network namespace `ns` (for a flowlens that runs in
    /// it); brought back up there too.
    pub fn start_in(ns: &crate::Netns) -> KubeApi {
        Self::start_at(Duration::from_millis(500), Some(ns.path()))
    }

    pub fn start_with(bookmark_every: Duration) -> KubeApi {
        Self::start_at(bookmark_every, None)
    }

    fn start_at(bookmark_every: Duration, netns: Option<std::path::PathBuf>) -> KubeApi {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1000,
                ..Default::default()
            }),
            changed: Condvar::new(),
            bookmark_every,
        });
        let listener = listen_in(netns.as_deref(), 0).expect("bind the test API server");
        let addr = listener.local_addr().unwrap();
        let api = KubeApi {
            shared,
            addr,
            netns,
            listener_stop: Arc::new(Mutex::new(None)),
        };
        api.serve(listener);
        api
    }

    fn serve(&self, listener: TcpListener) {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        *self.listener_stop.lock().unwrap() = Some(stop.clone());
        let shared = self.shared.clone();
        listener.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let shared = shared.clone();
                        thread::spawn(move || connection(shared, s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
    }

    fn stop_listener(&self) {
        if let Some(s) = self.listener_stop.lock().unwrap().take() {
            s.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        thread::sleep(Duration::from_millis(20)); // the accept loop notices and drops the socket
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at this server (no credentials) to `path`.
    pub fn write_kubeconfig(&self, path: &Path) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
                 contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
                 current-context: test\nusers:\n- name: test\n  user: {{}}\n",
                self.url()
            ),
        )
        .expect("write kubeconfig");
    }

    /// Creates or replaces an object (ADDED or MODIFIED). Fills `metadata.uid` (if missing),
    /// `metadata.creationTimestamp` (now, if missing) and `metadata.resourceVersion`.
    pub fn apply(&self, res: Res, mut object: Value) -> Value {
        let mut st = self.shared.lock();
        st.rv += 1;
        st.uid += 1;
        let rv = st.rv;
        let uid = st.uid;
        let md = object["metadata"].as_object_mut().expect("metadata");
        md.entry("namespace").or_insert_with(|| json!(""));
        if res == Res::Nodes {
            md.remove("namespace");
        }
        md.entry("uid")
            .or_insert_with(|| json!(format!("00000000-0000-4000-8000-{uid:012}")));
        md.entry("creationTimestamp")
            .or_insert_with(|| json!(rfc3339(SystemTime::now())));
        md.insert("resourceVersion".into(), json!(rv.to_string()));
        let ns = md
            .get("namespace")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let name = md["name"].as_str().expect("metadata.name").to_string();
        let o = object.as_object_mut().unwrap();
        o.insert("kind".into(), json!(res.kind()));
        o.insert("apiVersion".into(), json!(res.api_version()));
        let kind = if st.objects.insert((res, ns, name), object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.log.push(Change {
            rv,
            res,
            kind,
            object: object.clone(),
        });
        drop(st);
        self.shared.changed.notify_all();
        object
    }

    /// Deletes an object (DELETED, with the object at a new version). False if absent.
    pub fn delete(&self, res: Res, namespace: &str, name: &str) -> bool {
        let mut st = self.shared.lock();
        let ns = if res == Res::Nodes { "" } else { namespace };
        let Some(mut object) = st.objects.remove(&(res, ns.to_string(), name.to_string())) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.log.push(Change {
            rv,
            res,
            kind: "DELETED",
            object,
        });
        drop(st);
        self.shared.changed.notify_all();
        true
    }

    /// Compacts the history: watches resuming from any version before now get 410 Gone, and
    /// every open watch gets a 410 `ERROR` event and ends (the client must relist).
    pub fn expire_watches(&self) {
        let mut st = self.shared.lock();
        st.compacted = st.rv + 1;
        st.expiry += 1;
        st.log.clear();
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Continue tokens handed out so far answer 410 Gone (`Expired`).
    pub fn expire_continue_tokens(&self) {
        self.shared.lock().pages.clear();
    }

    /// Every open connection ends abruptly (no final chunk).
    pub fn drop_connections(&self) {
        self.shared.lock().generation += 1;
        self.shared.changed.notify_all();
    }

    /// Every response waits `d` before its first byte.
    pub fn set_delay(&self, d: Duration) {
        self.shared.lock().delay = d;
    }

    /// Down: the listener is closed (connection refused) and open connections end. Up: the
    /// listener is back on the same port.
    pub fn set_down(&self, down: bool) {
        let was = std::mem::replace(&mut self.shared.lock().down, down);
        if down && !was {
            self.stop_listener();
            self.drop_connections();
        } else if !down && was {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match listen_in(self.netns.as_deref(), self.addr.port()) {
                    Ok(l) => {
                        self.serve(l);
                        break;
                    }
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("rebinding the test API server: {e}"),
                }
            }
        }
    }

    /// Request lines received so far (`GET /api/v1/pods?limit=500 ...`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop_listener();
        self.drop_connections();
    }
}

/// [`listen`] from a thread that entered network namespace `netns` (the socket stays there).
fn listen_in(netns: Option<&Path>, port: u16) -> std::io::Result<TcpListener> {
    let Some(ns) = netns else {
        return listen(port);
    };
    let f = std::fs::File::open(ns)?;
    thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on an fd we own, on this short-lived thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        listen(port)
    })
    .join()
    .expect("listen thread")
}

/// A loopback listener with SO_REUSEADDR (so a server brought back up gets its port again
/// while its old connections are in TIME_WAIT).
fn listen(port: u16) -> std::io::Result<TcpListener> {
    // SAFETY: plain socket calls on a new fd we own; the sockaddr is fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        );
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        if libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        ) != 0
            || libc::listen(fd, 128) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpListener::from_raw_fd(fd))
    }
}

/// RFC 3339 in UTC with seconds, as the API server writes `creationTimestamp`.
pub fn rfc3339(t: SystemTime) -> String {
    let s = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (s.div_euclid(86_400), s.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

struct Request {
    path: String,
    query: HashMap<String, String>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, Request)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let line = line.trim_end().to_string();
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    if content_length > 0 {
        let mut body = vec![0; content_length];
        r.read_exact(&mut body).ok()?;
    }
    let target = line.split(' ').nth(1)?.to_string();
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (unescape(k), unescape(v))
        })
        .collect();
    Some((
        line,
        Request {
            path: path.to_string(),
            query,
        },
    ))
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("x"), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (resource, namespace filter) of a path.
fn route(path: &str) -> Option<(Res, Option<String>)> {
    for res in Res::ALL {
        let Some(rest) = path.strip_prefix(res.prefix()) else {
            continue;
        };
        if rest == format!("/{}", res.plural()) {
            return Some((res, None));
        }
        if let Some(r) = rest.strip_prefix("/namespaces/")
            && let Some((ns, plural)) = r.split_once('/')
            && plural == res.plural()
        {
            return Some((res, Some(ns.to_string())));
        }
    }
    None
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(s: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let text = match code {
        200 => "OK",
        404 => "Not Found",
        410 => "Gone",
        _ => "Error",
    };
    write!(
        s,
        "HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

fn selected(obj: &Value, ns: &Option<String>, node: &Option<String>) -> bool {
    if let Some(ns) = ns
        && obj["metadata"]["namespace"].as_str() != Some(ns)
    {
        return false;
    }
    if let Some(n) = node
        && obj["spec"]["nodeName"].as_str().unwrap_or("") != n
    {
        return false;
    }
    true
}

fn connection(shared: Arc<Shared>, stream: TcpStream) {
    let generation = shared.lock().generation;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        // Wait for the next request, ending when the server drops its connections.
        let req = loop {
            match reader.fill_buf() {
                Ok([]) => return,
                Ok(_) => break read_request(&mut reader),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if shared.lock().generation != generation {
                        let _ = out.shutdown(Shutdown::Both);
                        return;
                    }
                }
                Err(_) => return,
            }
        };
        let Some((line, req)) = req else { return };
        let delay = {
            let mut st = shared.lock();
            st.requests.push(line);
            st.delay
        };
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        if shared.lock().generation != generation {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
        let Some((res, ns)) = route(&req.path) else {
            if respond(&mut out, 404, &status(404, "NotFound", "not found")).is_err() {
                return;
            }
            continue;
        };
        let node = req
            .query
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("spec.nodeName="))
            .map(str::to_string);
        let ok = if req
            .query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1")
        {
            watch(&shared, &mut out, res, &ns, &node, &req, generation);
            return; // a watch stream ends its connection
        } else {
            list(&shared, &mut out, res, &ns, &node, &req)
        };
        if ok.is_err() {
            return;
        }
    }
}

fn list(
    shared: &Shared,
    out: &mut TcpStream,
    res: Res,
    ns: &Option<String>,
    node: &Option<String>,
    req: &Request,
) -> std::io::Result<()> {
    let limit: usize = req
        .query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let mut st = shared.lock();
    let (mut items, rv) = match req.query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match st.pages.remove(token) {
            Some(p) => p,
            None => {
                drop(st);
                return respond(
                    out,
                    410,
                    &status(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                );
            }
        },
        None => {
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((r, _, _), o)| *r == res && selected(o, ns, node))
                .map(|(_, o)| o.clone())
                .collect();
            (items, st.rv)
        }
    };
    let rest = if items.len() > limit {
        items.split_off(limit)
    } else {
        Vec::new()
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if !rest.is_empty() {
        st.next_token += 1;
        let token = format!("{rv}-{}", st.next_token);
        metadata["continue"] = json!(token.clone());
        metadata["remainingItemCount"] = json!(rest.len());
        st.pages.insert(token, (rest, rv));
    }
    drop(st);
    // Items of a list carry no kind/apiVersion, as the API server's.
    for i in &mut items {
        if let Some(o) = i.as_object_mut() {
            o.remove("kind");
            o.remove("apiVersion");
        }
    }
    let body = json!({
        "kind": format!("{}List", res.kind()),
        "apiVersion": res.api_version(),
        "metadata": metadata,
        "items": items,
    });
    respond(out, 200, &body)
}

fn chunk(out: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    write!(out, "{:x}\r\n{line}\r\n", line.len())?;
    out.flush()
}

fn watch(
    shared: &Shared,
    out: &mut TcpStream,
    res: Res,
    ns: &Option<String>,
    node: &Option<String>,
    req: &Request,
    generation: u64,
) {
    let bookmarks = req
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let from: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .and_then(|_| out.flush())
    .is_err()
    {
        return;
    }
    let end = Instant::now() + timeout;
    let mut st = shared.lock();
    let expiry = st.expiry;
    let mut pending: Vec<Value> = Vec::new();
    let mut at = from;
    if from == 0 {
        // "Any" version: the current state as ADDED events, then changes.
        for ((r, _, _), o) in &st.objects {
            if *r == res && selected(o, ns, node) {
                pending.push(json!({"type": "ADDED", "object": o}));
            }
        }
        at = st.rv;
    } else if from < st.compacted {
        drop(st);
        let _ = chunk(
            out,
            &json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {from} ({})", from + 1))}),
        );
        let _ = write!(out, "0\r\n\r\n");
        return;
    }
    let mut last_bookmark = Instant::now();
    loop {
        for c in st.log.iter().filter(|c| c.rv > at) {
            if c.res == res && selected(&c.object, ns, node) {
                pending.push(json!({"type": c.kind, "object": c.object}));
            }
        }
        at = at.max(st.rv);
        let dropped = st.generation != generation;
        let expired = st.expiry != expiry;
        let rv_now = st.rv;
        drop(st);
        if dropped {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
        for e in pending.drain(..) {
            if chunk(out, &e).is_err() {
                return;
            }
        }
        if expired {
            let _ = chunk(
                out,
                &json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")}),
            );
            let _ = write!(out, "0\r\n\r\n");
            return;
        }
        if bookmarks && last_bookmark.elapsed() >= shared.bookmark_every {
            last_bookmark = Instant::now();
            let bm = json!({"type": "BOOKMARK", "object": {"kind": res.kind(), "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": rv_now.to_string()}}});
            if chunk(out, &bm).is_err() {
                return;
            }
        }
        if Instant::now() >= end {
            let _ = write!(out, "0\r\n\r\n");
            let _ = out.flush();
            return;
        }
        st = shared.lock();
        if st.rv == at && st.generation == generation && st.expiry == expiry {
            let wait = shared
                .bookmark_every
                .min(Duration::from_millis(200))
                .min(end.saturating_duration_since(Instant::now()));
            st = shared
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Builders of the objects flowlens reads (the fields it reads, as the API server shows them).
pub mod objects {
    use serde_json::{Value, json};

    /// `owner`: the controlling owner reference (kind, name).
    pub fn pod(
        namespace: &str,
        name: &str,
        uid: &str,
        ip: Option<&str>,
        node: &str,
        owner: Option<(&str, &str)>,
    ) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": if ip.is_some() { "Running" } else { "Pending" }},
        });
        if let Some(ip) = ip {
            p["status"]["podIP"] = json!(ip);
            p["status"]["podIPs"] = json!([{"ip": ip}]);
        }
        if let Some((kind, oname)) = owner {
            p["metadata"]["ownerReferences"] = json!([{
                "apiVersion": if kind == "Job" { "batch/v1" } else { "apps/v1" },
                "kind": kind, "name": oname, "uid": format!("owner-{oname}"), "controller": true,
            }]);
        }
        p
    }

    pub fn host_network(mut pod: Value) -> Value {
        pod["spec"]["hostNetwork"] = json!(true);
        pod
    }

    pub fn with_created(mut o: Value, rfc3339: &str) -> Value {
        o["metadata"]["creationTimestamp"] = json!(rfc3339);
        o
    }

    /// A ReplicaSet or Job `name` controlled by (`kind`, `owner`).
    pub fn owned(namespace: &str, name: &str, owner: Option<(&str, &str)>) -> Value {
        let mut o = json!({"metadata": {"name": name, "namespace": namespace}, "spec": {}});
        if let Some((kind, oname)) = owner {
            o["metadata"]["ownerReferences"] = json!([{
                "apiVersion": if kind == "CronJob" { "batch/v1" } else { "apps/v1" },
                "kind": kind, "name": oname, "uid": format!("owner-{oname}"), "controller": true,
            }]);
        }
        if owner.is_some_and(|(k, _)| k == "CronJob") || name.starts_with("job") {
            o["spec"]["template"] = json!({"spec": {"containers": [{"name": "c", "image": "i"}]}});
        } else {
            o["spec"]["selector"] = json!({});
        }
        o
    }

    pub fn service(namespace: &str, name: &str, cluster_ip: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": namespace},
               "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip]}})
    }

    pub fn node(name: &str, internal_ip: &str, zone: Option<&str>) -> Value {
        let mut n = json!({"metadata": {"name": name, "labels": {}},
            "status": {"addresses": [{"type": "InternalIP", "address": internal_ip},
                                      {"type": "Hostname", "address": name}]}});
        if let Some(z) = zone {
            n["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!(z);
        }
        n
    }
}
