//! The event bus and the chamber change feed on Redis Pub/Sub.
//!
//! Publishing is one `PUBLISH` per call: a JSON array of the call's events (a worker's write
//! batch is one message, not one per poll). Receiving is one subscriber connection per process,
//! opened by the first `subscribe` and shared by every subscription through a tokio broadcast
//! channel: Redis sends each message to the process once, however many subscribers it serves,
//! and a slow subscription only ever lags itself (it is told how many events it missed). If the
//! connection drops, it is reopened with backoff and every subscription is told that events may
//! be missing ([`EventDelivery::Interrupted`]; for the change feed, [`ChamberChange::Resync`]).
//! Pub/Sub keeps nothing: an event published while no process subscribes is gone, which is the
//! contract of both ports (live delivery, best effort). The event bus goes further: when a
//! `PUBLISH` reached nobody, it publishes nothing for the next second (then tries again), so
//! workers spend nothing on events while no gateway watches; a process that starts listening may
//! miss up to a second of other processes' events.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chamberlain_domain::ports::{
    ChamberChange, ChamberChanges, ChangeSubscription, DomainEvent, EventDelivery, EventFeed,
    EventPublisher, EventSubscription, PublishError,
};
use redis::aio::ConnectionManager;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, broadcast, oneshot};
use tokio_stream::StreamExt as _;

use crate::RedisConfig;
use crate::connection;

/// How often an idle subscriber checks that its bus still exists.
const LIVENESS_CHECK: Duration = Duration::from_secs(5);

/// How long publishing pauses after a `PUBLISH` no process received.
const UNHEARD_QUIET: Duration = Duration::from_secs(1);

fn unavailable(e: impl std::fmt::Display) -> PublishError {
    PublishError::Unavailable {
        message: e.to_string(),
    }
}

/// What the shared subscriber hands each subscription.
#[derive(Debug, Clone)]
enum Incoming<T> {
    Message(T),
    Reconnected,
}

/// One Pub/Sub channel of JSON arrays of `T`, fanned out in this process.
struct Channel<T> {
    config: RedisConfig,
    name: String,
    publisher: ConnectionManager,
    capacity: usize,
    /// When set, a `PUBLISH` that reached no subscriber makes the next second's publishes no-ops
    /// (nothing serialized, nothing sent): publishing costs nothing while nobody listens.
    skip_when_unheard: bool,
    /// Milliseconds since `started` before which publishing is skipped.
    quiet_until: AtomicU64,
    started: Instant,
    /// The broadcast every subscription reads; created (and the subscriber started) on the
    /// first `subscribe`.
    hub: Mutex<Option<broadcast::Sender<Incoming<T>>>>,
    _items: PhantomData<fn() -> T>,
}

impl<T> Channel<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    async fn connect(
        config: &RedisConfig,
        suffix: &str,
        capacity: usize,
        skip_when_unheard: bool,
    ) -> Result<Self, PublishError> {
        let publisher = connection::manager(config).await.map_err(unavailable)?;
        Ok(Self {
            config: config.clone(),
            name: config.key(suffix),
            publisher,
            capacity: capacity.max(1),
            skip_when_unheard,
            quiet_until: AtomicU64::new(0),
            started: Instant::now(),
            hub: Mutex::new(None),
            _items: PhantomData,
        })
    }

    async fn publish(&self, items: &[T]) -> Result<(), PublishError> {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if items.is_empty() || now < self.quiet_until.load(Ordering::Relaxed) {
            return Ok(());
        }
        let payload = serde_json::to_vec(items).map_err(unavailable)?;
        let mut conn = self.publisher.clone();
        let heard_by: i64 = redis::cmd("PUBLISH")
            .arg(&self.name)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if self.skip_when_unheard && heard_by == 0 {
            self.quiet_until
                .store(now + UNHEARD_QUIET.as_millis() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn subscribe(&self) -> Result<broadcast::Receiver<Incoming<T>>, PublishError> {
        // This process listens from now on: publish again at once.
        self.quiet_until.store(0, Ordering::Relaxed);
        let mut hub = self.hub.lock().await;
        if let Some(sender) = hub.as_ref() {
            return Ok(sender.subscribe());
        }
        let (sender, receiver) = broadcast::channel(self.capacity);
        let (ready, subscribed) = oneshot::channel();
        tokio::spawn(run_subscriber(
            self.config.clone(),
            self.name.clone(),
            sender.downgrade(),
            ready,
        ));
        // Live only once Redis confirmed the subscription: what is published after this returns
        // is received.
        subscribed
            .await
            .map_err(|_| unavailable("the subscriber stopped"))??;
        *hub = Some(sender);
        Ok(receiver)
    }
}

async fn open_subscription(
    config: &RedisConfig,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let open = async {
        let mut pubsub = config.client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    tokio::time::timeout(config.connection_timeout + config.response_timeout, open)
        .await
        .map_err(|_| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "timed out subscribing",
                channel.to_owned(),
            ))
        })?
}

