//! The distributed mode's port set: the queue, leases, checkpoint, change feed and event bus in
//! Redis, shared by any number of processes. Each builder connects only what its service uses.

use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::ports::{Clock, Repositories, RepositoryPollReads};
use chamberlain_domain::usecases::{ApiPorts, ApiSettings, ApiUseCases, PollHandler};
use chamberlain_http::{HttpChamberClient, HttpClientConfig};
use chamberlain_memory::SystemClock;
use chamberlain_redis::{
    RedisAccessEpoch, RedisChamberChanges, RedisConfig, RedisEventBus, RedisLeaderLease,
    RedisPollQueue, RedisRateLimiter, RedisScheduleCheckpoint,
};

/// Chamber changes buffered per subscriber (the scheduler's) before it resyncs.
pub const CHANGE_FEED_CAPACITY: usize = 4096;
/// Events a process's shared subscription holds for its streams before the slowest lags.
pub const EVENT_HUB_CAPACITY: usize = 65_536;
/// How long a worker reuses a chamber's configuration before reading it again while it cannot
/// follow the change feed, and a section's open batch always.
pub const WORKER_CHAMBER_CACHE: Duration = Duration::from_secs(10);
/// How long a worker reuses a chamber's configuration while it follows the change feed (every
/// chamber and detector write reaches it there): a safety net, not the way changes arrive.
pub const WORKER_CHAMBER_CACHE_FOLLOWING: Duration = Duration::from_secs(300);

/// Redis for every coordination port, on the system clock.
#[derive(Clone)]
pub struct Distributed {
    redis: RedisConfig,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

impl Distributed {
    pub fn new(redis: RedisConfig) -> Self {
        Self {
            redis,
            clock: Arc::new(SystemClock),
        }
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The scheduler: one leader among any number of replicas, enqueuing into Redis.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn scheduler(
        &self,
        repositories: &Repositories,
        config: chamberlain_scheduler::SchedulerConfig,
    ) -> Result<chamberlain_scheduler::Scheduler, anyhow::Error> {
        Ok(chamberlain_scheduler::Scheduler::new(
            repositories,
            Arc::new(RedisPollQueue::connect(&self.redis).await?),
            Arc::new(RedisLeaderLease::connect(&self.redis, self.clock.clone()).await?),
            Arc::new(RedisScheduleCheckpoint::connect(&self.redis).await?),
            // Every gateway publishes its chamber writes here; the periodic resync repairs
            // anything missed.
            Arc::new(RedisChamberChanges::connect(&self.redis, CHANGE_FEED_CAPACITY).await?),
            self.clock.clone(),
            config,
        ))
    }

    /// A worker leasing from Redis, reading chambers through a cache that follows the change
    /// feed (a chamber written through any gateway is read afresh at its next poll), publishing
    /// events for every gateway's live streams (nothing is sent while nobody watches).
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn worker(
        &self,
        repositories: &Repositories,
        http: &HttpClientConfig,
        config: chamberlain_worker::WorkerConfig,
        chamber_cache: Duration,
    ) -> Result<chamberlain_worker::Worker, anyhow::Error> {
        let changes = RedisChamberChanges::connect(&self.redis, CHANGE_FEED_CAPACITY).await?;
        let cached = Arc::new(
            chamberlain_worker::CachedChambers::new(
                Arc::new(RepositoryPollReads::of(repositories)),
                chamber_cache,
            )
            .following(&changes, WORKER_CHAMBER_CACHE_FOLLOWING)
            .await,
        );
        let handler = PollHandler::new(
            repositories,
            Arc::new(HttpChamberClient::new(http)),
            Arc::new(RedisEventBus::connect(&self.redis, 1).await?),
            self.clock.clone(),
        )
        .with_reads(cached);
        let queue = Arc::new(RedisPollQueue::connect(&self.redis).await?);
        Ok(chamberlain_worker::Worker::new(handler, queue, config))
    }

    /// The queue on the console: the Redis queue seen through a connection of its own, for
    /// `operators`.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn queue_board(
        &self,
        operators: std::collections::HashSet<chamberlain_domain::model::UserId>,
    ) -> Result<chamberlain_console::QueueBoardSettings, anyhow::Error> {
        let queue = Arc::new(RedisPollQueue::connect(&self.redis).await?);
        Ok(chamberlain_console::QueueBoardSettings {
            backend: chamberlain_console::BoardBackend::new(
                queue.clone(),
                queue,
                self.clock.clone(),
                "redis",
            ),
            operators,
        })
    }

    /// The alerter: one leader among any number of replicas, fed by the Redis event bus.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn alerter(
        &self,
        repositories: &Repositories,
        http: &HttpClientConfig,
        config: chamberlain_alerter::AlerterConfig,
    ) -> Result<chamberlain_alerter::Alerter, anyhow::Error> {
        let bus = Arc::new(RedisEventBus::connect(&self.redis, EVENT_HUB_CAPACITY).await?);
        Ok(chamberlain_alerter::Alerter::new(
            repositories,
            bus.clone(),
            bus,
            Arc::new(
                RedisLeaderLease::connect_named(&self.redis, self.clock.clone(), "alerter").await?,
            ),
            Arc::new(crate::destinations(http)),
            self.clock.clone(),
            config,
        ))
    }

    /// The API's use cases, publishing chamber changes and events to Redis for the scheduler,
    /// the alerter and every gateway, and access changes for every auth replica.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn use_cases(
        &self,
        repositories: &Repositories,
        settings: ApiSettings,
    ) -> Result<ApiUseCases, anyhow::Error> {
        let events = Arc::new(RedisEventBus::connect(&self.redis, EVENT_HUB_CAPACITY).await?);
        Ok(ApiUseCases::new(
            repositories,
            ApiPorts {
                changes: Arc::new(
                    RedisChamberChanges::connect(&self.redis, CHANGE_FEED_CAPACITY).await?,
                ),
                events: events.clone(),
                feed: events,
                passwords: Arc::new(chamberlain_argon2::Argon2Hasher::default()),
                access: self.access_epoch().await?,
                clock: self.clock.clone(),
            },
            settings,
        ))
    }

    /// The access epoch every gateway and auth replica shares: a role change or a revocation
    /// through one gateway takes effect on the next call everywhere.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn access_epoch(
        &self,
    ) -> Result<Arc<dyn chamberlain_domain::ports::AccessEpoch>, anyhow::Error> {
        Ok(Arc::new(RedisAccessEpoch::connect(&self.redis).await?))
    }

    /// Rate limits every auth replica shares.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn rate_limiter(
        &self,
    ) -> Result<Arc<dyn chamberlain_domain::ports::RateLimiter>, anyhow::Error> {
        Ok(Arc::new(RedisRateLimiter::connect(&self.redis).await?))
    }
}
