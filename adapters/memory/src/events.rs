//! In-process event bus and chamber change feed, on tokio broadcast channels.

use std::sync::Arc;

use async_trait::async_trait;
use chamberlain_domain::ports::{
    ChamberChange, ChamberChanges, ChangeSubscription, DomainEvent, EventDelivery, EventFeed,
    EventPublisher, EventSubscription, PublishError,
};
use tokio::sync::broadcast;

/// Events to in-process subscribers. A subscriber that falls more than `capacity` events
/// behind skips ahead (tokio's `Lagged`); publishing never waits for subscribers. Events are
/// held behind an `Arc`: the channel's ring of `capacity` slots is allocated whole, and a slot
/// holding a whole event was ~200 bytes (13 MiB for 65,536).
#[derive(Debug)]
pub struct MemoryEventBus {
    sender: broadcast::Sender<Arc<DomainEvent>>,
}

impl MemoryEventBus {
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity.max(1)).0,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<DomainEvent>> {
        self.sender.subscribe()
    }

    /// How many subscriptions are live (so a test can wait until a consumer listens).
    pub fn receiver_count(&self) -> usize {
        self.sender.receiver_count()
    }
}

impl Default for MemoryEventBus {
    fn default() -> Self {
        Self::new(4096)
    }
}

#[async_trait]
impl EventPublisher for MemoryEventBus {
    async fn publish(&self, events: &[DomainEvent]) -> Result<(), PublishError> {
        for e in events {
            // No subscribers is not an error: nobody is watching.
            let _ = self.sender.send(Arc::new(e.clone()));
        }
        Ok(())
    }
}

struct EventReceiver(broadcast::Receiver<Arc<DomainEvent>>);

#[async_trait]
impl EventSubscription for EventReceiver {
    async fn next(&mut self) -> Option<EventDelivery> {
        match self.0.recv().await {
            Ok(event) => Some(EventDelivery::Event(Arc::unwrap_or_clone(event))),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some(EventDelivery::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[async_trait]
impl EventFeed for MemoryEventBus {
    async fn subscribe(&self) -> Result<Box<dyn EventSubscription>, PublishError> {
        Ok(Box::new(EventReceiver(self.sender.subscribe())))
    }
}

/// The chamber change feed within one process.
#[derive(Debug)]
pub struct MemoryChamberChanges {
    sender: broadcast::Sender<ChamberChange>,
}

impl MemoryChamberChanges {
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity.max(1)).0,
        }
    }
}

impl Default for MemoryChamberChanges {
    fn default() -> Self {
        Self::new(4096)
    }
}

struct Subscription(broadcast::Receiver<ChamberChange>);

#[async_trait]
impl ChangeSubscription for Subscription {
    async fn next(&mut self) -> Option<ChamberChange> {
        match self.0.recv().await {
            Ok(change) => Some(change),
            // Fell behind: the subscriber must resync from the repository.
            Err(broadcast::error::RecvError::Lagged(_)) => Some(ChamberChange::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[async_trait]
impl ChamberChanges for MemoryChamberChanges {
    async fn publish(&self, change: &ChamberChange) -> Result<(), PublishError> {
        let _ = self.sender.send(change.clone());
        Ok(())
    }

    async fn subscribe(&self) -> Result<Box<dyn ChangeSubscription>, PublishError> {
        Ok(Box::new(Subscription(self.sender.subscribe())))
    }
}
