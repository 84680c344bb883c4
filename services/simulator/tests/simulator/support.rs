//! A minimal HTTP/1.1 client and the fixtures every test uses.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chamberlain_domain::Timestamp;
use chamberlain_fakes::ManualClock;
use chamberlain_simulator::{
    ATTEMPT_HEADER, SLOT_HEADER, Simulator, SimulatorConfigBuilder, SimulatorHandle,
};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The wall-clock time of the manual clock tests start at (2023-11-14T22:13:20Z).
pub const T0: i64 = 1_700_000_000_000;

/// A fleet on a manual clock standing at [`T0`], so that lateness is exact.
pub fn fleet(chambers: u32, detectors: u32) -> (SimulatorConfigBuilder, Arc<ManualClock>) {
    let clock = ManualClock::at(Timestamp::from_unix_millis(T0));
    let builder = chamberlain_simulator::SimulatorConfig::builder()
        .chambers(chambers)
        .detectors(detectors)
        .clock(clock.clone());
    (builder, clock)
}

pub async fn start(builder: SimulatorConfigBuilder) -> SimulatorHandle {
    Simulator::start(builder.build().expect("valid config"))
        .await
        .expect("simulator starts")
}

/// One answer, body read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct Client {
    sender: SendRequest<Empty<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Self { sender }
    }

    /// GET `path` with the slot and attempt headers when given.
    pub async fn get(&mut self, path: &str, slot: Option<i64>, attempt: Option<u32>) -> Answer {
        self.request(Method::GET, path, slot, attempt)
            .await
            .expect("answer")
    }

    pub fn request(
        &mut self,
        method: Method,
        path: &str,
        slot: Option<i64>,
        attempt: Option<u32>,
    ) -> impl Future<Output = Result<Answer, hyper::Error>> + Send + 'static {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "simulator");
        if let Some(slot) = slot {
            request = request.header(SLOT_HEADER, slot.to_string());
        }
        if let Some(attempt) = attempt {
            request = request.header(ATTEMPT_HEADER, attempt.to_string());
        }
        let response = self
            .sender
            .send_request(request.body(Empty::new()).expect("request"));
        async move {
            let response = response.await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await?.to_bytes();
            Ok(Answer {
                status,
                headers,
                body,
            })
        }
    }
}

/// Waits until `condition` holds, failing after a generous deadline.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
