//! [`BoardBackend`]: the poll queue as apalis-board sees a backend — apalis-core's inspection
//! traits (`ListQueues`, `ListWorkers`, `ListTasks`, `ListAllTasks`, `Metrics`, `FetchById`)
//! over the domain's read-only [`QueueInspector`]. It never runs jobs (its stream is empty) and
//! refuses every push: the queue on the console only looks.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::codec::Codec;
use apalis_core::backend::queue::Queue;
use apalis_core::backend::{
    Backend, BackendConfig, FetchById, Filter, ListAllTasks, ListQueues, ListTasks, ListWorkers,
    Metrics, QueueInfo, RunningWorker, StatType, Statistic, WireFormatBackend,
};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::status::Status;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use chamberlain_domain::ports::{
    Clock, PollQueue, QueueConsumer, QueueError, QueueInspector, QueuedJob, QueuedJobState,
};
use serde_json::Value;

/// The one queue's name on the board.
pub const QUEUE_NAME: &str = "polls";

/// Workers that asked for jobs within this long are listed (and any holding jobs).
const WORKERS_SEEN_WITHIN: Duration = Duration::from_secs(60);

/// What every Chamberlain worker runs a poll through (services/worker), outside in.
const WORKER_LAYERS: &str = "SettleLayer, PollSpanLayer, ConcurrencyLimit, Timeout, PollService";

/// Why the board could not answer.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A push through the board: the queue view is read-only.
    #[error("the queue view is read-only: polls are enqueued by the scheduler")]
    ReadOnly,
}

/// Jobs travel to the board as JSON values (a `PollJob` as the queue stores it).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonValues;

impl Codec<Value> for JsonValues {
    type Error = Infallible;
    type Compact = Value;

    fn encode(&self, val: &Value) -> Result<Value, Infallible> {
        Ok(val.clone())
    }

    fn decode(&self, val: &Value) -> Result<Value, Infallible> {
        Ok(val.clone())
    }
}

/// The poll queue, for apalis-board.
#[derive(Clone)]
pub struct BoardBackend {
    queue: Arc<dyn PollQueue>,
    inspector: Arc<dyn QueueInspector>,
    clock: Arc<dyn Clock>,
    /// Which queue this is (`redis`, `in-process`), shown beside each worker.
    kind: &'static str,
    codec: JsonValues,
}

impl std::fmt::Debug for BoardBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoardBackend")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl BoardBackend {
    pub fn new(
        queue: Arc<dyn PollQueue>,
        inspector: Arc<dyn QueueInspector>,
        clock: Arc<dyn Clock>,
        kind: &'static str,
    ) -> Self {
        Self {
            queue,
            inspector,
            clock,
            kind,
            codec: JsonValues,
        }
    }

    fn unix_secs_ago(&self, idle: Duration) -> u64 {
        let now = self.clock.now().as_unix_millis();
        let millis = u64::try_from(now).unwrap_or(0);
        millis.saturating_sub(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX)) / 1000
    }

    fn worker(&self, consumer: &QueueConsumer) -> RunningWorker {
        let seen = self.unix_secs_ago(consumer.idle);
        RunningWorker {
            id: consumer.name.clone(),
            queue: QUEUE_NAME.to_owned(),
            backend: format!(
                "chamberlain {} queue ({} leased)",
                self.kind, consumer.leased
            ),
            // The queue knows when a worker last asked for jobs, not when it started.
            started_at: seen,
            last_heartbeat: seen,
            layers: WORKER_LAYERS.to_owned(),
        }
    }

    async fn workers(&self) -> Result<Vec<RunningWorker>, BoardError> {
        Ok(self
            .inspector
            .consumers(WORKERS_SEEN_WITHIN)
            .await?
            .iter()
            .map(|c| self.worker(c))
            .collect())
    }

    /// The queue's depth under the titles apalis-board knows (it labels and counts by them).
    async fn statistics(&self) -> Result<Vec<Statistic>, BoardError> {
        let depth = self.queue.depth().await?;
        let number = |title: &str, value: u64, priority: u64| Statistic {
            title: title.to_owned(),
            stat_type: StatType::Number,
            value: value.to_string(),
            priority: Some(priority),
        };
        let mut stats = vec![
            number("TOTAL_JOBS", depth.ready + depth.leased + depth.delayed, 1),
            number("PENDING_JOBS", depth.ready, 2),
            number("RUNNING_JOBS", depth.leased, 3),
        ];
        if let Some(oldest) = depth.oldest_ready_enqueued_at {
            stats.push(Statistic {
                title: "OLDEST_PENDING_JOB".to_owned(),
                stat_type: StatType::Timestamp,
                value: (oldest.as_unix_millis() / 1000).to_string(),
                priority: Some(4),
            });
        }
        Ok(stats)
    }

    /// A page of jobs: one state, or (no status) leased, then ready, then delayed.
    async fn tasks(&self, filter: &Filter) -> Result<Vec<Task<Value>>, BoardError> {
        // Not `Filter::offset`, which overflows on `page=0`.
        let limit = filter.limit().min(500) as usize;
        let offset = (filter.page.max(1) as usize - 1).saturating_mul(limit);
        let states: &[QueuedJobState] = match filter.status {
            None => &[
                QueuedJobState::Leased,
                QueuedJobState::Ready,
                QueuedJobState::Delayed,
            ],
            Some(Status::Pending) => &[QueuedJobState::Ready],
            Some(Status::Running) => &[QueuedJobState::Leased],
            Some(Status::Queued) => &[QueuedJobState::Delayed],
            // Finished polls are in the poll ledger, not in the queue.
            Some(_) => &[],
        };
        let depth = self.queue.depth().await?;
        let mut skip = offset;
        let mut out = Vec::new();
        for &state in states {
            if out.len() >= limit {
                break;
            }
            let count = match state {
                QueuedJobState::Leased => depth.leased,
                QueuedJobState::Ready => depth.ready,
                QueuedJobState::Delayed => depth.delayed,
            } as usize;
            if states.len() > 1 && skip >= count {
                skip -= count;
                continue;
            }
            let jobs = self.inspector.jobs(state, skip, limit - out.len()).await?;
            skip = 0;
            out.extend(jobs.into_iter().map(task));
        }
        Ok(out)
    }
}

