//! The HTTP/1.1 server: one listener, one task per connection, keep-alive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::body::{self, Format, Reading, SimBody};
use crate::config::{ChamberBehaviour, ConfigError, CorruptKind, SimulatorConfig};
use crate::dice::Dice;
use crate::recorder::{Arrival, Outcome, Recorder};
use crate::report::SimulatorReport;

/// The header that carries the poll's slot, unix ms.
pub const SLOT_HEADER: &str = "chamberlain-slot";
/// The header that carries the attempt number, from 1.
pub const ATTEMPT_HEADER: &str = "chamberlain-attempt";

/// How long [`SimulatorHandle::shutdown`] waits for answers in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the simulator could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bind address could not be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Starts simulated fleets.
#[derive(Debug, Clone, Copy)]
pub struct Simulator;

impl Simulator {
    /// Binds `config.bind()` and serves the fleet until the handle is shut down or dropped.
    /// Must be called within a tokio runtime (with the time and I/O drivers).
    ///
    /// # Errors
    /// [`SimulatorError::Bind`] if the address cannot be listened on.
    pub async fn start(config: SimulatorConfig) -> Result<SimulatorHandle, SimulatorError> {
        let bind = config.bind();
        let bind_error = |source| SimulatorError::Bind { addr: bind, source };
        let listener = TcpListener::bind(bind).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            recorder: Recorder::new(config.chambers()),
            dice: Dice::new(config.seed()),
            corruptions: AtomicU64::new(0),
            stopped: stopped.clone(),
            config,
        });
        tracing::info!(
            %addr,
            chambers = shared.config.chambers(),
            detectors = shared.config.detectors(),
            "simulator listening"
        );
        let task = tokio::spawn(serve(listener, Arc::clone(&shared), stopped));
        Ok(SimulatorHandle {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it stops the server too, without waiting.
#[derive(Debug)]
pub struct SimulatorHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SimulatorHandle {
    /// The address the simulator listens on (the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SimulatorConfig {
        &self.shared.config
    }

    /// `http://ADDR/chambers/{chamber}` or `http://ADDR/chambers/{chamber}/metrics`.
    pub fn chamber_url(&self, chamber: u32, format: Format) -> String {
        match format {
            Format::Json => format!("http://{}/chambers/{chamber}", self.addr),
            Format::Prometheus => format!("http://{}/chambers/{chamber}/metrics", self.addr),
        }
    }

    /// [`chamber_url`](Self::chamber_url) with a literal `{i}` for the chamber number.
    pub fn url_pattern(&self, format: Format) -> String {
        match format {
            Format::Json => format!("http://{}/chambers/{{i}}", self.addr),
            Format::Prometheus => format!("http://{}/chambers/{{i}}/metrics", self.addr),
        }
    }

    /// `http://ADDR/report`, which answers the JSON [`SimulatorReport`] to `GET`; `DELETE`
    /// [resets](Self::reset) it (answered `204`), starting a new measurement window.
    pub fn report_url(&self) -> String {
        format!("http://{}/report", self.addr)
    }

    /// What was recorded since the start or the last [`reset`](Self::reset).
    pub fn report(&self) -> SimulatorReport {
        self.shared.recorder.report(&self.shared.config)
    }

    /// Forgets everything recorded so far (and restarts the cycle of corruption kinds).
    pub fn reset(&self) {
        self.shared.recorder.reset();
        self.shared.corruptions.store(0, Ordering::Relaxed);
    }

    /// Stops accepting connections, answers hung requests `503`, waits up to
    /// [`DRAIN_TIMEOUT`] for answers in flight, and returns the final report.
    pub async fn shutdown(mut self) -> SimulatorReport {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::error!(%error, "simulator server task failed");
        }
        tracing::info!(addr = %self.addr, "simulator stopped");
        self.report()
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    config: SimulatorConfig,
    recorder: Recorder,
    dice: Dice,
    /// Corruptions injected by rate, to cycle through the kinds.
    corruptions: AtomicU64,
    stopped: watch::Receiver<bool>,
}

impl Shared {
    /// Error, corruption or a normal answer, by the configured rates.
    fn draw_outcome(&self) -> Outcome {
        if self.dice.happens(self.config.error_rate) {
            Outcome::ServerError
        } else if self.dice.happens(self.config.corrupt_rate) {
            let n = self.corruptions.fetch_add(1, Ordering::Relaxed);
            Outcome::Corrupt(CorruptKind::ALL[(n % 3) as usize])
        } else {
            Outcome::Answered
        }
    }

    /// Base latency plus a uniform draw from `0..=jitter`.
    fn draw_latency(&self) -> Duration {
        let jitter = self.config.jitter;
        if jitter.is_zero() {
            self.config.latency
        } else {
            let extra = Duration::from_nanos((jitter.as_nanos() as f64 * self.dice.unit()) as u64);
            self.config.latency + extra
        }
    }
}

async fn wait_stopped(stopped: &mut watch::Receiver<bool>) {
    // An error means the handle is gone: stop as well.
    let _ = stopped.wait_for(|stopped| *stopped).await;
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let http = http1::Builder::new();
    loop {
        let stream = tokio::select! {
            () = wait_stopped(&mut stopped) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "simulator cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let shared = Arc::clone(&shared);
        let service = service_fn(move |request| handle(Arc::clone(&shared), request));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "simulator connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_ms = DRAIN_TIMEOUT.as_millis() as u64,
            "simulator connections still busy at shutdown"
        );
    }
}

/// Which resource a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Chamber(u32, Format),
    Report,
    NotFound,
}

