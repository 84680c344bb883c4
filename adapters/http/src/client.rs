//! [`HttpChamberClient`]: the [`ChamberClient`] port over hyper's pooled HTTP/1.1 client.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chamberlain_domain::ports::{ChamberClient, FetchError, FetchRequest, FetchedResponse};
use http::header::{ACCEPT, USER_AGENT};
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::HttpClientConfig;
use crate::connect::{ConnectError, GuardedConnector, Tls};
use crate::pacing::Pacer;

/// The header carrying the poll's slot, in Unix milliseconds.
pub const SLOT_HEADER: HeaderName = HeaderName::from_static("chamberlain-slot");
/// The header carrying the attempt number of the poll (1 for the first try).
pub const ATTEMPT_HEADER: HeaderName = HeaderName::from_static("chamberlain-attempt");

/// Fetches chamber responses over HTTP/1.1 (and HTTPS), with pooled keep-alive connections,
/// the egress guard on every new connection, a total timeout per request, a cap on the body
/// and optional per-host pacing. Cheap to share: hold it in an `Arc`.
pub struct HttpChamberClient {
    client: Client<GuardedConnector, Empty<Bytes>>,
    pacer: Pacer,
    body_cap: usize,
    user_agent: HeaderValue,
}

impl fmt::Debug for HttpChamberClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpChamberClient")
            .field("body_cap", &self.body_cap)
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

impl HttpChamberClient {
    /// A client with its own connection pool. Needs no runtime to be built; fetches run on
    /// the Tokio runtime of their caller.
    pub fn new(config: &HttpClientConfig) -> Self {
        let connector = GuardedConnector::new(
            config.egress().clone(),
            config.connect_timeout(),
            tls_setup(config.tls_root_certificates()),
        );
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout())
            .pool_max_idle_per_host(config.pool_max_idle_per_host())
            .build(connector);
        Self {
            client,
            pacer: Pacer::new(config.pacing()),
            body_cap: config.body_cap(),
            user_agent: config.user_agent().clone(),
        }
    }

    async fn fetch_unbounded(&self, request: &FetchRequest) -> Result<FetchedResponse, FetchError> {
        let url = request.url.as_url();
        let uri: Uri = url.as_str().parse().map_err(|e| FetchError::Protocol {
            reason: format!("the URL cannot be requested: {e}"),
        })?;
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        let _turn = self.pacer.turn(&host).await;

        let http_request = Request::get(uri)
            .header(USER_AGENT, self.user_agent.clone())
            .header(ACCEPT, HeaderValue::from_static("*/*"))
            .header(SLOT_HEADER, request.slot.as_unix_millis())
            .header(ATTEMPT_HEADER, request.attempt)
            .body(Empty::new())
            .map_err(|e| FetchError::Protocol {
                reason: format!("the request cannot be built: {e}"),
            })?;
        let response = self
            .client
            .request(http_request)
            .await
            .map_err(|e| classify(&e))?;
        let status = response.status().as_u16();
        // Redirects are not followed: a 3xx is an answer like any other, and its Location is
        // never contacted.
        let body = read_capped(response.into_body(), self.body_cap).await?;
        Ok(FetchedResponse { status, body })
    }
}

#[async_trait]
impl ChamberClient for HttpChamberClient {
    /// # Errors
    /// - [`FetchError::Timeout`]: the whole request (waiting for its host's turn, connecting,
    ///   sending, the headers and the body) did not finish within `request.timeout`.
    /// - [`FetchError::Blocked`]: the egress policy refused the host's address.
    /// - [`FetchError::Connect`]: resolving, connecting, the TLS handshake or the connection
    ///   failed (reset, closed early), or connecting took longer than the connect timeout.
    /// - [`FetchError::TooLarge`]: the body (or its announced `Content-Length`) exceeds the cap.
    /// - [`FetchError::Protocol`]: the answer is not HTTP/1 this client can read.
    async fn fetch(&self, request: &FetchRequest) -> Result<FetchedResponse, FetchError> {
        match tokio::time::timeout(request.timeout, self.fetch_unbounded(request)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout),
        }
    }
}

