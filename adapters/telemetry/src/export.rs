//! [`QueueingSpanProcessor`]: finished spans go into a bounded queue and are exported in
//! batches by a thread of their own. Ending a span never waits: when the queue is full (the
//! collector is slow or unreachable) the span is dropped and counted, and so is every span of a
//! batch whose export failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

/// Spans dropped (queue full, or their export failed) and exported, since the start.
#[derive(Debug, Default)]
pub struct SpanCounts {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
}

/// Whether the collector takes spans. After a failed export, spans are not wanted for a while
/// (1 s, doubling up to 30 s while failures go on): producers skip making them, so an
/// unreachable collector costs next to nothing. The next export after the pause probes it.
#[derive(Debug)]
pub struct ExportHealth {
    started: Instant,
    /// Milliseconds since `started` until which spans are not wanted (0: wanted).
    paused_until_ms: AtomicU64,
    backoff_ms: AtomicU64,
}

impl Default for ExportHealth {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            paused_until_ms: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(0),
        }
    }
}

const FIRST_PAUSE_MS: u64 = 1_000;
/// How soon a probe export follows the end of a pause.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const LONGEST_PAUSE_MS: u64 = 30_000;

impl ExportHealth {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether spans should be made and queued now.
    pub fn wanted(&self) -> bool {
        self.paused_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    fn failed(&self) {
        let backoff = self
            .backoff_ms
            .load(Ordering::Relaxed)
            .saturating_mul(2)
            .clamp(FIRST_PAUSE_MS, LONGEST_PAUSE_MS);
        self.backoff_ms.store(backoff, Ordering::Relaxed);
        self.paused_until_ms
            .store(self.now_ms() + backoff, Ordering::Relaxed);
    }

    /// Whether the last export failed (the next one is a probe).
    fn failing(&self) -> bool {
        self.backoff_ms.load(Ordering::Relaxed) > 0
    }

    fn succeeded(&self) {
        self.backoff_ms.store(0, Ordering::Relaxed);
        self.paused_until_ms.store(0, Ordering::Relaxed);
    }
}

enum Message {
    Resource(Box<Resource>),
    Span(Box<SpanData>),
    Flush(mpsc::Sender<()>),
    Shutdown(mpsc::Sender<()>),
}

/// Settings of the queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    pub capacity: usize,
    pub max_batch: usize,
    pub interval: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            capacity: 4096,
            max_batch: 512,
            interval: Duration::from_secs(2),
        }
    }
}

pub struct QueueingSpanProcessor {
    tx: SyncSender<Message>,
    counts: Arc<SpanCounts>,
    health: Arc<ExportHealth>,
    on_drop: Arc<dyn Fn(u64) + Send + Sync>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    shut: AtomicBool,
}

impl std::fmt::Debug for QueueingSpanProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueingSpanProcessor")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl QueueingSpanProcessor {
    /// Exports with `exporter` on a thread that runs its futures on `runtime` (the OTLP tonic
    /// exporter needs a Tokio runtime). `on_drop` is told of every drop (a metric counter).
    pub fn new<E: SpanExporter + 'static>(
        exporter: E,
        runtime: tokio::runtime::Handle,
        settings: QueueSettings,
        on_drop: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel(settings.capacity.max(1));
        let counts = Arc::new(SpanCounts::default());
        let health = Arc::new(ExportHealth::default());
        let thread_health = health.clone();
        let thread_counts = counts.clone();
        let thread_on_drop = on_drop.clone();
        let thread = std::thread::Builder::new()
            .name("chamberlain-span-export".into())
            .spawn(move || {
                let mut exporter = exporter;
                let mut batch: Vec<SpanData> = Vec::with_capacity(settings.max_batch);
                let mut next = Instant::now() + settings.interval;
                let export = |exporter: &E, batch: &mut Vec<SpanData>| {
                    if batch.is_empty() {
                        return;
                    }
                    let n = batch.len() as u64;
                    if !thread_health.wanted() {
                        // Paused after a failure: these were queued before it.
                        batch.clear();
                        thread_counts.dropped.fetch_add(n, Ordering::Relaxed);
                        thread_on_drop(n);
                        return;
                    }
                    match runtime.block_on(exporter.export(std::mem::take(batch))) {
                        Ok(()) => {
                            thread_health.succeeded();
                            thread_counts.exported.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            thread_health.failed();
                            thread_counts.dropped.fetch_add(n, Ordering::Relaxed);
                            thread_on_drop(n);
                            tracing::debug!(target: "chamberlain_telemetry", error = %e, spans = n, "span export failed; spans dropped");
                        }
                    }
                };
                loop {
                    let wait = next.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(Message::Resource(resource)) => exporter.set_resource(&resource),
                        Ok(Message::Span(span)) => {
                            batch.push(*span);
                            if batch.len() >= settings.max_batch {
                                export(&exporter, &mut batch);
                            }
                        }
                        Ok(Message::Flush(done)) => {
                            export(&exporter, &mut batch);
                            let _ = done.send(());
                        }
                        Ok(Message::Shutdown(done)) => {
                            export(&exporter, &mut batch);
                            let _ = exporter.shutdown();
                            let _ = done.send(());
                            return;
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            export(&exporter, &mut batch);
                            // While the collector fails, a probe goes out soon after the pause
                            // ends, so few spans are made before it is known to fail again.
                            next = Instant::now()
                                + if thread_health.failing() {
                                    PROBE_INTERVAL
                                } else {
                                    settings.interval
                                };
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            export(&exporter, &mut batch);
                            return;
                        }
                    }
                }
            })
            .ok();
        Self {
            tx,
            counts,
            health,
            on_drop,
            thread: std::sync::Mutex::new(thread),
            shut: AtomicBool::new(false),
        }
    }

    pub fn counts(&self) -> Arc<SpanCounts> {
        self.counts.clone()
    }

    pub fn health(&self) -> Arc<ExportHealth> {
        self.health.clone()
    }

    fn request(
        &self,
        make: impl FnOnce(mpsc::Sender<()>) -> Message,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (done, wait) = mpsc::channel();
        // A full queue: wait for room (flush and shutdown are not on any hot path).
        self.tx
            .send(make(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        wait.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueueingSpanProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if !self.health.wanted() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            (self.on_drop)(1);
            return;
        }
        match self.tx.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                (self.on_drop)(1);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.request(Message::Flush, Duration::from_secs(5))
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any span: the queue has room.
        let _ = self
            .tx
            .try_send(Message::Resource(Box::new(resource.clone())));
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.shut.swap(true, Ordering::SeqCst) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let result = self.request(Message::Shutdown, timeout);
        if result.is_ok()
            && let Some(thread) = self
                .thread
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        {
            let _ = thread.join();
        }
        result
    }
}
