//! OTLP/HTTP with binary protobuf (issue 14): `POST {endpoint}/v1/logs` and `/v1/metrics`,
//! `Content-Type: application/x-protobuf`, gzip request bodies, per the OTLP specification:
//!
//! * 200: success; the body is the `Export*ServiceResponse` (its `partial_success` is counted).
//! * 429, 502, 503, 504: retryable; a `Retry-After` header (seconds or an HTTP date) sets the
//!   delay. Connection failures and timeouts are retryable too.
//! * Any other status: permanent (the body, a `google.rpc.Status`, gives the message).

use std::{io::Write, time::Duration};

use prost::Message;
use reqwest::{StatusCode, header};

use super::service::{RetryError, Verdict};

/// One failed OTLP/HTTP attempt.
#[derive(Debug, Clone)]
pub struct HttpFailure {
    /// `None`: no HTTP answer (connection failure, timeout).
    pub status: Option<StatusCode>,
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl RetryError for HttpFailure {
    fn verdict(&self) -> Verdict {
        match self.status {
            None => Verdict::Retry(None),
            Some(s) if is_retryable(s) => Verdict::Retry(self.retry_after),
            Some(_) => Verdict::Permanent,
        }
    }

    fn text(&self) -> String {
        match self.status {
            Some(s) => format!("HTTP {}: {}", s.as_u16(), self.message),
            None => self.message.clone(),
        }
    }

    fn deadline() -> Self {
        HttpFailure {
            status: None,
            retry_after: None,
            message: "shutdown deadline reached".into(),
        }
    }
}

/// The OTLP specification's retryable HTTP statuses.
pub fn is_retryable(s: StatusCode) -> bool {
    matches!(s.as_u16(), 429 | 502 | 503 | 504)
}

/// `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// `google.rpc.Status` (only the message is used).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The OTLP/HTTP URL of a signal: `{endpoint}/v1/{signal}` (the endpoint is the base, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT`).
pub fn signal_url(endpoint: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", endpoint.trim_end_matches('/'))
}

/// gzip of an encoded request.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = e.write_all(body);
    e.finish().unwrap_or_default()
}

/// Sends one gzip-compressed protobuf body; decodes the success response as `R`.
pub async fn post<R: Message + Default>(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
) -> Result<R, HttpFailure> {
    let resp = client
        .post(url)
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(body)
        .send()
        .await
        .map_err(|e| HttpFailure {
            status: None,
            retry_after: None,
            message: error_chain(&e),
        })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let bytes = resp.bytes().await.map_err(|e| HttpFailure {
        status: if status.is_success() {
            None
        } else {
            Some(status)
        },
        retry_after,
        message: error_chain(&e),
    })?;
    if status.is_success() {
        return R::decode(bytes.as_ref()).map_err(|e| HttpFailure {
            status: Some(status),
            retry_after: None,
            message: format!("undecodable response body: {e}"),
        });
    }
    let message = RpcStatus::decode(bytes.as_ref())
        .ok()
        .map(|s| s.message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("error status")
                .to_string()
        });
    Err(HttpFailure {
        status: Some(status),
        retry_after,
        message,
    })
}

/// reqwest's error and its causes on one line (the URL is ours, never a secret: headers are
/// not part of it).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_rules_follow_the_spec() {
        for (code, retry) in [
            (429, true),
            (502, true),
            (503, true),
            (504, true),
            (400, false),
            (401, false),
            (403, false),
            (404, false),
            (413, false),
            (500, false),
        ] {
            let f = HttpFailure {
                status: Some(StatusCode::from_u16(code).unwrap()),
                retry_after: Some(Duration::from_secs(2)),
                message: String::new(),
            };
            let want = if retry {
                Verdict::Retry(Some(Duration::from_secs(2)))
            } else {
                Verdict::Permanent
            };
            assert_eq!(f.verdict(), want, "{code}");
        }
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(100));
        let d = parse_retry_after(&later).unwrap();
        assert!(
            d > Duration::from_secs(90) && d <= Duration::from_secs(100),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            signal_url("https://c:4318/", "logs"),
            "https://c:4318/v1/logs"
        );
    }
}
