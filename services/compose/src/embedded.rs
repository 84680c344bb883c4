//! The embedded mode's port set: SQLite for the store and the schedule's watermark, and the
//! in-process queue, leases, change feed and event bus, shared by the scheduler, the worker,
//! the alerter and the API inside one process.

use std::sync::Arc;

use chamberlain_domain::model::UserId;
use chamberlain_domain::ports::{Clock, Repositories, RepositoryPollReads};
use chamberlain_domain::usecases::{ApiPorts, ApiSettings, ApiUseCases, PollHandler};
use chamberlain_http::{HttpChamberClient, HttpClientConfig};
use chamberlain_memory::{
    MemoryAccessEpoch, MemoryChamberChanges, MemoryEventBus, MemoryLeaderLease, MemoryPollQueue,
    SystemClock,
};
use chamberlain_sqlite::SqliteStore;

use crate::distributed::{CHANGE_FEED_CAPACITY, EVENT_HUB_CAPACITY};

/// One process's ports: every service built from it shares the queue and the buses.
#[derive(Clone)]
pub struct Embedded {
    store: Arc<SqliteStore>,
    repositories: Repositories,
    queue: Arc<MemoryPollQueue>,
    events: Arc<MemoryEventBus>,
    changes: Arc<MemoryChamberChanges>,
    access: Arc<MemoryAccessEpoch>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

impl Embedded {
    /// The ports over an open SQLite store, on the system clock.
    pub fn new(store: Arc<SqliteStore>) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Self {
            repositories: Repositories::of(store.clone()),
            store,
            queue: Arc::new(MemoryPollQueue::new(clock.clone())),
            events: Arc::new(MemoryEventBus::new(EVENT_HUB_CAPACITY)),
            changes: Arc::new(MemoryChamberChanges::new(CHANGE_FEED_CAPACITY)),
            access: Arc::new(MemoryAccessEpoch::default()),
            clock,
        }
    }

    pub fn repositories(&self) -> &Repositories {
        &self.repositories
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The queue on the console: the in-process queue, for `operators`.
    pub fn queue_board(
        &self,
        operators: std::collections::HashSet<UserId>,
    ) -> chamberlain_console::QueueBoardSettings {
        chamberlain_console::QueueBoardSettings {
            backend: chamberlain_console::BoardBackend::new(
                self.queue.clone(),
                self.queue.clone(),
                self.clock.clone(),
                "in-process",
            ),
            operators,
        }
    }

    /// The scheduler. Its watermark persists in SQLite, fenced by a lease whose tokens continue
    /// after the last saved one, so a restart records the slots missed while stopped.
    ///
    /// # Errors
    /// When the saved fencing token cannot be read.
    pub async fn scheduler(
        &self,
        config: chamberlain_scheduler::SchedulerConfig,
    ) -> Result<chamberlain_scheduler::Scheduler, anyhow::Error> {
        let lease = MemoryLeaderLease::with_tokens_after(
            self.clock.clone(),
            self.store.checkpoint_token().await?,
        );
        Ok(chamberlain_scheduler::Scheduler::new(
            &self.repositories,
            self.queue.clone(),
            Arc::new(lease),
            self.store.clone(),
            self.changes.clone(),
            self.clock.clone(),
            config,
        ))
    }

    /// A worker on the in-process queue.
    ///
    /// A poll reads its chamber through a cache (a read of SQLite per poll was a fifth of the
    /// process's CPU at 5,000 chambers), as the distributed workers do: the cache follows the
    /// in-process change feed, so a chamber or detector written through the API is read afresh
    /// at its next poll.
    pub async fn worker(
        &self,
        http: &HttpClientConfig,
        config: chamberlain_worker::WorkerConfig,
    ) -> chamberlain_worker::Worker {
        let cached = Arc::new(
            chamberlain_worker::CachedChambers::new(
                Arc::new(RepositoryPollReads::of(&self.repositories)),
                crate::distributed::WORKER_CHAMBER_CACHE,
            )
            .following(
                &*self.changes,
                crate::distributed::WORKER_CHAMBER_CACHE_FOLLOWING,
            )
            .await,
        );
        let handler = PollHandler::new(
            &self.repositories,
            Arc::new(HttpChamberClient::new(http)),
            self.events.clone(),
            self.clock.clone(),
        )
        .with_reads(cached);
        chamberlain_worker::Worker::new(handler, self.queue.clone(), config)
    }

    /// The alerter, fed by the in-process event bus.
    pub fn alerter(
        &self,
        http: &HttpClientConfig,
        config: chamberlain_alerter::AlerterConfig,
    ) -> chamberlain_alerter::Alerter {
        chamberlain_alerter::Alerter::new(
            &self.repositories,
            self.events.clone(),
            self.events.clone(),
            Arc::new(MemoryLeaderLease::new(self.clock.clone())),
            Arc::new(crate::destinations(http)),
            self.clock.clone(),
            config,
        )
    }

    /// The API's use cases, publishing to the in-process buses.
    pub fn use_cases(&self, settings: ApiSettings) -> ApiUseCases {
        ApiUseCases::new(
            &self.repositories,
            ApiPorts {
                changes: self.changes.clone(),
                events: self.events.clone(),
                feed: self.events.clone(),
                passwords: Arc::new(chamberlain_argon2::Argon2Hasher::default()),
                access: self.access.clone(),
                clock: self.clock.clone(),
            },
            settings,
        )
    }
}