/// Reads a body frame by frame, refusing it as soon as it would exceed `cap`: never holds more
/// than `cap` bytes of it, nor reads more than one frame past the cap. A body that announces a
/// larger size (`Content-Length`) is refused before any of it is read.
pub(crate) async fn read_capped<B>(mut body: B, cap: usize) -> Result<Vec<u8>, FetchError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let too_large = || FetchError::TooLarge {
        limit_bytes: cap as u64,
    };
    let hint = body.size_hint();
    if hint.lower() > cap as u64 {
        return Err(too_large());
    }
    let expected = hint
        .exact()
        .map_or(0, |n| usize::try_from(n).unwrap_or(cap));
    let mut buf = Vec::with_capacity(expected.min(cap));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| classify_body_error(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let len = buf.len() + data.len();
        if len > cap {
            return Err(too_large());
        }
        if len > buf.capacity() {
            // Grow as a Vec would, but never past the cap.
            let target = len.max(buf.capacity().saturating_mul(2)).min(cap);
            buf.reserve_exact(target - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf)
}

/// The TLS client configuration: ring, the Mozilla roots of webpki-roots and the operator's,
/// HTTP/1.1 by ALPN.
pub(crate) fn tls_setup(extra_roots: &[rustls::pki_types::CertificateDer<'static>]) -> Tls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Checked when the configuration was built; the count of those that fail is zero.
    let _ = roots.add_parsable_certificates(extra_roots.iter().cloned());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => {
            let mut config = builder.with_root_certificates(roots).with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Tls::Ready(tokio_rustls::TlsConnector::from(Arc::new(config)))
        }
        Err(e) => Tls::Unavailable(format!("TLS is unavailable: {e}")),
    }
}

/// Walks an error's sources for what went wrong.
pub(crate) fn sources<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

/// hyper-util's error to the port's: the connector's own verdict if it made one, else hyper's.
fn classify(e: &hyper_util::client::legacy::Error) -> FetchError {
    for source in sources(e) {
        if let Some(connect) = source.downcast_ref::<ConnectError>() {
            return match connect {
                ConnectError::Blocked(reason) => FetchError::Blocked {
                    reason: reason.clone(),
                },
                ConnectError::Unsupported(reason) => FetchError::Protocol {
                    reason: reason.clone(),
                },
                ConnectError::Failed(_) | ConnectError::TimedOut(_) => FetchError::Connect {
                    reason: connect.to_string(),
                },
            };
        }
        if let Some(hyper_error) = source.downcast_ref::<hyper::Error>() {
            return classify_hyper(hyper_error);
        }
    }
    if e.is_connect() {
        FetchError::Connect {
            reason: describe(e),
        }
    } else {
        FetchError::Protocol {
            reason: describe(e),
        }
    }
}

fn classify_body_error(e: Box<dyn StdError + Send + Sync>) -> FetchError {
    match e.downcast_ref::<hyper::Error>() {
        Some(hyper_error) => classify_hyper(hyper_error),
        None => FetchError::Connect {
            reason: describe(e.as_ref()),
        },
    }
}

/// Unreadable HTTP is a protocol error; a connection that failed or closed under the request
/// is a connection error (transient: a retry may find the chamber well).
fn classify_hyper(e: &hyper::Error) -> FetchError {
    let reason = describe(e);
    let invalid_data = sources(e).any(|s| {
        s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
    });
    if e.is_parse() || e.is_parse_status() || e.is_user() || invalid_data {
        FetchError::Protocol { reason }
    } else {
        FetchError::Connect { reason }
    }
}

/// "a: b: c" from an error and its sources, leaving out hyper-util's "client error (Kind)".
fn describe(e: &(dyn StdError + 'static)) -> String {
    let parts: Vec<String> = sources(e)
        .filter(|s| {
            s.downcast_ref::<hyper_util::client::legacy::Error>()
                .is_none()
        })
        .map(ToString::to_string)
        .collect();
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper::body::{Frame, SizeHint};

    use super::*;

    /// A body of `total` bytes in `frame`-sized frames, made as they are pulled, counting what
    /// was pulled.
    struct Endless {
        total: u64,
        frame: usize,
        pulled: Arc<std::sync::atomic::AtomicU64>,
        announce: bool,
    }

    impl Body for Endless {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let pulled = self.pulled.load(std::sync::atomic::Ordering::SeqCst);
            if pulled >= self.total {
                return Poll::Ready(None);
            }
            let n = (self.total - pulled).min(self.frame as u64);
            self.pulled
                .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n as usize])))))
        }

        fn size_hint(&self) -> SizeHint {
            if self.announce {
                SizeHint::with_exact(self.total)
            } else {
                SizeHint::default()
            }
        }
    }

    fn endless(
        total: u64,
        frame: usize,
        announce: bool,
    ) -> (Endless, Arc<std::sync::atomic::AtomicU64>) {
        let pulled = Arc::new(std::sync::atomic::AtomicU64::new(0));
        (
            Endless {
                total,
                frame,
                pulled: Arc::clone(&pulled),
                announce,
            },
            pulled,
        )
    }

    #[tokio::test]
    async fn a_body_past_the_cap_is_cut_within_one_frame() {
        let cap = 64 * 1024;
        let frame = 16 * 1024;
        let (body, pulled) = endless(50_000_000, frame, false);
        let err = read_capped(body, cap).await.unwrap_err();
        assert_eq!(
            err,
            FetchError::TooLarge {
                limit_bytes: cap as u64
            }
        );
        let pulled = pulled.load(std::sync::atomic::Ordering::SeqCst);
        assert!(pulled <= (cap + frame) as u64, "pulled {pulled} bytes");
    }

    #[tokio::test]
    async fn an_announced_length_past_the_cap_is_refused_before_reading() {
        let (body, pulled) = endless(50_000_000, 16 * 1024, true);
        let err = read_capped(body, 1024 * 1024).await.unwrap_err();
        assert_eq!(
            err,
            FetchError::TooLarge {
                limit_bytes: 1024 * 1024
            }
        );
        assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_body_up_to_the_cap_is_read_whole_in_bounded_memory() {
        let cap = 64 * 1024;
        for (total, frame, announce) in [
            (cap as u64, 1000, false),
            (cap as u64, 1000, true),
            (10, 3, false),
            (0, 1, true),
        ] {
            let (body, _) = endless(total, frame, announce);
            let read = read_capped(body, cap).await.unwrap();
            assert_eq!(read.len() as u64, total);
            assert!(read.capacity() <= cap, "capacity {}", read.capacity());
        }
    }
}
