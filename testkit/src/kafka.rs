//! Kafka peers for sink tests: a real broker process ([`Tansu`], Kafka-compatible, in-memory
//! storage) on an ephemeral loopback port, and [`consume_all`], an rdkafka consumer that reads
//! a topic back from the beginning of every partition.

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::Netns;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};

/// Where `cargo xtask setup` installs tansu (`cargo install tansu --features dynostore`).
pub fn tansu_binary() -> Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    let p = home.join(".cargo/bin/tansu");
    if p.exists() {
        return Ok(p);
    }
    bail!(
        "{} is missing: run `cargo xtask setup` (installs tansu)",
        p.display()
    )
}

/// A tansu broker process listening on `ip:port` (in a namespace or the caller's), killed on
/// drop.
pub struct Tansu {
    child: Child,
    pub ip: Ipv4Addr,
    pub port: u16,
    netns: Option<String>,
    log: PathBuf,
}

impl Tansu {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    pub fn start() -> Result<Tansu> {
        Self::start_in(None, Ipv4Addr::LOCALHOST)
    }

    /// Starts a broker on a free port of `ip` inside `ns` (or here), and waits until it
    /// accepts connections.
    pub fn start_in(ns: Option<&Netns>, ip: Ipv4Addr) -> Result<Tansu> {
        let bin = tansu_binary()?;
        let in_ns = |f: Box<dyn FnOnce() -> bool + Send>| -> Result<bool> {
            match ns {
                Some(ns) => ns.run_in(f),
                None => Ok(f()),
            }
        };
        // A free port: bind 0, read it, release it. Another process could take it in between;
        // then tansu exits and this retries with a new port.
        let mut last_err = None;
        for _ in 0..3 {
            let port = match ns {
                Some(ns) => ns.run_in(move || -> std::io::Result<u16> {
                    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
                })??,
                None => TcpListener::bind((ip, 0))?.local_addr()?.port(),
            };
            let url = format!("tcp://{ip}:{port}");
            let log = std::env::temp_dir()
                .join(format!("flowlens-tansu-{}-{port}.log", std::process::id()));
            let logf = std::fs::File::create(&log)?;
            let mut cmd = match ns {
                Some(ns) => ns.command(&bin),
                None => Command::new(&bin),
            };
            cmd.args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            // Keep the broker's own telemetry and cluster settings out of the test's hands.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("STORAGE_ENGINE")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
            let mut child = cmd
                .spawn()
                .with_context(|| format!("spawning {}", bin.display()))?;
            let t0 = Instant::now();
            loop {
                if let Some(st) = child.try_wait()? {
                    last_err = Some(anyhow::anyhow!(
                        "tansu exited ({st}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ));
                    break;
                }
                if in_ns(Box::new(move || TcpStream::connect((ip, port)).is_ok()))? {
                    return Ok(Tansu {
                        child,
                        ip,
                        port,
                        netns: ns.map(|n| n.name().to_string()),
                        log,
                    });
                }
                if t0.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("tansu did not listen on {ip}:{port} within 20 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("tansu did not start")))
    }

    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// `tansu topic create NAME --partitions N` (tansu does not auto-create topics).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let bin = tansu_binary()?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let out = cmd
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .arg("--broker")
            .arg(format!("tcp://{}:{}", self.ip, self.port))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()?;
        if !out.status.success() {
            bail!(
                "tansu topic create {name} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The broker's output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One consumed message.
#[derive(Clone, Debug)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Reads `topic` from the beginning of every partition until `expect` messages arrived, then
/// keeps reading for `settle` more to catch duplicates or extras. Fails after `timeout`.
pub fn consume_all(
    bootstrap: &str,
    topic: &str,
    expect: usize,
    settle: Duration,
    timeout: Duration,
) -> Result<Vec<Consumed>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("flowlens-test-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the test consumer")?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("fetching topic metadata")?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} not in metadata"))?;
    if t.partitions().is_empty() {
        bail!("topic {topic} has no partitions");
    }
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut reached: Option<Instant> = None;
    loop {
        if let Some(r) = reached
            && r.elapsed() >= settle
        {
            return Ok(out);
        }
        if reached.is_none() && t0.elapsed() > timeout {
            bail!(
                "consumed {} of {expect} messages within {timeout:?}",
                out.len()
            );
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(Consumed {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
            }),
            Some(Err(e)) => bail!("consuming {topic}: {e}"),
            None => {}
        }
        if reached.is_none() && out.len() >= expect {
            reached = Some(Instant::now());
        }
    }
}