/// A queued job as an apalis task: its id, the poll job as JSON, its attempt, its state as a
/// status (ready: pending, as apalis calls a task no worker has taken; leased: running;
/// delayed, released for a retry: queued), its slot as the time to run, and the worker holding
/// it.
fn task(queued: QueuedJob) -> Task<Value> {
    let status = match queued.state {
        QueuedJobState::Ready => Status::Pending,
        QueuedJobState::Leased => Status::Running,
        QueuedJobState::Delayed => Status::Queued,
    };
    let slot_secs = u64::try_from(queued.job.poll.slot.as_unix_millis() / 1000).unwrap_or(0);
    TaskBuilder::new(serde_json::to_value(&queued.job).unwrap_or(Value::Null))
        .task_id(TaskId::from(queued.id))
        .attempt(queued.job.meta.attempt as usize)
        .status(status)
        .run_at_timestamp(slot_secs)
        .lock_by(queued.consumer)
        .queue(Queue::from(QUEUE_NAME))
        // apalis-board's UI needs a lock time on every task: a job nobody holds has the epoch.
        .lock_at(Some(queued.leased_at.map_or(0, |at| {
            u64::try_from(at.as_unix_millis() / 1000).unwrap_or(0)
        })))
        .build()
}

impl Backend for BoardBackend {
    type Task = Task<Value>;
    type Error = BoardError;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    /// The board never runs jobs: its stream is over before it starts.
    fn poll_next(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        Poll::Ready(None)
    }

    fn poll_close(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for BoardBackend {
    type Args = Value;
    type Id = String;
    type Kind = apalis_core::backend::finalize::Durable;
    type Config = ();
    type Layer = ();

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {}
}

impl WireFormatBackend for BoardBackend {
    type Codec = JsonValues;
    type Compact = Value;

    fn codec(&self) -> &Self::Codec {
        &self.codec
    }
}

/// The board's push route reaches this only if the console's read-only guard were gone: it
/// refuses every task.
impl futures_sink::Sink<Task<Value>> for BoardBackend {
    type Error = BoardError;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), BoardError>> {
        Poll::Ready(Err(BoardError::ReadOnly))
    }

    fn start_send(self: Pin<&mut Self>, _item: Task<Value>) -> Result<(), BoardError> {
        Err(BoardError::ReadOnly)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), BoardError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), BoardError>> {
        Poll::Ready(Ok(()))
    }
}

impl ListQueues for BoardBackend {
    async fn list_queues(&self) -> Result<Vec<QueueInfo>, BoardError> {
        Ok(vec![QueueInfo {
            name: QUEUE_NAME.to_owned(),
            stats: self.statistics().await?,
            workers: self.workers().await?.into_iter().map(|w| w.id).collect(),
            // The queue keeps no history: finished polls are in the ledger.
            activity: Vec::new(),
        }])
    }
}

impl ListWorkers for BoardBackend {
    async fn list_workers(&self) -> Result<Vec<RunningWorker>, BoardError> {
        self.workers().await
    }

    async fn list_all_workers(&self) -> Result<Vec<RunningWorker>, BoardError> {
        self.workers().await
    }
}

impl ListTasks for BoardBackend {
    async fn list_tasks(&self, filter: &Filter) -> Result<Vec<Task<Value>>, BoardError> {
        self.tasks(filter).await
    }
}

impl ListAllTasks for BoardBackend {
    async fn list_all_tasks(&self, filter: &Filter) -> Result<Vec<Task<Value>>, BoardError> {
        self.tasks(filter).await
    }
}

impl Metrics for BoardBackend {
    async fn global(&self) -> Result<Vec<Statistic>, BoardError> {
        self.statistics().await
    }

    async fn fetch_by_queue(&self) -> Result<Vec<Statistic>, BoardError> {
        self.statistics().await
    }
}

impl FetchById for BoardBackend {
    async fn fetch_by_id(&mut self, task_id: &TaskId) -> Result<Option<Task<Value>>, BoardError> {
        Ok(self.inspector.job(&task_id.to_string()).await?.map(task))
    }
}
