//! [`ManualClock`]: simulated time for tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chamberlain_domain::ports::Clock;
use chamberlain_domain::time::Timestamp;

/// A clock that moves only when told: simulated time for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicI64,
}

impl ManualClock {
    pub fn at(t: Timestamp) -> Arc<Self> {
        Arc::new(Self {
            ms: AtomicI64::new(t.as_unix_millis()),
        })
    }

    pub fn set(&self, t: Timestamp) {
        self.ms.store(t.as_unix_millis(), Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(
            i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.ms.load(Ordering::SeqCst))
    }
}

/// Wall time that follows Tokio's clock from `start`: on a paused test runtime, sleeping moves
/// both, so loops that measure with the [`Clock`] port and sleep with Tokio's timer run as they
/// do in production, an hour in milliseconds.
#[derive(Debug)]
pub struct TokioClock {
    origin: Timestamp,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Reads `origin` now.
    pub fn at(origin: Timestamp) -> Arc<Self> {
        Arc::new(Self {
            origin,
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.origin + self.start.elapsed()
    }
}