fn route(path: &str) -> Route {
    if path == "/report" {
        return Route::Report;
    }
    let Some(rest) = path.strip_prefix("/chambers/") else {
        return Route::NotFound;
    };
    let (number, format) = match rest.strip_suffix("/metrics") {
        Some(number) => (number, Format::Prometheus),
        None => (rest, Format::Json),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Route::NotFound;
    }
    // Too large for u32: certainly not one of ours.
    Route::Chamber(number.parse().unwrap_or(u32::MAX), format)
}

fn header<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<SimBody>, Infallible> {
    let arrival = Arrival {
        at: Instant::now(),
        wall_ms: shared.config.clock.now().as_unix_millis(),
    };
    let path_route = route(request.uri().path());
    if request.method() == Method::DELETE && path_route == Route::Report {
        // A new measurement window: what was recorded so far is forgotten.
        shared.recorder.reset();
        shared.corruptions.store(0, Ordering::Relaxed);
        let mut response = plain(StatusCode::NO_CONTENT, "");
        response.headers_mut().remove(CONTENT_TYPE);
        return Ok(response);
    }
    if request.method() != Method::GET {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET (and DELETE /report)\n",
        ));
    }
    Ok(match path_route {
        Route::Report => report_response(&shared),
        Route::NotFound => plain(StatusCode::NOT_FOUND, "not found\n"),
        Route::Chamber(chamber, format) => {
            let slot = header::<i64>(request.headers(), SLOT_HEADER);
            let attempt = header::<u32>(request.headers(), ATTEMPT_HEADER);
            drop(request);
            answer_chamber(&shared, chamber, format, slot, attempt, arrival).await
        }
    })
}

async fn answer_chamber(
    shared: &Shared,
    chamber: u32,
    format: Format,
    slot: Option<i64>,
    attempt: Option<u32>,
    arrival: Arrival,
) -> Response<SimBody> {
    let config = &shared.config;
    if chamber >= config.chambers() {
        shared.recorder.record_unknown_chamber(arrival);
        return plain(StatusCode::NOT_FOUND, "no such chamber\n");
    }
    let behaviour = if config.behaviours.is_empty() {
        ChamberBehaviour::Normal
    } else {
        config.behaviour(chamber)
    };
    let (outcome, delay) = match behaviour {
        ChamberBehaviour::Normal => (shared.draw_outcome(), shared.draw_latency()),
        ChamberBehaviour::Delay(delay) => (shared.draw_outcome(), delay),
        ChamberBehaviour::Hang => (Outcome::Hung, Duration::ZERO),
        ChamberBehaviour::ServerError => (Outcome::ServerError, shared.draw_latency()),
        ChamberBehaviour::Corrupt(kind) => (Outcome::Corrupt(kind), shared.draw_latency()),
        ChamberBehaviour::Oversized { .. } => (Outcome::Oversized, shared.draw_latency()),
    };
    shared
        .recorder
        .record(chamber, arrival, slot, attempt, outcome);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reading = Reading {
        chamber,
        detectors: config.detectors(),
        slot_unix_ms: slot.unwrap_or(arrival.wall_ms),
    };
    let body = match (outcome, behaviour) {
        (Outcome::Hung, _) => {
            wait_stopped(&mut shared.stopped.clone()).await;
            return plain(StatusCode::SERVICE_UNAVAILABLE, "simulator shutting down\n");
        }
        (Outcome::ServerError, _) => {
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "simulated failure\n");
        }
        (Outcome::Oversized, ChamberBehaviour::Oversized { bytes }) => {
            body::oversized(format, reading, bytes)
        }
        (Outcome::Corrupt(kind), _) => SimBody::full(body::render(format, reading, Some(kind))),
        _ => SimBody::full(body::render(format, reading, None)),
    };
    let content_type = match format {
        Format::Json => "application/json",
        Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
    };
    with_type(Response::new(body), content_type)
}

fn report_response(shared: &Shared) -> Response<SimBody> {
    match serde_json::to_vec(&shared.recorder.report(&shared.config)) {
        Ok(json) => with_type(Response::new(SimBody::full(json)), "application/json"),
        Err(error) => {
            tracing::error!(%error, "cannot serialise the simulator report");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot serialise the report\n",
            )
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<SimBody> {
    let mut response = with_type(
        Response::new(SimBody::full(bytes::Bytes::from_static(text.as_bytes()))),
        "text/plain; charset=utf-8",
    );
    *response.status_mut() = status;
    response
}

fn with_type(mut response: Response<SimBody>, content_type: &'static str) -> Response<SimBody> {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/chambers/12"), Route::Chamber(12, Format::Json));
        assert_eq!(
            route("/chambers/12/metrics"),
            Route::Chamber(12, Format::Prometheus)
        );
        assert_eq!(
            route("/chambers/99999999999"),
            Route::Chamber(u32::MAX, Format::Json)
        );
        assert_eq!(route("/report"), Route::Report);
        for path in [
            "/",
            "/chambers/",
            "/chambers/x",
            "/chambers/-1",
            "/chambers/1/",
            "/chambers//metrics",
        ] {
            assert_eq!(route(path), Route::NotFound, "{path}");
        }
    }
}
