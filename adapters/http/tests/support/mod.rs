//! Test chambers: tiny HTTP servers on loopback addresses, each behaving as its test scripts
//! (well, silent, trickling, flooding, garbled), counting what they see.

#![allow(dead_code, reason = "each test uses a part")]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::model::EndpointUrl;
use chamberlain_domain::ports::FetchRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The slot every test request carries.
pub const SLOT_MS: i64 = 1_764_000_123_456;

/// Everything a test waits on is bounded by this; a test that needs it has failed.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// `f`, or a panic if it has not finished by [`DEADLINE`].
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("finished before the deadline")
}

pub fn get(url: &str, timeout: Duration) -> FetchRequest {
    FetchRequest {
        url: EndpointUrl::parse(url).expect("valid test URL"),
        timeout,
        slot: Timestamp::from_unix_millis(SLOT_MS),
        attempt: 1,
    }
}

/// One request as the chamber read it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which accepted connection (0 for the first) it came on.
    pub connection: usize,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a chamber saw.
#[derive(Debug, Default)]
pub struct Stats {
    accepts: AtomicUsize,
    requests: Mutex<Vec<Received>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    changed: Notify,
    /// Bytes of body a flooding chamber wrote before the client went away.
    body_bytes_written: Mutex<Option<u64>>,
}

impl Stats {
    fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// Waits (up to [`DEADLINE`]) until `check` holds.
    pub async fn until(&self, check: impl Fn(&Self) -> bool) {
        within(async {
            loop {
                let changed = self.changed.notified();
                if check(self) {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }
}

/// A running test chamber; stops when dropped.
#[derive(Debug)]
pub struct TestChamber {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestChamber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestChamber {
    /// Listens on `ip`, port 0, and runs `handler` on every accepted connection.
    pub async fn start<H, F>(ip: &str, handler: H) -> Self
    where
        H: Fn(Conn) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind test chamber");
        let addr = listener.local_addr().expect("local addr");
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn({
            let stats = Arc::clone(&stats);
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let connection = stats.accepts.fetch_add(1, Ordering::SeqCst);
                    stats.changed();
                    tokio::spawn(handler(Conn {
                        stream,
                        buf: Vec::new(),
                        connection,
                        stats: Arc::clone(&stats),
                    }));
                }
            }
        });
        Self { addr, stats, task }
    }

    /// A chamber that answers every request on a connection with `status`, `headers` and
    /// `body`, keeping the connection open between requests.
    pub async fn answering(ip: &str, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Self {
        let response = response(status, headers, body);
        Self::start(ip, move |mut conn| {
            let response = response.clone();
            async move {
                while conn.read_request().await.is_some() {
                    if conn.write(&response).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn accepts(&self) -> usize {
        self.stats.accepts.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.stats
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.stats.max_in_flight.load(Ordering::SeqCst)
    }

    /// Waits for a flooding chamber to stop writing, and says how much body it wrote.
    pub async fn body_bytes_written(&self) -> u64 {
        self.stats
            .until(|s| {
                s.body_bytes_written
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some()
            })
            .await;
        self.stats
            .body_bytes_written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_default()
    }
}

/// An HTTP/1.1 response with a `Content-Length`, as bytes.
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} Whatever\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// One accepted connection, from the chamber's side.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    connection: usize,
    stats: Arc<Stats>,
}

impl Conn {
    /// Reads one request head and records it; `None` when the client closed the connection
    /// (or sent something that is not a request head).
    pub async fn read_request(&mut self) -> Option<Received> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                let text = String::from_utf8_lossy(&head);
                let mut lines = text.split("\r\n");
                let mut request_line = lines.next()?.split(' ');
                let method = request_line.next()?.to_owned();
                let target = request_line.next()?.to_owned();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                    .collect();
                let received = Received {
                    connection: self.connection,
                    method,
                    target,
                    headers,
                };
                self.stats
                    .requests
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(received.clone());
                self.stats.changed();
                return Some(received);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Waits until the client closes the connection, reading (and dropping) what it sends.
    pub async fn until_closed(&mut self) {
        let mut sink = [0u8; 4096];
        while let Ok(n) = self.stream.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    }

    /// Writes `total` bytes of body in 64 KiB writes until done or the client goes away, and
    /// records how many were written.
    pub async fn flood(&mut self, total: u64) {
        let chunk = vec![b'7'; 64 * 1024];
        let mut written = 0u64;
        while written < total {
            if self.stream.write_all(&chunk).await.is_err() {
                break;
            }
            written += chunk.len() as u64;
        }
        *self
            .stats
            .body_bytes_written
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(written);
        self.stats.changed();
    }

    /// Counts the request just read as in flight, and holds it until some two requests have
    /// been in flight at once or `at_most` has passed (a slow chamber): without pacing,
    /// parallel requests then overlap for sure; with pacing, each one waits `at_most`.
    pub async fn hold_until_overlap(&mut self, at_most: Duration) {
        let stats = Arc::clone(&self.stats);
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        stats.changed();
        let overlap = async {
            loop {
                let changed = stats.changed.notified();
                if stats.max_in_flight.load(Ordering::SeqCst) >= 2 {
                    return;
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout(at_most, overlap).await;
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        stats.changed();
    }
}

/// A chamber that speaks HTTPS with the certificate of `fixtures/` (for 127.0.0.2 and
/// `chamber.test`, issued by `fixtures/ca.pem`) and answers every request `200 {"tls":true}`.
#[derive(Debug)]
pub struct TlsChamber {
    pub addr: SocketAddr,
    /// Handshakes that completed.
    pub handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsChamber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const TLS_BODY: &[u8] = br#"{"tls":true}"#;

impl TlsChamber {
    pub async fn start(ip: &str) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let certs = CertificateDer::pem_slice_iter(include_bytes!("../fixtures/chamber.pem"))
            .collect::<Result<Vec<_>, _>>()
            .expect("fixture certificate");
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("../fixtures/chamber.key"))
            .expect("fixture key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((ip, 0)).await.expect("bind TLS chamber");
        let addr = listener.local_addr().expect("local addr");
        let handshakes = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let handshakes = Arc::clone(&handshakes);
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let handshakes = Arc::clone(&handshakes);
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        handshakes.fetch_add(1, Ordering::SeqCst);
                        let mut head = Vec::new();
                        let mut chunk = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let _ = tls.write_all(&response(200, &[], TLS_BODY)).await;
                        let _ = tls.flush().await;
                        let _ = tls.read(&mut chunk).await; // until the client closes
                    });
                }
            }
        });
        Self {
            addr,
            handshakes,
            task,
        }
    }
}
