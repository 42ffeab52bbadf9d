//! IPFIX sink (RFC 7011): flow records to any IPFIX collector (nfcapd, nfacctd, Akvorado,
//! GoFlow2, ...). [`encode`] builds the messages (pure); this module sends them.
//!
//! * `ipfix:HOST:PORT` ([`UdpSink`]): one datagram per message, at most `--ipfix-mtu` bytes of
//!   IP packet. Templates, options templates, the sampling record and the interface names are
//!   sent before the first data and again every `--ipfix-template-refresh` (RFC 7011 §8.4), so a
//!   collector that starts late decodes everything from the next refresh on. UDP has no
//!   acknowledgement: records are settled when the datagram is handed to the kernel; a send
//!   error counts the message's flow records as lost.
//! * `ipfix+tcp:HOST:PORT` ([`TcpSink`]): one connection, reconnecting with backoff; every new
//!   connection starts with the templates (a new transport session). A worker thread owns the
//!   socket; `write` only queues. Records are settled once written to the socket; while the
//!   collector is unreachable the sink has no room, so under a spool ([`crate::spool`]) records
//!   wait on disk. A message whose write failed is sent again whole on the next connection (a
//!   collector may see it twice if the failure came after the collector had read it).

pub mod encode;

use std::{
    collections::VecDeque,
    io::Write,
    net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use flowlens_schema::record::FlowRecord;

use crate::{Result, Sink, SinkError, SinkMetrics, log_limit::RateLimited};
use encode::{Encoder, EncoderConfig};

pub use encode::DEFAULT_ENTERPRISE_NUMBER;

/// Default `--ipfix-template-refresh`.
pub const DEFAULT_TEMPLATE_REFRESH: Duration = Duration::from_secs(60);
/// Default `--ipfix-mtu` (IP packet bytes of one UDP message).
pub const DEFAULT_MTU: u16 = 1400;
/// Smallest `--ipfix-mtu`: the IPv6 minimum link MTU; every record fits.
pub const MIN_MTU: u16 = 1280;
/// Records waiting in a TCP sink's memory queue at most.
pub const TCP_QUEUE_RECORDS: usize = 65_536;
/// Records per TCP write (one or more messages).
const TCP_BATCH: usize = 1024;

/// Settings shared by every IPFIX sink (`--ipfix-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpfixSettings {
    pub template_refresh: Duration,
    /// `None`: derived from the host name ([`domain_id_of`]).
    pub domain_id: Option<u32>,
    pub mtu: u16,
    /// `Some(PEN)`: flowlens-specific elements under this enterprise number.
    pub enterprise: Option<u32>,
}

impl Default for IpfixSettings {
    fn default() -> Self {
        IpfixSettings {
            template_refresh: DEFAULT_TEMPLATE_REFRESH,
            domain_id: None,
            mtu: DEFAULT_MTU,
            enterprise: Some(DEFAULT_ENTERPRISE_NUMBER),
        }
    }
}

/// The default observation domain id: FNV-1a of the host name folded to 32 bits (never 0, which
/// some collectors treat as "unset"), so two hosts exporting to one collector do not collide.
pub fn domain_id_of(host: &str) -> u32 {
    let h = host.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    match (h ^ (h >> 32)) as u32 {
        0 => 1,
        v => v,
    }
}

/// `HOST:PORT` (`[V6]:PORT` for IPv6 literals) of an `ipfix:` spec: checked, not resolved.
pub fn parse_target(t: &str) -> std::result::Result<String, String> {
    let ok = t
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(t.to_string())
    } else {
        Err(format!(
            "{t:?} is not HOST:PORT (e.g. ipfix:127.0.0.1:4739; IPFIX's port is 4739)"
        ))
    }
}

fn resolve(target: &str) -> Result<SocketAddr> {
    target
        .to_socket_addrs()
        .map_err(|e| SinkError::io(format!("resolving {target}"), e))?
        .next()
        .ok_or_else(|| SinkError::Spec {
            spec: target.to_string(),
            reason: "the name resolves to no address".into(),
        })
}

fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

fn encoder(s: &IpfixSettings, host: &str, max_message: usize) -> Encoder {
    Encoder::new(EncoderConfig {
        domain_id: s.domain_id.unwrap_or_else(|| domain_id_of(host)),
        max_message,
        enterprise: s.enterprise,
    })
}

/// `ipfix:HOST:PORT` (see the module documentation).
pub struct UdpSink {
    name: String,
    socket: UdpSocket,
    target: SocketAddr,
    enc: Encoder,
    refresh: Duration,
    last_templates: Option<Instant>,
    sent: u64,
    lost: u64,
    log: RateLimited,
}