/// Reads the channel and broadcasts what arrives, reconnecting with backoff, until every
/// subscription and the channel itself are gone.
async fn run_subscriber<T>(
    config: RedisConfig,
    channel: String,
    hub: broadcast::WeakSender<Incoming<T>>,
    ready: oneshot::Sender<Result<(), PublishError>>,
) where
    T: DeserializeOwned + Clone + Send + Sync + 'static,
{
    let mut pubsub = match open_subscription(&config, &channel).await {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(unavailable(e)));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut backoff = Duration::from_millis(100);
    loop {
        {
            let mut messages = pubsub.on_message();
            loop {
                // A quiet channel still notices, within a few seconds, that its bus and every
                // subscription (each holds the channel) were dropped, and closes its connection.
                let message = match tokio::time::timeout(LIVENESS_CHECK, messages.next()).await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(_) if hub.upgrade().is_none() => return,
                    Err(_) => continue,
                };
                let Some(hub) = hub.upgrade() else { return };
                match serde_json::from_slice::<Vec<T>>(message.get_payload_bytes()) {
                    Ok(items) => {
                        for item in items {
                            // No receiver right now is fine: nobody is watching.
                            let _ = hub.send(Incoming::Message(item));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(channel = %channel, error = %e, "unreadable message skipped");
                    }
                }
                backoff = Duration::from_millis(100);
            }
        }
        tracing::warn!(channel = %channel, "event subscription lost; reconnecting");
        loop {
            if hub.upgrade().is_none() {
                return;
            }
            match open_subscription(&config, &channel).await {
                Ok(p) => {
                    pubsub = p;
                    break;
                }
                Err(e) => {
                    tracing::warn!(channel = %channel, error = %e, "resubscribe failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let Some(hub) = hub.upgrade() else { return };
        let _ = hub.send(Incoming::Reconnected);
        tracing::info!(channel = %channel, "event subscription restored");
    }
}

/// The event bus of the distributed mode: workers and gateways publish, every gateway receives.
#[derive(Clone)]
pub struct RedisEventBus {
    channel: Arc<Channel<DomainEvent>>,
}

impl std::fmt::Debug for RedisEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEventBus")
            .field("channel", &self.channel.name)
            .field("capacity", &self.channel.capacity)
            .finish_non_exhaustive()
    }
}

impl RedisEventBus {
    /// Connects the publishing side; the receiving side opens with the first subscription.
    /// `capacity`: events a subscription may fall behind before it lags.
    ///
    /// # Errors
    /// `Unavailable` when Redis cannot be reached.
    pub async fn connect(config: &RedisConfig, capacity: usize) -> Result<Self, PublishError> {
        Ok(Self {
            channel: Arc::new(Channel::connect(config, "events", capacity, true).await?),
        })
    }
}

#[async_trait]
impl EventPublisher for RedisEventBus {
    async fn publish(&self, events: &[DomainEvent]) -> Result<(), PublishError> {
        self.channel.publish(events).await
    }
}

/// A subscription keeps its channel (and so the channel's connection to Redis) open: the bus
/// it was made from may be dropped while other processes go on publishing.
struct RedisEventSubscription {
    incoming: broadcast::Receiver<Incoming<DomainEvent>>,
    _channel: Arc<Channel<DomainEvent>>,
}

#[async_trait]
impl EventSubscription for RedisEventSubscription {
    async fn next(&mut self) -> Option<EventDelivery> {
        match self.incoming.recv().await {
            Ok(Incoming::Message(event)) => Some(EventDelivery::Event(event)),
            Ok(Incoming::Reconnected) => Some(EventDelivery::Interrupted),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some(EventDelivery::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[async_trait]
impl EventFeed for RedisEventBus {
    async fn subscribe(&self) -> Result<Box<dyn EventSubscription>, PublishError> {
        Ok(Box::new(RedisEventSubscription {
            incoming: self.channel.subscribe().await?,
            _channel: self.channel.clone(),
        }))
    }
}

/// The chamber change feed across processes: the gateway publishes each write, every scheduler
/// follows (and resyncs when told it missed something).
#[derive(Clone)]
pub struct RedisChamberChanges {
    channel: Arc<Channel<ChamberChange>>,
}

impl std::fmt::Debug for RedisChamberChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisChamberChanges")
            .field("channel", &self.channel.name)
            .finish_non_exhaustive()
    }
}

impl RedisChamberChanges {
    /// # Errors
    /// `Unavailable` when Redis cannot be reached.
    pub async fn connect(config: &RedisConfig, capacity: usize) -> Result<Self, PublishError> {
        Ok(Self {
            channel: Arc::new(Channel::connect(config, "chamber-changes", capacity, false).await?),
        })
    }
}

/// A subscription keeps its channel open, as [`RedisEventSubscription`] does: a worker
/// subscribes through a handle it does not keep.
struct RedisChangeSubscription {
    incoming: broadcast::Receiver<Incoming<ChamberChange>>,
    _channel: Arc<Channel<ChamberChange>>,
}

#[async_trait]
impl ChangeSubscription for RedisChangeSubscription {
    async fn next(&mut self) -> Option<ChamberChange> {
        match self.incoming.recv().await {
            Ok(Incoming::Message(change)) => Some(change),
            // Missed changes (fell behind, or reconnected): the subscriber resyncs.
            Ok(Incoming::Reconnected) | Err(broadcast::error::RecvError::Lagged(_)) => {
                Some(ChamberChange::Resync)
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[async_trait]
impl ChamberChanges for RedisChamberChanges {
    async fn publish(&self, change: &ChamberChange) -> Result<(), PublishError> {
        self.channel.publish(std::slice::from_ref(change)).await
    }

    async fn subscribe(&self) -> Result<Box<dyn ChangeSubscription>, PublishError> {
        Ok(Box::new(RedisChangeSubscription {
            incoming: self.channel.subscribe().await?,
            _channel: self.channel.clone(),
        }))
    }
}
