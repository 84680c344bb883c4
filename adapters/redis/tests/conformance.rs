//! The queue, coordination and change/event conformance suites on Redis: real time, a key
//! prefix per case.

use std::sync::Arc;

use chamberlain_domain::conformance::coordination::CoordinationFixture;
use chamberlain_domain::conformance::fixtures::Advance;
use chamberlain_domain::conformance::queue::QueueFixture;
use chamberlain_memory::SystemClock;
use chamberlain_redis::testing::TestPrefix;
use chamberlain_redis::{RedisLeaderLease, RedisPollQueue, RedisScheduleCheckpoint};

/// Redis keys expire in real time: letting time pass means waiting.
fn real_time() -> Advance {
    Arc::new(|d| Box::pin(tokio::time::sleep(d)))
}

mod queue {
    use super::*;
    chamberlain_domain::queue_conformance_tests!(async {
        let prefix = TestPrefix::new();
        QueueFixture {
            queue: Arc::new(RedisPollQueue::connect(&prefix.config).await.unwrap()),
            inspector: Arc::new(RedisPollQueue::connect(&prefix.config).await.unwrap()),
            clock: Arc::new(SystemClock),
            advance: real_time(),
            keepalive: Some(Arc::new(prefix)),
        }
    });
}

mod coordination {
    use super::*;
    chamberlain_domain::coordination_conformance_tests!(async {
        let prefix = TestPrefix::new();
        CoordinationFixture {
            lease: Arc::new(
                RedisLeaderLease::connect(&prefix.config, Arc::new(SystemClock))
                    .await
                    .unwrap(),
            ),
            checkpoint: Arc::new(
                RedisScheduleCheckpoint::connect(&prefix.config)
                    .await
                    .unwrap(),
            ),
            advance: real_time(),
            keepalive: Some(Arc::new(prefix)),
        }
    });
}

mod changes {
    use super::*;
    use chamberlain_domain::conformance::changes::ChangesFixture;
    use chamberlain_redis::{RedisChamberChanges, RedisEventBus};

    chamberlain_domain::changes_conformance_tests!(async {
        let prefix = TestPrefix::new();
        let bus = Arc::new(RedisEventBus::connect(&prefix.config, 16).await.unwrap());
        ChangesFixture {
            changes: Arc::new(
                RedisChamberChanges::connect(&prefix.config, 64)
                    .await
                    .unwrap(),
            ),
            events: bus.clone(),
            feed: bus,
            feed_capacity: 16,
            keepalive: Some(Arc::new(prefix)),
        }
    });
}

mod access {
    use super::*;
    use chamberlain_domain::conformance::access::AccessFixture;
    use chamberlain_redis::{RedisAccessEpoch, RedisRateLimiter};

    chamberlain_domain::access_conformance_tests!(async {
        let prefix = TestPrefix::new();
        AccessFixture {
            epoch: Arc::new(RedisAccessEpoch::connect(&prefix.config).await.unwrap()),
            other_epoch: Arc::new(RedisAccessEpoch::connect(&prefix.config).await.unwrap()),
            limiter: Arc::new(RedisRateLimiter::connect(&prefix.config).await.unwrap()),
            other_limiter: Arc::new(RedisRateLimiter::connect(&prefix.config).await.unwrap()),
            advance: real_time(),
            keepalive: Some(Arc::new(prefix)),
        }
    });
}
