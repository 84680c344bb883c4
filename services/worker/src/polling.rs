//! The worker's own layers and the service at their centre:
//! - [`PollSpanLayer`] opens each traced poll's span, continuing the W3C trace context the job
//!   carries (the scheduler's), and pairs the job's outcome with it for the settle layer.
//! - [`PollService`] runs the poll handler's stages (prepare, send, interpret), each in a span
//!   of its own when the poll is traced.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use apalis_core::error::BoxDynError;
use apalis_core::layers::{Layer, Service};
use apalis_core::task::Task;
use chamberlain_domain::model::PollJob;
use chamberlain_domain::ports::StoreError;
use chamberlain_domain::usecases::{JobOutcome, PollHandler, Prepared};
use chamberlain_telemetry::instruments;
use tracing::Instrument as _;

use crate::settle::Polled;

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A traced poll's span, in the task's data for the stages to hang theirs on.
#[derive(Debug, Clone)]
struct PollSpan(tracing::Span);

/// Opens a span per poll when polls are traced (and the exporter has room), continuing the
/// trace the job carries.
#[derive(Debug, Clone, Copy)]
pub struct PollSpanLayer {
    pub trace_polls: bool,
}

impl<S> Layer<S> for PollSpanLayer {
    type Service = PollSpanService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PollSpanService {
            inner,
            trace_polls: self.trace_polls,
        }
    }
}

/// See [`PollSpanLayer`].
#[derive(Debug, Clone)]
pub struct PollSpanService<S> {
    inner: S,
    trace_polls: bool,
}

impl<S> Service<Task<PollJob>> for PollSpanService<S>
where
    S: Service<Task<PollJob>, Response = JobOutcome>,
    S::Future: Send + 'static,
{
    type Response = Polled;
    type Error = S::Error;
    type Future = Boxed<Result<Polled, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut task: Task<PollJob>) -> Self::Future {
        let traced = self.trace_polls && chamberlain_telemetry::traces_wanted();
        if self.trace_polls && !traced {
            instruments().traces_skipped.add(1, &[]);
        }
        let span = if traced {
            let job = &task.args;
            let span = tracing::info_span!(
                "poll",
                chamber.id = %job.poll.chamber_id,
                slot = job.poll.slot.as_unix_millis(),
                attempt = job.meta.attempt,
            );
            if let Some(trace) = &job.meta.trace {
                chamberlain_telemetry::continue_trace(&span, trace);
            }
            task.inject_data(PollSpan(span.clone()));
            span
        } else {
            tracing::Span::none()
        };
        let handled = self.inner.call(task);
        Box::pin(async move { handled.await.map(|outcome| Polled { outcome, span }) })
    }
}

/// The poll handler as the worker's service: one job in, its outcome out.
#[derive(Debug, Clone)]
pub struct PollService {
    handler: Arc<PollHandler>,
}

impl PollService {
    pub fn new(handler: PollHandler) -> Self {
        Self {
            handler: Arc::new(handler),
        }
    }
}

impl Service<Task<PollJob>> for PollService {
    type Response = JobOutcome;
    type Error = BoxDynError;
    type Future = Boxed<Result<JobOutcome, BoxDynError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<PollJob>) -> Self::Future {
        let span = task
            .data()
            .get::<PollSpan>()
            .map_or_else(tracing::Span::none, |s| s.0.clone());
        let handler = self.handler.clone();
        let job = task.args;
        let parent = span.clone();
        // Each poll on a task of its own, so polls use every core; aborted if the worker's
        // timeout gives up on it. (Running them in the worker's task instead was measured: the
        // same CPU per poll at 5,000 chambers, docs/BENCHMARKS.md.)
        let poll = async move {
            let _in_flight = InFlight::start();
            run_stages(&handler, &job, &parent).await
        };
        // Instrumented only when traced: an empty span still costs a poll wrapper per wake.
        let polling = AbortOnDrop(if span.is_none() {
            tokio::spawn(poll)
        } else {
            tokio::spawn(poll.instrument(span))
        });
        Box::pin(async move {
            match polling.await {
                Ok(outcome) => outcome.map_err(Into::into),
                Err(e) => Err(format!("the poll's task failed: {e}").into()),
            }
        })
    }
}

/// A spawned task, aborted when its handle is dropped before it finished.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A poll counted in the in-flight gauge until it ends or is cancelled.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        instruments().in_flight.add(1, &[]);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        instruments().in_flight.add(-1, &[]);
    }
}

/// A child of a traced poll's span (none when the poll is not traced).
fn stage(poll: &tracing::Span, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if poll.is_none() {
        tracing::Span::none()
    } else {
        make()
    }
}

/// The handler's stages for one job, each in a span of its own when the poll is traced.
async fn run_stages(
    handler: &PollHandler,
    job: &PollJob,
    span: &tracing::Span,
) -> Result<JobOutcome, StoreError> {
    let attempt = match handler.prepare(job).await? {
        Prepared::Decided(outcome) => return Ok(outcome),
        Prepared::Send(attempt) => attempt,
    };
    let answer = handler
        .send(&attempt)
        .instrument(stage(
            span,
            || tracing::info_span!(parent: span, "poll.fetch"),
        ))
        .await;
    let parse = stage(
        span,
        || tracing::info_span!(parent: span, "poll.parse", status = tracing::field::Empty),
    );
    if let Ok(response) = &answer.result {
        parse.record("status", response.status);
    }
    handler.interpret(attempt, answer).instrument(parse).await
}
