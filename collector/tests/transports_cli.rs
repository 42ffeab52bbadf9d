//! Issue 14 from the command line: the transport flags in `--help` (never an environment
//! variable's value), and `flowlens run` against a real TLS endpoint (`openssl s_server` in a
//! namespace the test creates) whose certificate the given CA did not sign: for OTLP/gRPC,
//! OTLP/HTTP and Kafka SASL_SSL, flowlens stops with a one-line error before attaching
//! anything, and no secret (header value, SASL password) appears anywhere in its output. The
//! config file holding a secret is warned about while it is world-readable.

#[path = "../../sinks/tests/pki/mod.rs"]
mod pki;

use std::{
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use flowlens_testkit::Netns;
use pki::Pki;

const FLOWLENS: &str = env!("CARGO_BIN_EXE_flowlens");
const SECRET: &str = "s3cr3t-value-never-printed";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn help_lists_the_transport_flags_and_never_env_values() {
    let o = Command::new(FLOWLENS)
        .args(["run", "--help"])
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("authorization={SECRET}"),
        )
        .env("OTEL_EXPORTER_OTLP_CLIENT_KEY", format!("/{SECRET}.key"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let t = text(&o);
    for flag in [
        "--otlp-protocol",
        "--otlp-ca",
        "--otlp-client-cert",
        "--otlp-client-key",
        "--otlp-header",
        "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "SASL_SSL",
    ] {
        assert!(t.contains(flag), "{flag} missing from --help");
    }
    assert!(!t.contains(SECRET), "--help shows an environment value");
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server` in `ns` on 127.0.0.1:PORT with a certificate from another CA.
fn tls_server(ns: &Netns, pki: &Pki, port: u16) -> Server {
    let child = ns
        .command("openssl")
        .args(["s_server", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(pki.path("other-server.pem"))
        .arg("-key")
        .arg(pki.path("other-server.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !ns
        .run_in(move || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        .unwrap()
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "s_server not up");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(child)
}

/// Runs flowlens in `ns` (XDP on the namespace's loopback) and checks it stops before
/// attaching, with one error line containing `expect` and no secret anywhere.
fn refused(ns: &Netns, args: &[String], envs: &[(&str, String)], expect: &str) -> String {
    let mut c = ns.command(FLOWLENS);
    c.args(["run", "--xdp", "lo", "--no-spool", "--duration", "5s"])
        .args(args)
        .env("RUST_LOG", "info");
    for (k, v) in envs {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let t = text(&o);
    eprintln!("--- flowlens {args:?}\n{t}");
    assert!(!o.status.success(), "must fail: {t}");
    assert!(!t.contains(SECRET), "secret printed: {t}");
    let errors: Vec<&str> = t.lines().filter(|l| l.contains("error")).collect();
    let last = t.lines().last().unwrap_or_default();
    assert!(last.contains(expect), "last line {last:?} lacks {expect:?}");
    assert!(last.starts_with("flowlens: error:"), "{last}");
    assert!(!errors.is_empty());
    assert!(!ns.xdp_attached("lo").unwrap(), "nothing attached");
    assert!(!t.contains("flowlens running"), "{t}");
    t
}

#[test]
fn tls_and_sasl_failures_stop_flowlens_before_attaching_without_printing_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new("cli");
    let ns = Netns::new("tlscli").unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let port = 18443;
    let _server = tls_server(&ns, &pki, port);
    let ca = pki.path("ca.pem").display().to_string();

    // OTLP/gRPC, the header in a world-readable config file.
    let conf = pki.path("flowlens.toml");
    std::fs::write(
        &conf,
        format!("otlp-header = [\"authorization=Bearer {SECRET}\"]\n"),
    )
    .unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let t = refused(
        &ns,
        &[
            "--config".into(),
            conf.display().to_string(),
            "--sink".into(),
            format!("otlp:https://localhost:{port}"),
            "--otlp-ca".into(),
            ca.clone(),
        ],
        &[],
        "TLS handshake with localhost",
    );
    assert!(t.contains("config file is readable by every user"), "{t}");
    // chmod 600: no warning.
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let t = refused(
        &ns,
        &[
            "--config".into(),
            conf.display().to_string(),
            "--sink".into(),
            format!("otlp:https://localhost:{port}"),
            "--otlp-ca".into(),
            ca.clone(),
        ],
        &[],
        "UnknownIssuer",
    );
    assert!(!t.contains("readable by every user"), "{t}");

    // OTLP/HTTP, header and CA from the OpenTelemetry variables.
    refused(
        &ns,
        &["--sink".into(), format!("otlp:https://localhost:{port}")],
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_EXPORTER_OTLP_HEADERS", format!("api-key={SECRET}")),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.clone()),
        ],
        "UnknownIssuer",
    );

    // Kafka SASL_SSL: the password on the command line never comes back.
    refused(
        &ns,
        &[
            "--sink".into(),
            format!("kafka:localhost:{port}/flows"),
            "--kafka-option".into(),
            "security.protocol=SASL_SSL".into(),
            "--kafka-option".into(),
            "sasl.mechanism=SCRAM-SHA-512".into(),
            "--kafka-option".into(),
            "sasl.username=flowlens".into(),
            "--kafka-option".into(),
            format!("sasl.password={SECRET}"),
            "--kafka-option".into(),
            format!("ssl.ca.location={ca}"),
        ],
        &[],
        "TLS/SASL with the brokers failed",
    );
}
