//! [`GuardedConnector`]: the only way the client opens connections. It resolves a host name
//! once, checks every address against the egress policy, connects to a checked address (never
//! resolving again) and, for `https`, runs the TLS handshake on that socket.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use chamberlain_domain::egress::EgressPolicy;

/// Why no connection was opened. Carried through hyper-util's error as its source, and turned
/// into a `FetchError` by the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The egress policy refused the destination: no packet was sent to it.
    #[error("{0}")]
    Blocked(String),
    /// Resolution, TCP or TLS failed.
    #[error("{0}")]
    Failed(String),
    /// Resolving, connecting and the TLS handshake took longer than the connect timeout.
    #[error("connecting took longer than {0:?}")]
    TimedOut(Duration),
    /// The URL cannot be fetched over a connection this connector opens.
    #[error("{0}")]
    Unsupported(String),
}

/// The TLS setup shared by every `https` connection, or why there is none.
#[derive(Clone)]
pub(crate) enum Tls {
    Ready(TlsConnector),
    Unavailable(String),
}

struct Inner {
    egress: EgressPolicy,
    connect_timeout: Duration,
    tls: Tls,
}

/// A hyper-util connector (`tower_service::Service<Uri>`) that enforces the egress policy.
#[derive(Clone)]
pub(crate) struct GuardedConnector {
    inner: Arc<Inner>,
}

impl GuardedConnector {
    pub(crate) fn new(egress: EgressPolicy, connect_timeout: Duration, tls: Tls) -> Self {
        Self {
            inner: Arc::new(Inner {
                egress,
                connect_timeout,
                tls,
            }),
        }
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<ChamberStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let limit = inner.connect_timeout;
            match tokio::time::timeout(limit, inner.connect(&uri)).await {
                Ok(result) => result.map(TokioIo::new),
                Err(_) => Err(ConnectError::TimedOut(limit)),
            }
        })
    }
}

impl Inner {
    async fn connect(&self, uri: &Uri) -> Result<ChamberStream, ConnectError> {
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            other => {
                return Err(ConnectError::Unsupported(format!(
                    "scheme {:?} is not supported (http or https)",
                    other.unwrap_or("")
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| ConnectError::Unsupported("the URL names no host".into()))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        // `Uri::host` keeps the brackets of an IPv6 literal.
        let bare_host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);

        let addrs = self.checked_addresses(bare_host, port).await?;
        let tcp = connect_to_any(&addrs).await?;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        if !https {
            return Ok(ChamberStream::Plain(tcp));
        }
        let connector = match &self.tls {
            Tls::Ready(connector) => connector,
            Tls::Unavailable(why) => return Err(ConnectError::Failed(why.clone())),
        };
        let server_name = ServerName::try_from(bare_host.to_owned()).map_err(|e| {
            ConnectError::Failed(format!(
                "{bare_host} cannot be checked against a TLS certificate: {e}"
            ))
        })?;
        let tls = connector.connect(server_name, tcp).await.map_err(|e| {
            ConnectError::Failed(format!("TLS handshake with {bare_host} failed: {e}"))
        })?;
        Ok(ChamberStream::Tls(Box::new(tls)))
    }

    /// The addresses to connect to, every one allowed by the egress policy. An IP literal is
    /// checked as is; a name is resolved once, here, and refused if any of its addresses is.
    async fn checked_addresses(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, ConnectError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.egress
                .check(ip)
                .map_err(|refusal| ConnectError::Blocked(refusal.to_string()))?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ConnectError::Failed(format!("cannot resolve {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(ConnectError::Failed(format!(
                "{host} resolves to no address"
            )));
        }
        for addr in &addrs {
            self.egress
                .check(addr.ip())
                .map_err(|refusal| ConnectError::Blocked(format!("{host}: {refusal}")))?;
        }
        let mut seen = Vec::with_capacity(addrs.len());
        addrs.retain(|a| {
            let new = !seen.contains(a);
            seen.push(*a);
            new
        });
        tracing::trace!(host, addresses = ?addrs, "resolved chamber host");
        Ok(addrs)
    }
}

/// Connects to the first address that accepts, in the resolver's order.
async fn connect_to_any(addrs: &[SocketAddr]) -> Result<TcpStream, ConnectError> {
    let mut last: Option<(SocketAddr, io::Error)> = None;
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some((addr, e)),
        }
    }
    Err(match last {
        Some((addr, e)) => ConnectError::Failed(format!("cannot connect to {addr}: {e}")),
        None => ConnectError::Failed("no address to connect to".into()),
    })
}

/// A connection to a chamber: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub(crate) enum ChamberStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for ChamberStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for ChamberStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ChamberStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
