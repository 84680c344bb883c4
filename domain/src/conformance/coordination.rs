//! Conformance cases of the [`LeaderLease`] and [`ScheduleCheckpoint`] ports.

use std::sync::Arc;
use std::time::Duration;

use crate::conformance::fixtures::Advance;
use crate::ports::{LeaderLease, ScheduleCheckpoint};
use crate::time::Timestamp;

/// A fresh lease and checkpoint, and a way to let time pass.
#[derive(Clone)]
pub struct CoordinationFixture {
    pub lease: Arc<dyn LeaderLease>,
    pub checkpoint: Arc<dyn ScheduleCheckpoint>,
    pub advance: Advance,
    pub keepalive: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for CoordinationFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinationFixture")
            .finish_non_exhaustive()
    }
}

const TTL: Duration = Duration::from_millis(500);

pub async fn one_holder_at_a_time(f: &CoordinationFixture) {
    let a = f
        .lease
        .acquire("scheduler-a", TTL * 20)
        .await
        .unwrap()
        .expect("free lease is granted");
    assert_eq!(a.holder, "scheduler-a");
    assert_eq!(
        f.lease.acquire("scheduler-b", TTL * 20).await.unwrap(),
        None
    );
    let renewed = f
        .lease
        .renew(&a, TTL * 20)
        .await
        .unwrap()
        .expect("holder renews");
    assert_eq!(renewed.fencing_token, a.fencing_token);
    assert_eq!(
        f.lease.acquire("scheduler-b", TTL * 20).await.unwrap(),
        None
    );
    f.lease.release(&a).await.unwrap();
    let b = f
        .lease
        .acquire("scheduler-b", TTL * 20)
        .await
        .unwrap()
        .expect("released lease is granted");
    assert!(b.fencing_token > a.fencing_token);
    assert_eq!(
        f.lease.renew(&a, TTL).await.unwrap(),
        None,
        "a released grant cannot be renewed"
    );
    f.lease.release(&a).await.unwrap();
    assert_eq!(
        f.lease.acquire("scheduler-c", TTL).await.unwrap(),
        None,
        "a stale release frees nothing"
    );
}

pub async fn an_expired_lease_passes_to_another(f: &CoordinationFixture) {
    let a = f
        .lease
        .acquire("scheduler-a", TTL)
        .await
        .unwrap()
        .expect("granted");
    (f.advance)(TTL + Duration::from_millis(100)).await;
    let b = f
        .lease
        .acquire("scheduler-b", TTL * 20)
        .await
        .unwrap()
        .expect("expired lease is granted");
    assert!(b.fencing_token > a.fencing_token);
    assert_eq!(
        f.lease.renew(&a, TTL).await.unwrap(),
        None,
        "the old holder learns it lost the lease"
    );
}

pub async fn the_checkpoint_is_fenced_and_never_moves_back(f: &CoordinationFixture) {
    let t = |ms: i64| Timestamp::from_unix_millis(1_767_225_600_000 + ms);
    assert_eq!(f.checkpoint.load().await.unwrap(), None);
    assert!(f.checkpoint.save(1, t(10)).await.unwrap());
    assert_eq!(f.checkpoint.load().await.unwrap(), Some(t(10)));
    f.checkpoint.save(1, t(5)).await.unwrap();
    assert_eq!(
        f.checkpoint.load().await.unwrap(),
        Some(t(10)),
        "never backwards"
    );
    assert!(f.checkpoint.save(2, t(20)).await.unwrap());
    assert!(
        !f.checkpoint.save(1, t(30)).await.unwrap(),
        "a deposed leader cannot write"
    );
    assert_eq!(f.checkpoint.load().await.unwrap(), Some(t(20)));
}

/// Expands to one `#[tokio::test]` per lease/checkpoint case; `$make` evaluates to a future of
/// a fresh [`CoordinationFixture`].
#[macro_export]
macro_rules! coordination_conformance_tests {
    ($make:expr) => {
        $crate::coordination_conformance_tests!(@cases $make;
            one_holder_at_a_time,
            an_expired_lease_passes_to_another,
            the_checkpoint_is_fenced_and_never_moves_back
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let fixture: $crate::conformance::coordination::CoordinationFixture = $make.await;
                $crate::conformance::coordination::$case(&fixture).await;
            }
        )*
    };
}
