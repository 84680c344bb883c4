//! Conformance cases of the [`AccessEpoch`] and [`RateLimiter`] ports.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::conformance::fixtures::Advance;
use crate::ports::{AccessEpoch, Admission, Bucket, Rate, RateLimiter};

/// Two handles on one fresh shared access state, as two replicas hold them.
#[derive(Clone)]
pub struct AccessFixture {
    pub epoch: Arc<dyn AccessEpoch>,
    /// Another replica's handle on the same epoch.
    pub other_epoch: Arc<dyn AccessEpoch>,
    pub limiter: Arc<dyn RateLimiter>,
    /// Another replica's handle on the same limits.
    pub other_limiter: Arc<dyn RateLimiter>,
    /// Lets the limiter's time pass.
    pub advance: Advance,
    pub keepalive: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for AccessFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessFixture").finish_non_exhaustive()
    }
}

pub async fn the_epoch_stays_put_until_advanced(f: &AccessFixture) {
    let first = f.epoch.current().await.unwrap();
    assert_eq!(f.epoch.current().await.unwrap(), first);
    assert_eq!(f.other_epoch.current().await.unwrap(), first);
}

pub async fn an_advance_is_seen_by_every_replica_at_once(f: &AccessFixture) {
    let before = f.other_epoch.current().await.unwrap();
    let advanced = f.epoch.advance().await.unwrap();
    assert_ne!(advanced, before);
    assert_eq!(f.other_epoch.current().await.unwrap(), advanced);
    assert_eq!(f.epoch.current().await.unwrap(), advanced);
}

pub async fn every_advance_gives_a_value_not_seen_before(f: &AccessFixture) {
    let mut seen = vec![f.epoch.current().await.unwrap()];
    for i in 0..20 {
        let handle = if i % 2 == 0 { &f.epoch } else { &f.other_epoch };
        let value = handle.advance().await.unwrap();
        assert!(!seen.contains(&value), "epoch {value} handed out twice");
        seen.push(value);
    }
}

fn bucket(key: &str, per_second: u32, burst: u32) -> Bucket {
    Bucket {
        key: key.to_owned(),
        rate: Rate {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        },
    }
}

async fn admitted(limiter: &dyn RateLimiter, buckets: &[Bucket], calls: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..calls {
        if limiter.admit(buckets).await.unwrap() == Admission::Admitted {
            admitted += 1;
        }
    }
    admitted
}

pub async fn a_burst_passes_and_the_excess_is_told_when_to_retry(f: &AccessFixture) {
    let user = [bucket("user:burst", 1, 3)];
    assert_eq!(admitted(f.limiter.as_ref(), &user, 3).await, 3);
    match f.limiter.admit(&user).await.unwrap() {
        Admission::Refused {
            bucket,
            retry_after,
        } => {
            assert_eq!(bucket, 0);
            assert!(
                retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1),
                "{retry_after:?}"
            );
        }
        Admission::Admitted => panic!("a fourth call within the burst of three"),
    }
    // Another key has its own bucket.
    assert_eq!(
        admitted(f.limiter.as_ref(), &[bucket("user:other", 1, 3)], 3).await,
        3
    );
}

pub async fn a_bucket_refills_at_its_rate(f: &AccessFixture) {
    let user = [bucket("user:refill", 20, 1)];
    assert_eq!(f.limiter.admit(&user).await.unwrap(), Admission::Admitted);
    let Admission::Refused { retry_after, .. } = f.limiter.admit(&user).await.unwrap() else {
        panic!("a second call at once, with a burst of one");
    };
    assert!(retry_after <= Duration::from_millis(50), "{retry_after:?}");
    (f.advance)(retry_after + Duration::from_millis(5)).await;
    assert_eq!(f.limiter.admit(&user).await.unwrap(), Admission::Admitted);
}

pub async fn a_refused_call_uses_none_of_its_buckets(f: &AccessFixture) {
    let user = bucket("user:both", 1, 5);
    let organization = bucket("organization:both", 1, 1);
    let both = [user.clone(), organization];
    assert_eq!(f.limiter.admit(&both).await.unwrap(), Admission::Admitted);
    assert!(matches!(
        f.limiter.admit(&both).await.unwrap(),
        Admission::Refused { bucket: 1, .. }
    ));
    // The user's bucket gave one call to the admitted pair and none to the refused one.
    assert_eq!(
        admitted(f.limiter.as_ref(), std::slice::from_ref(&user), 10).await,
        4
    );
}

pub async fn every_replica_counts_against_one_limit(f: &AccessFixture) {
    let user = [bucket("user:shared", 1, 4)];
    let mut admitted_calls = 0;
    for i in 0..8 {
        let limiter = if i % 2 == 0 {
            &f.limiter
        } else {
            &f.other_limiter
        };
        if limiter.admit(&user).await.unwrap() == Admission::Admitted {
            admitted_calls += 1;
        }
    }
    assert_eq!(admitted_calls, 4, "one burst of four across both replicas");
}

/// One `#[tokio::test]` per access case; `$make` is an `async` block giving an
/// [`AccessFixture`].
#[macro_export]
macro_rules! access_conformance_tests {
    ($make:expr) => {
        $crate::access_conformance_tests!(@cases $make;
            the_epoch_stays_put_until_advanced,
            an_advance_is_seen_by_every_replica_at_once,
            every_advance_gives_a_value_not_seen_before,
            a_burst_passes_and_the_excess_is_told_when_to_retry,
            a_bucket_refills_at_its_rate,
            a_refused_call_uses_none_of_its_buckets,
            every_replica_counts_against_one_limit
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let fixture: $crate::conformance::access::AccessFixture = $make.await;
                $crate::conformance::access::$case(&fixture).await;
            }
        )*
    };
}
