//! Sending OTLP export requests with the OTLP specification's retry rules.
//!
//! * Retryable gRPC codes: `CANCELLED`, `DEADLINE_EXCEEDED`, `ABORTED`, `OUT_OF_RANGE`,
//!   `UNAVAILABLE`, `DATA_LOSS`, and `RESOURCE_EXHAUSTED` only when the server attached a
//!   `google.rpc.RetryInfo` (otherwise it is a permanent "too much" answer). Connection failures
//!   surface as `UNAVAILABLE`. Every other code is permanent: the request is not retried.
//! * Delay: the server's `RetryInfo.retry_delay` when present, else exponential backoff
//!   (`initial_backoff`, doubling up to `max_backoff`) with jitter (uniform in [d/2, d]).
//! * A request is given up after `max_elapsed` since its first attempt, or when the caller's
//!   deadline (shutdown) passes.
//! * A success with `partial_success.rejected_*` is final: the rejected items are counted, never
//!   re-sent (the server has said they are bad).

use std::time::{Duration, Instant};

use prost::Message;
use tonic::Code;

/// Retry settings.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up on a request this long after its first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
        }
    }
}

/// `google.rpc.Status`, the message carried in the `grpc-status-details-bin` trailer.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The `retry_delay` of a `google.rpc.RetryInfo` in a status's details, if any.
pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    let details = status.details();
    if details.is_empty() {
        return None;
    }
    let st = RpcStatus::decode(details).ok()?;
    st.details
        .iter()
        .filter(|a| a.type_url == RETRY_INFO_TYPE)
        .find_map(|a| RetryInfo::decode(a.value.as_slice()).ok())
        .map(|ri| {
            ri.retry_delay
                .map(|d| {
                    Duration::from_secs(d.seconds.max(0) as u64)
                        + Duration::from_nanos(d.nanos.max(0) as u64)
                })
                .unwrap_or_default()
        })
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Retry, after the server's delay if it gave one.
    Retry(Option<Duration>),
    /// Permanent failure.
    Permanent,
}

/// Classifies a failed export per the OTLP specification.
pub fn classify(status: &tonic::Status) -> Verdict {
    let delay = retry_delay(status);
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Verdict::Retry(delay),
        Code::ResourceExhausted if delay.is_some() => Verdict::Retry(delay),
        _ => Verdict::Permanent,
    }
}

/// A failed attempt of either transport (gRPC status, OTLP/HTTP failure).
pub trait RetryError {
    fn verdict(&self) -> Verdict;
    /// One line for logs (never a header value).
    fn text(&self) -> String;
    /// The error of an attempt cut by the shutdown deadline.
    fn deadline() -> Self;
}

impl RetryError for tonic::Status {
    fn verdict(&self) -> Verdict {
        classify(self)
    }
    fn text(&self) -> String {
        status_text(self)
    }
    fn deadline() -> Self {
        tonic::Status::deadline_exceeded("shutdown deadline reached")
    }
}

/// Exponential backoff with jitter; a small xorshift generator is enough for jitter.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(p: &RetryPolicy) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ (std::process::id() as u64) << 32;
        Backoff {
            next: p.initial_backoff,
            max: p.max_backoff,
            rng: seed | 1,
        }
    }

    /// The next delay: uniform in [d/2, d], then d doubles (capped).
    pub fn next_delay(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(0.5 + 0.5 * frac)
    }
}

/// The result of sending one request with retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The server accepted the request; `rejected` items of it were refused for good
    /// (partial success). `retries` attempts failed before.
    Accepted {
        rejected: u64,
        message: String,
        retries: u32,
    },
    /// A permanent error: not retried.
    Refused { status: String, retries: u32 },
    /// Retries exhausted (`max_elapsed`) or the deadline passed.
    GaveUp { status: String, retries: u32 },
}

/// Sends with `attempt` until success, a permanent error, `max_elapsed` or `deadline`.
/// `attempt` returns the number of rejected items of a successful response (and its message).
pub async fn send_with_retry<F, Fut, E>(
    policy: &RetryPolicy,
    deadline: impl Fn() -> Option<Instant>,
    mut attempt: F,
) -> Delivery
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(u64, String), E>>,
    E: RetryError,
{
    let first = Instant::now();
    let mut backoff = Backoff::new(policy);
    let mut retries = 0u32;
    loop {
        let res = match deadline() {
            Some(d) => match tokio::time::timeout_at(d.into(), attempt()).await {
                Ok(r) => r,
                Err(_) => Err(E::deadline()),
            },
            None => attempt().await,
        };
        let status = match res {
            Ok((rejected, message)) => {
                return Delivery::Accepted {
                    rejected,
                    message,
                    retries,
                };
            }
            Err(s) => s,
        };
        let delay = match status.verdict() {
            Verdict::Permanent => {
                return Delivery::Refused {
                    status: status.text(),
                    retries,
                };
            }
            Verdict::Retry(server) => server.unwrap_or_else(|| backoff.next_delay()),
        };
        let wake = Instant::now() + delay;
        let past_deadline = deadline().is_some_and(|d| wake >= d);
        if past_deadline || wake.duration_since(first) > policy.max_elapsed {
            return Delivery::GaveUp {
                status: status.text(),
                retries,
            };
        }
        tracing::debug!(error = %status.text(), delay = ?delay, "OTLP export failed; retrying");
        // Sleep in short slices: a shutdown deadline set meanwhile ends the wait promptly.
        loop {
            let now = Instant::now();
            if now >= wake {
                break;
            }
            if deadline().is_some_and(|d| now >= d) {
                return Delivery::GaveUp {
                    status: status.text(),
                    retries,
                };
            }
            tokio::time::sleep((wake - now).min(Duration::from_millis(50))).await;
        }
        retries += 1;
    }
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_retry_info(code: Code, secs: i64) -> tonic::Status {
        let ri = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: secs,
                nanos: 500_000_000,
            }),
        };
        let st = RpcStatus {
            code: code as i32,
            message: "x".into(),
            details: vec![ProtoAny {
                type_url: RETRY_INFO_TYPE.into(),
                value: ri.encode_to_vec(),
            }],
        };
        tonic::Status::with_details(code, "x", st.encode_to_vec().into())
    }

    #[test]
    fn classification_follows_the_spec() {
        for c in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            assert_eq!(
                classify(&tonic::Status::new(c, "")),
                Verdict::Retry(None),
                "{c:?}"
            );
        }
        for c in [
            Code::ResourceExhausted,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::Internal,
        ] {
            assert_eq!(
                classify(&tonic::Status::new(c, "")),
                Verdict::Permanent,
                "{c:?}"
            );
        }
        assert_eq!(
            classify(&with_retry_info(Code::ResourceExhausted, 2)),
            Verdict::Retry(Some(Duration::from_millis(2500)))
        );
        assert_eq!(
            classify(&with_retry_info(Code::Unavailable, 0)),
            Verdict::Retry(Some(Duration::from_millis(500)))
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
            max_elapsed: Duration::from_secs(1),
        };
        let mut b = Backoff::new(&p);
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        let bounds = [100, 200, 400, 400, 400, 400];
        for (d, hi) in d.iter().zip(bounds) {
            assert!(
                *d >= Duration::from_millis(hi / 2) && *d <= Duration::from_millis(hi),
                "{d:?} not in [{}, {hi}] ms",
                hi / 2
            );
        }
    }
}