impl UdpSink {
    pub fn new(target: &str, settings: &IpfixSettings, host: &str) -> Result<Self> {
        let name = format!("ipfix:{target}");
        let addr = resolve(target)?;
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        // Not connected: ICMP port-unreachable from a collector that is not up yet must not
        // turn into send errors (UDP export is fire and forget).
        let socket = UdpSocket::bind(bind).map_err(|e| SinkError::io("binding a UDP socket", e))?;
        let ip_udp = if addr.is_ipv4() { 28 } else { 48 };
        let max = (settings.mtu.max(MIN_MTU) as usize) - ip_udp;
        Ok(UdpSink {
            name,
            socket,
            target: addr,
            enc: encoder(settings, host, max),
            refresh: settings.template_refresh,
            last_templates: None,
            sent: 0,
            lost: 0,
            log: RateLimited::default(),
        })
    }

    fn refresh_templates(&mut self) {
        if self
            .last_templates
            .is_none_or(|t| t.elapsed() >= self.refresh)
        {
            self.enc.templates(now_secs());
            self.last_templates = Some(Instant::now());
            self.send_all();
        }
    }

    /// Sends every finished message; flow records of a message that fails are counted lost.
    fn send_all(&mut self) {
        for (m, records) in self.enc.take_counted() {
            match self.socket.send_to(&m, self.target) {
                Ok(_) => self.sent += records,
                Err(e) => {
                    self.lost += records;
                    if let Some(suppressed) = self.log.check() {
                        tracing::warn!(sink = %self.name, error = %e, suppressed, records,
                            "IPFIX message not sent; its records are lost");
                    }
                }
            }
        }
    }
}

impl Sink for UdpSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
        self.refresh_templates();
        if records.is_empty() {
            return Ok(());
        }
        self.enc.records(records, now_secs());
        self.send_all();
        Ok(())
    }

    fn tick(&mut self) -> Result<()> {
        self.refresh_templates();
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        self.send_all();
        Ok(())
    }

    fn records_lost(&self) -> u64 {
        self.lost
    }

    fn metrics(&self) -> SinkMetrics {
        // Settled when handed to the kernel (UDP has no acknowledgement), as stdout.
        SinkMetrics {
            sent: self.sent,
            acknowledged: self.sent,
            lost: self.lost,
            ..SinkMetrics::default()
        }
    }
}

/// Shared by a [`TcpSink`] and its worker thread.
struct Shared {
    queue: Mutex<VecDeque<FlowRecord>>,
    wake: Condvar,
    closing: AtomicBool,
    connected: AtomicBool,
    /// Records written to the socket (in order).
    settled: AtomicU64,
    lost: AtomicU64,
    connects: AtomicU64,
}

/// `ipfix+tcp:HOST:PORT` (see the module documentation).
pub struct TcpSink {
    name: String,
    shared: Arc<Shared>,
    worker: Option<std::thread::JoinHandle<()>>,
    close_timeout: Duration,
    queue_records: usize,
}

impl TcpSink {
    /// Starts the worker; the connection is made (and remade) by it, so a collector that is
    /// down at start is an outage like any other. The target must resolve now.
    pub fn new(
        target: &str,
        settings: &IpfixSettings,
        host: &str,
        close_timeout: Duration,
    ) -> Result<Self> {
        let name = format!("ipfix+tcp:{target}");
        resolve(target)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            closing: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            settled: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        });
        let w = TcpWorker {
            name: name.clone(),
            target: target.to_string(),
            settings: settings.clone(),
            host: host.to_string(),
            shared: shared.clone(),
        };
        let worker = std::thread::Builder::new()
            .name("flowlens-ipfix".into())
            .spawn(move || w.run())
            .map_err(|e| SinkError::io("starting the IPFIX worker thread", e))?;
        Ok(TcpSink {
            name,
            shared,
            worker: Some(worker),
            close_timeout,
            queue_records: TCP_QUEUE_RECORDS,
        })
    }

    fn queued(&self) -> u64 {
        self.shared.queue.lock().map(|q| q.len()).unwrap_or(0) as u64
    }
}

