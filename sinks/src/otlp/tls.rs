//! TLS of the OTLP transports (issue 14): trust roots, client identity (mTLS), header secrets,
//! and the handshake check at start.
//!
//! * Roots: the system store (rustls-native-certs: `/etc/ssl/certs`, `SSL_CERT_FILE`,
//!   `SSL_CERT_DIR`) unless a CA file is given, which then replaces it (as
//!   `OTEL_EXPORTER_OTLP_CERTIFICATE` does in the OpenTelemetry SDKs).
//! * [`probe`] makes one TCP connection and a TLS handshake at start: a certificate the roots do
//!   not trust, a name that does not match, or a client certificate the server refuses is then a
//!   one-line error instead of a retry loop. A receiver that is not listening is not an error
//!   (it is retried like any outage).
//! * Header values are secrets (bearer tokens, API keys): [`Headers`] prints only the keys.

use std::{path::PathBuf, sync::Arc, time::Duration};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};

/// TLS settings of an `https://` OTLP endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA certificates to trust instead of the system roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain) and its private key, for mTLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The PEM contents of [`TlsFiles`], read once at start.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: Option<Vec<u8>>,
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub config: Arc<ClientConfig>,
}

/// Extra request headers (`--otlp-header`, `OTEL_EXPORTER_OTLP_HEADERS`). Values are secrets:
/// `Debug` shows the keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}=<redacted>")))
            .finish()
    }
}

impl Headers {
    /// Checks every key and value is a valid HTTP header / gRPC metadata entry; the error names
    /// the key only.
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in &self.0 {
            let lower = k.to_ascii_lowercase();
            if tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(lower.as_bytes())
                .is_err()
                || lower.ends_with("-bin")
            {
                return Err(format!("header {k:?}: not a valid header name"));
            }
            if reqwest::header::HeaderValue::from_str(v).is_err() {
                // Never the value: it is a secret.
                return Err(format!(
                    "header {k:?}: the value has characters a header cannot carry"
                ));
            }
        }
        Ok(())
    }
}

/// Parses `OTEL_EXPORTER_OTLP_HEADERS`: `key1=value1,key2=value2`, values URL-encoded (W3C
/// Baggage format, as the OpenTelemetry specification says). Errors name the entry's key only.
pub fn parse_env_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, part) in s.split(',').enumerate() {
        if part.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_HEADERS entry {}: expected key=value",
                i + 1
            ));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_HEADERS entry {}: empty key",
                i + 1
            ));
        }
        let v = percent_decode(v.trim())
            .ok_or_else(|| format!("OTEL_EXPORTER_OTLP_HEADERS {k:?}: bad %-encoding"))?;
        out.push((k.to_string(), v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn read(what: &str, p: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// The crypto provider of every OTLP TLS connection (aws-lc-rs, which reqwest and tonic use).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads and checks the files; builds the rustls client configuration (ALPN `alpn`).
pub fn load(files: &TlsFiles, alpn: &[&[u8]]) -> Result<TlsMaterial, String> {
    let mut roots = RootCertStore::empty();
    let ca_pem = match &files.ca {
        Some(p) => {
            let pem = read("CA file", p)?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("CA file {}: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!("CA file {}: no PEM certificate in it", p.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("CA file {}: {e}", p.display()))?;
            }
            Some(pem)
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no system CA certificates found (install ca-certificates, or give --otlp-ca)"
                        .into(),
                );
            }
            None
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let (mut config, identity_pem) = match (&files.client_cert, &files.client_key) {
        (Some(c), Some(k)) => {
            let cert_pem = read("client certificate", c)?;
            let key_pem = read("client key", k)?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("client certificate {}: {e}", c.display()))?;
            if chain.is_empty() {
                return Err(format!(
                    "client certificate {}: no PEM certificate in it",
                    c.display()
                ));
            }
            // The key's parse error never quotes the file's contents.
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|_| format!("client key {}: no PEM private key in it", k.display()))?;
            let cfg = builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key: {e}"))?;
            (cfg, Some((cert_pem, key_pem)))
        }
        (None, None) => (builder.with_no_client_auth(), None),
        _ => {
            return Err(
                "a client certificate needs its key and the other way round (--otlp-client-cert and --otlp-client-key)"
                    .into(),
            );
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsMaterial {
        ca_pem,
        identity_pem,
        config: Arc::new(config),
    })
}

/// Connects to `host:port` and completes a TLS handshake within `timeout`. `Ok(true)`: the
/// handshake succeeded; `Ok(false)`: nothing answered (not listening, unreachable, timeout: an
/// outage, retried later); `Err`: the TLS handshake failed (untrusted certificate, name
/// mismatch, refused client certificate): a configuration error.
pub async fn probe(
    config: Arc<ClientConfig>,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<bool, String> {
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
        .map_err(|e| format!("TLS server name {host:?}: {e}"))?
        .to_owned();
    let tcp = match tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => return Ok(false),
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Err(_) => Ok(false),
        Ok(Ok(mut tls)) => {
            // TLS 1.3: the server checks the client certificate after its Finished; a refusal
            // arrives as an alert on the first read. Wait briefly for one.
            use tokio::io::AsyncReadExt;
            let mut b = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut b)).await {
                Ok(Err(e)) => Err(format!("TLS handshake with {host}:{port} failed: {e}")),
                _ => Ok(true),
            }
        }
        Ok(Err(e)) => Err(format!("TLS handshake with {host}:{port} failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_headers_parse_and_never_show_values() {
        let h = parse_env_headers("api-key=s3cr%3Dt, x-b = two ,").unwrap();
        assert_eq!(
            h,
            [
                ("api-key".to_string(), "s3cr=t".to_string()),
                ("x-b".to_string(), "two".to_string())
            ]
        );
        let shown = format!("{:?}", Headers(h.clone()));
        assert!(
            !shown.contains("s3cr") && shown.contains("api-key"),
            "{shown}"
        );
        let e = parse_env_headers("token=abc%zz").unwrap_err();
        assert!(!e.contains("abc"), "{e}");
        let e = parse_env_headers("justasecret").unwrap_err();
        assert!(!e.contains("justasecret"), "{e}");
        let e = Headers(vec![("x".into(), "bad\nsecret".into())])
            .validate()
            .unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(
            Headers(vec![("bad key".into(), "v".into())])
                .validate()
                .is_err()
        );
        assert!(Headers(h).validate().is_ok());
    }

    #[test]
    fn bad_tls_files_are_one_line_errors() {
        let e = load(
            &TlsFiles {
                ca: Some("/nonexistent/ca.pem".into()),
                ..Default::default()
            },
            &[],
        )
        .err()
        .unwrap();
        assert!(e.starts_with("CA file /nonexistent/ca.pem: "), "{e}");
        let e = load(
            &TlsFiles {
                client_cert: Some("/x".into()),
                ..Default::default()
            },
            &[],
        )
        .err()
        .unwrap();
        assert!(e.contains("--otlp-client-key"), "{e}");
    }
}
