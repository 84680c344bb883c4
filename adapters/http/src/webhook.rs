//! [`WebhookClient`]: the [`DeliveryClient`] port for webhook transmitters. Each delivery is one
//! HTTP POST of its JSON body, signed so the receiver can tell it came from Chamberlain and was
//! not replayed long after: `Chamberlain-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>" under the transmitter's secret>`. Connections go through the same egress guard
//! as chamber polls.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use chamberlain_domain::ports::{DeliveryClient, DeliveryError};
use chamberlain_domain::transmit::{Delivery, Destination, Transmitter};
use hmac::{KeyInit, Mac};
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::client::{sources, tls_setup};
use crate::config::HttpClientConfig;
use crate::connect::{ConnectError, GuardedConnector};

/// The signature header.
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("chamberlain-signature");
/// What the delivery carries: `readings`, `alert_opened` or `alert_resolved`.
pub const KIND_HEADER: HeaderName = HeaderName::from_static("chamberlain-kind");
/// The delivery's topic (`chambers/<id>/alerts`, ...).
pub const TOPIC_HEADER: HeaderName = HeaderName::from_static("chamberlain-topic");

/// How long one POST may take, connecting included.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The signature header's value for `body` at `unix_seconds` under `secret`.
pub fn sign(secret: &str, unix_seconds: u64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix_seconds},v1={hex}")
}

/// Posts webhook deliveries. Cheap to share: hold it in an `Arc`.
pub struct WebhookClient {
    client: Client<GuardedConnector, Full<Bytes>>,
    user_agent: HeaderValue,
    timeout: Duration,
}

impl fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookClient {
    /// A client with the egress policy, connect timeout, TLS roots and user agent of `config`.
    pub fn new(config: &HttpClientConfig) -> Self {
        let connector = GuardedConnector::new(
            config.egress().clone(),
            config.connect_timeout(),
            tls_setup(config.tls_root_certificates()),
        );
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            client,
            user_agent: config.user_agent().clone(),
            timeout: WEBHOOK_TIMEOUT,
        }
    }

    /// Changes how long one POST may take (default [`WEBHOOK_TIMEOUT`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn post(&self, uri: Uri, secret: &str, delivery: &Delivery) -> Result<(), DeliveryError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let body = Bytes::from(delivery.body.clone());
        let permanent = |reason: String| DeliveryError::Permanent { reason };
        let request = Request::post(uri)
            .header(USER_AGENT, self.user_agent.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(KIND_HEADER, delivery.kind.as_str())
            .header(TOPIC_HEADER, delivery.topic.as_str())
            .header(SIGNATURE_HEADER, sign(secret, now, &body))
            .body(Full::new(body))
            .map_err(|e| permanent(format!("the request cannot be built: {e}")))?;
        let response = self.client.request(request).await.map_err(|e| {
            for source in sources(&e) {
                match source.downcast_ref::<ConnectError>() {
                    Some(ConnectError::Blocked(reason)) => {
                        return DeliveryError::Blocked {
                            reason: reason.clone(),
                        };
                    }
                    Some(ConnectError::Unsupported(reason)) => return permanent(reason.clone()),
                    _ => {}
                }
            }
            DeliveryError::Transient {
                reason: format!("the webhook could not be reached: {}", error_chain(&e)),
            }
        })?;
        let status = response.status();
        // Drain (a little of) the body so the connection can be reused.
        let _ = response.into_body().collect().await;
        match status.as_u16() {
            200..=299 => Ok(()),
            408 | 425 | 429 | 500..=599 => Err(DeliveryError::Transient {
                reason: format!("the webhook answered HTTP {status}"),
            }),
            _ => Err(permanent(format!("the webhook answered HTTP {status}"))),
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    sources(e)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

#[async_trait]
impl DeliveryClient for WebhookClient {
    /// # Errors
    /// `Transient`: not reached, timed out, or HTTP 408, 425, 429 or 5xx. `Blocked`: an
    /// address the egress policy refuses. `Permanent`: another non-2xx status (redirects are
    /// not followed), or a transmitter that is not a webhook.
    async fn deliver(
        &self,
        transmitter: &Transmitter,
        delivery: &Delivery,
    ) -> Result<(), DeliveryError> {
        let Destination::Webhook { url, secret } = &transmitter.destination else {
            return Err(DeliveryError::Permanent {
                reason: "not a webhook transmitter".into(),
            });
        };
        let uri: Uri = url
            .as_url()
            .as_str()
            .parse()
            .map_err(|e| DeliveryError::Permanent {
                reason: format!("the URL cannot be requested: {e}"),
            })?;
        match tokio::time::timeout(self.timeout, self.post(uri, secret.expose(), delivery)).await {
            Ok(result) => result,
            Err(_) => Err(DeliveryError::Transient {
                reason: format!("the webhook did not answer within {:?}", self.timeout),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // Computed independently, with Python's hmac module:
        // hmac.new(b"0123456789abcdef", b"1700000000.{}", hashlib.sha256).hexdigest()
        let header = sign("0123456789abcdef", 1_700_000_000, b"{}");
        assert_eq!(
            header,
            "t=1700000000,v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
        assert_ne!(header, sign("0123456789abcdeg", 1_700_000_000, b"{}"));
        assert_ne!(header, sign("0123456789abcdef", 1_700_000_001, b"{}"));
    }
}