impl Sink for TcpSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, records: &[FlowRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut q = self
            .shared
            .queue
            .lock()
            .map_err(|_| SinkError::Upload("IPFIX queue lock poisoned".into()))?;
        if q.len() + records.len() > self.queue_records {
            // All or nothing: the caller (the spool, or the collector's loss accounting) keeps
            // the batch.
            return Err(SinkError::Lost {
                sink: self.name.clone(),
                records: records.len() as u64,
            });
        }
        q.extend(records.iter().cloned());
        drop(q);
        self.shared.wake.notify_one();
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        let Some(worker) = self.worker.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + self.close_timeout;
        while self.queued() > 0 && self.shared.connected.load(Relaxed) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.shared.closing.store(true, Relaxed);
        self.shared.wake.notify_all();
        let _ = worker.join();
        let left = self.queued();
        if left > 0 {
            self.shared.lost.fetch_add(left, Relaxed);
            return Err(SinkError::Lost {
                sink: self.name.clone(),
                records: left,
            });
        }
        Ok(())
    }

    fn records_lost(&self) -> u64 {
        self.shared.lost.load(Relaxed)
    }

    /// No room while the collector is unreachable: a spool keeps the records meanwhile.
    fn room(&self) -> u64 {
        if !self.shared.connected.load(Relaxed) {
            return 0;
        }
        self.queue_records.saturating_sub(self.queued() as usize) as u64
    }

    fn settled(&self) -> Option<u64> {
        Some(self.shared.settled.load(Relaxed))
    }

    fn metrics(&self) -> SinkMetrics {
        let settled = self.shared.settled.load(Relaxed);
        SinkMetrics {
            sent: settled,
            acknowledged: settled,
            queued: self.queued(),
            lost: self.shared.lost.load(Relaxed),
            retried: self.shared.connects.load(Relaxed).saturating_sub(1),
            ..SinkMetrics::default()
        }
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.shared.closing.store(true, Relaxed);
        self.shared.wake.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

struct TcpWorker {
    name: String,
    target: String,
    settings: IpfixSettings,
    host: String,
    shared: Arc<Shared>,
}

impl TcpWorker {
    fn run(self) {
        let mut backoff = Duration::from_millis(100);
        let mut log = RateLimited::default();
        while !self.shared.closing.load(Relaxed) {
            match self.session() {
                Ok(()) => return,
                Err(e) => {
                    self.shared.connected.store(false, Relaxed);
                    if let Some(suppressed) = log.check() {
                        tracing::warn!(sink = %self.name, error = %e, suppressed,
                            "IPFIX collector unreachable; reconnecting");
                    }
                }
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until && !self.shared.closing.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One connection: templates first, then queued records until closing (`Ok`) or an I/O
    /// error (`Err`; unsent records stay queued).
    fn session(&self) -> std::io::Result<()> {
        let addr = self
            .target
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("the name resolves to no address"))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut enc = encoder(&self.settings, &self.host, encode::MAX_MESSAGE);
        enc.templates(now_secs());
        for m in enc.take() {
            s.write_all(&m)?;
        }
        self.shared.connects.fetch_add(1, Relaxed);
        self.shared.connected.store(true, Relaxed);
        tracing::info!(sink = %self.name, "connected to the IPFIX collector");
        let mut batch = Vec::with_capacity(TCP_BATCH);
        loop {
            batch.clear();
            {
                let mut q = self
                    .shared
                    .queue
                    .lock()
                    .map_err(|_| std::io::Error::other("queue lock poisoned"))?;
                while q.is_empty() && !self.shared.closing.load(Relaxed) {
                    peer_still_there(&s)?;
                    q = self
                        .shared
                        .wake
                        .wait_timeout(q, Duration::from_millis(200))
                        .map_err(|_| std::io::Error::other("queue lock poisoned"))?
                        .0;
                }
                if q.is_empty() {
                    return Ok(());
                }
                batch.extend(q.iter().take(TCP_BATCH).cloned());
            }
            // A collector that closed the connection is noticed before records are written into
            // a socket whose peer is gone (the kernel would accept them and drop them).
            peer_still_there(&s)?;
            enc.records(&batch, now_secs());
            for m in enc.take() {
                s.write_all(&m)?;
            }
            if let Ok(mut q) = self.shared.queue.lock() {
                q.drain(..batch.len());
            }
            self.shared.settled.fetch_add(batch.len() as u64, Relaxed);
        }
    }
}

/// IPFIX collectors never send to the exporter: a readable socket means the collector closed
/// (EOF) or reset the connection.
fn peer_still_there(s: &TcpStream) -> std::io::Result<()> {
    s.set_nonblocking(true)?;
    let mut b = [0u8; 1];
    let r = s.peek(&mut b);
    s.set_nonblocking(false)?;
    match r {
        Ok(0) => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the collector closed the connection",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_domain_ids() {
        assert!(parse_target("127.0.0.1:4739").is_ok());
        assert!(parse_target("[::1]:4739").is_ok());
        assert!(parse_target("collector:2055").is_ok());
        for bad in ["", "host", "host:", ":4739", "h:0", "h:70000"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert_ne!(domain_id_of("a"), domain_id_of("b"));
        assert_eq!(domain_id_of("web-1"), domain_id_of("web-1"));
        assert_ne!(domain_id_of(""), 0);
    }
}
