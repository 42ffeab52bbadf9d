//! The Kafka sink over TLS, mTLS and SASL_SSL (issue 14) against the real broker the other
//! Kafka tests use (tansu, in-memory storage) behind a real TLS endpoint: `stunnel4`
//! terminating TLS with certificates the test generates (openssl CLI). tansu advertises the
//! stunnel address, so every connection (metadata, produce, fetch) goes through TLS. Records
//! are consumed back over TLS and compared one by one.

mod common;
mod pki;

use std::{
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::assert_consumed_exactly;
use flowlens_sinks::{Sink, SinkSpec, build, kafka::KafkaFormat};
use flowlens_testkit::{
    kafka::{Consumed, tansu_binary},
    records::conversations,
};
use pki::Pki;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};

const PASSWORD: &str = "scram-pa55word-never-printed";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("{what} exited: {st}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what} not listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the process on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tansu on a plaintext loopback port, advertising `localhost:TLS_PORT` (stunnel), and stunnel
/// in front of it.
struct TlsBroker {
    plain: u16,
    tls: u16,
    _tansu: Proc,
    _stunnel: Proc,
}

impl TlsBroker {
    fn start(pki: &Pki, require_client_cert: bool, authentication: bool) -> TlsBroker {
        let (plain, tls) = (free_port(), free_port());
        let mut cmd = Command::new(tansu_binary().unwrap());
        cmd.args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{plain}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://localhost:{tls}"))
            .args(["--storage-engine", "memory://tansu/"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(pki.path(&format!("tansu-{plain}.log"))).unwrap());
        if authentication {
            cmd.arg("--authentication");
        }
        let mut tansu = cmd.spawn().unwrap();
        wait_listening(plain, &mut tansu, "tansu");
        let conf = pki.path(&format!("stunnel-{tls}.conf"));
        let mut c = format!(
            "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\ncert = {}\nkey = {}\n",
            pki.path("server.pem").display(),
            pki.path("server.key").display()
        );
        if require_client_cert {
            c += &format!(
                "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                pki.path("ca.pem").display()
            );
        }
        std::fs::write(&conf, c).unwrap();
        let mut stunnel = Command::new("stunnel4")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 (apt stunnel4; `cargo xtask setup` installs it)");
        wait_listening(tls, &mut stunnel, "stunnel4");
        TlsBroker {
            plain,
            tls,
            _tansu: Proc(tansu),
            _stunnel: Proc(stunnel),
        }
    }

    fn create_topic(&self, name: &str) {
        let out = Command::new(tansu_binary().unwrap())
            .args(["topic", "create", name, "--partitions", "3", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.plain))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu topic create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn bootstrap(&self) -> String {
        format!("localhost:{}", self.tls)
    }
}

fn opts(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn ssl_options(pki: &Pki, ca: &str, client: bool) -> Vec<(String, String)> {
    let mut o = opts(&[
        ("security.protocol", "SSL".into()),
        ("ssl.ca.location", pki.path(ca).display().to_string()),
    ]);
    if client {
        o.extend(opts(&[
            (
                "ssl.certificate.location",
                pki.path("client.pem").display().to_string(),
            ),
            (
                "ssl.key.location",
                pki.path("client.key").display().to_string(),
            ),
        ]));
    }
    o
}

/// Builds the sink the way the collector does (`flowlens_sinks::build`, no spool).
fn build_sink(
    b: &TlsBroker,
    topic: &str,
    options: Vec<(String, String)>,
) -> flowlens_sinks::Result<Box<dyn Sink>> {
    let spec: SinkSpec = format!("kafka:{}/{topic}", b.bootstrap()).parse().unwrap();
    let mut o = build::BuildOptions::new("testhost".into());
    o.kafka_options = options;
    o.kafka_close_timeout = Duration::from_secs(30);
    build::build(&[spec], &o).map(|mut v| v.remove(0))
}

/// Reads the whole topic back through TLS (the same client settings as the producer).
fn consume(
    b: &TlsBroker,
    topic: &str,
    options: &[(String, String)],
    expect: usize,
) -> Vec<Consumed> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", b.bootstrap())
        .set("group.id", format!("flowlens-tls-{}", std::process::id()))
        .set("enable.auto.commit", "false");
    for (k, v) in options {
        cc.set(k, v);
    }
    let consumer: BaseConsumer = cc.create().unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut reached: Option<Instant> = None;
    while reached.is_none_or(|r| r.elapsed() < Duration::from_secs(2)) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "consumed {} of {expect}",
            out.len()
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            out.push(Consumed {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
            });
        }
        if reached.is_none() && out.len() >= expect {
            reached = Some(Instant::now());
        }
    }
    out
}

fn round_trip(b: &TlsBroker, topic: &str, options: Vec<(String, String)>, n: usize) {
    b.create_topic(topic);
    let mut sink = build_sink(b, topic, options.clone()).unwrap();
    let recs = conversations(n);
    for c in recs.chunks(250) {
        sink.write(c).unwrap();
        sink.tick().unwrap();
    }
    sink.close().unwrap();
    let m = sink.metrics();
    let total = recs.len() as u64;
    assert_eq!((m.acknowledged, m.lost, m.rejected), (total, 0, 0), "{m:?}");
    let got = consume(b, topic, &options, recs.len());
    assert_consumed_exactly(&recs, &got, KafkaFormat::Protobuf);
}

/// A start-up error: one line, names the sink and the cause, never the password.
fn start_error(r: flowlens_sinks::Result<Box<dyn Sink>>, contains: &str) -> String {
    let e = r.err().expect("the sink must not start").to_string();
    eprintln!("start error: {e}");
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(e.starts_with("sink kafka:"), "{e}");
    assert!(!e.contains(PASSWORD), "password in: {e}");
    assert!(e.contains(contains), "{contains:?} not in: {e}");
    e
}

#[test]
fn ssl_and_mtls_deliver_every_record_through_a_tls_endpoint() {
    let pki = Pki::new("kafka-ssl");
    let b = TlsBroker::start(&pki, false, false);
    round_trip(&b, "flows-ssl", ssl_options(&pki, "ca.pem", false), 600);
    // A CA that did not sign the broker's certificate: an error before anything attaches.
    start_error(
        build_sink(&b, "flows-ssl", ssl_options(&pki, "other-ca.pem", false)),
        "TLS/SASL with the brokers failed",
    );
    // A CA file that does not exist: librdkafka refuses the configuration.
    start_error(
        build_sink(&b, "flows-ssl", ssl_options(&pki, "no-such-ca.pem", false)),
        "ssl.ca.location",
    );

    let m = TlsBroker::start(&pki, true, false);
    round_trip(&m, "flows-mtls", ssl_options(&pki, "ca.pem", true), 600);
    // The mTLS endpoint refuses a client without a certificate.
    start_error(
        build_sink(&m, "flows-mtls", ssl_options(&pki, "ca.pem", false)),
        "TLS/SASL with the brokers failed",
    );
}

fn sasl_options(pki: &Pki, mechanism: &str, user: &str) -> Vec<(String, String)> {
    let mut o = ssl_options(pki, "ca.pem", false);
    o.retain(|(k, _)| k != "security.protocol");
    o.extend(opts(&[
        ("security.protocol", "SASL_SSL".into()),
        ("sasl.mechanism", mechanism.into()),
        ("sasl.username", user.into()),
        ("sasl.password", PASSWORD.into()),
    ]));
    o
}

/// SASL_SSL against tansu's `--authentication` through the TLS endpoint. What this peer
/// allows (tansu 0.6 as `cargo xtask setup` installs it, in-memory storage): it offers only
/// SCRAM-SHA-512/256, and its users are created with the AlterUserScramCredentials admin call
/// over an authenticated connection, so an in-memory broker started with authentication never
/// has a user (no successful SASL round trip is possible here; librdkafka's mock cluster has
/// no SASL at all). What is tested against the real peer: the SCRAM exchange runs over TLS and
/// the broker's refusal (unknown user), like a PLAIN mechanism it does not offer, stops the
/// sink at start with one line that never shows the password.
#[test]
fn sasl_ssl_failures_stop_the_sink_at_start_without_the_password() {
    let pki = Pki::new("kafka-sasl");
    let b = TlsBroker::start(&pki, false, true);
    for mech in ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] {
        start_error(
            build_sink(&b, "flows-sasl", sasl_options(&pki, mech, "nobody")),
            "TLS/SASL with the brokers failed",
        );
    }
}

/// This librdkafka build has TLS and the SASL mechanisms flowlens documents.
#[test]
fn librdkafka_is_built_with_ssl_and_sasl_scram() {
    let features = ClientConfig::new()
        .create_native_config()
        .unwrap()
        .get("builtin.features")
        .unwrap();
    for f in ["ssl", "sasl_plain", "sasl_scram"] {
        assert!(features.split(',').any(|x| x == f), "{f} not in {features}");
    }
    let p: rdkafka::producer::BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9")
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", "SCRAM-SHA-256")
        .set("sasl.username", "u")
        .set("sasl.password", "p")
        .create()
        .expect("SASL_SSL + SCRAM accepted by this librdkafka build");
    drop(p);
    let e = match ClientConfig::new()
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", "NO-SUCH-MECH")
        .create::<rdkafka::producer::BaseProducer>()
    {
        Ok(_) => panic!("an unknown mechanism must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("sasl.mechanism") || e.contains("NO-SUCH-MECH"),
        "{e}"
    );
}
