//! The port conformance suites against the in-process adapters (the store fake's suite runs in
//! `chamberlain-fakes`).

use std::sync::Arc;

use chamberlain_domain::conformance::changes::ChangesFixture;
use chamberlain_domain::conformance::coordination::CoordinationFixture;
use chamberlain_domain::conformance::fixtures::{Advance, T0};
use chamberlain_domain::conformance::queue::QueueFixture;
use chamberlain_fakes::ManualClock;
use chamberlain_memory::{
    MemoryChamberChanges, MemoryEventBus, MemoryLeaderLease, MemoryPollQueue,
    MemoryScheduleCheckpoint,
};

fn advance(clock: &Arc<ManualClock>) -> Advance {
    let clock = clock.clone();
    Arc::new(move |d| {
        clock.advance(d);
        Box::pin(async {})
    })
}

mod queue {
    use super::*;
    chamberlain_domain::queue_conformance_tests!(async {
        let clock = ManualClock::at(T0);
        let queue = Arc::new(MemoryPollQueue::new(clock.clone()));
        QueueFixture {
            queue: queue.clone(),
            inspector: queue,
            advance: advance(&clock),
            clock,
            keepalive: None,
        }
    });
}

mod coordination {
    use super::*;
    chamberlain_domain::coordination_conformance_tests!(async {
        let clock = ManualClock::at(T0);
        CoordinationFixture {
            lease: Arc::new(MemoryLeaderLease::new(clock.clone())),
            checkpoint: Arc::new(MemoryScheduleCheckpoint::new()),
            advance: advance(&clock),
            keepalive: None,
        }
    });
}

mod changes {
    use super::*;
    chamberlain_domain::changes_conformance_tests!(async {
        let bus = Arc::new(MemoryEventBus::new(64));
        ChangesFixture {
            changes: Arc::new(MemoryChamberChanges::new(64)),
            events: bus.clone(),
            feed: bus,
            feed_capacity: 64,
            keepalive: None,
        }
    });
}

mod access {
    use super::*;
    use chamberlain_domain::conformance::access::AccessFixture;
    use chamberlain_memory::{MemoryAccessEpoch, MemoryRateLimiter};

    chamberlain_domain::access_conformance_tests!(async {
        let epoch = Arc::new(MemoryAccessEpoch::default());
        let limiter = Arc::new(MemoryRateLimiter::default());
        AccessFixture {
            epoch: epoch.clone(),
            other_epoch: epoch,
            limiter: limiter.clone(),
            other_limiter: limiter,
            // The limiter measures real time: letting it pass means waiting.
            advance: Arc::new(|d| Box::pin(tokio::time::sleep(d))),
            keepalive: None,
        }
    });
}
