//! Conformance cases of the [`AccessEpoch`] port.

use std::sync::Arc;

use crate::ports::AccessEpoch;

/// Two handles on one fresh shared access state, as two replicas hold them.
#[derive(Clone)]
pub struct AccessFixture {
    pub epoch: Arc<dyn AccessEpoch>,
    /// Another replica's handle on the same epoch.
    pub other_epoch: Arc<dyn AccessEpoch>,
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

/// One `#[tokio::test]` per access case; `$make` is an `async` block giving an
/// [`AccessFixture`].
#[macro_export]
macro_rules! access_conformance_tests {
    ($make:expr) => {
        $crate::access_conformance_tests!(@cases $make;
            the_epoch_stays_put_until_advanced,
            an_advance_is_seen_by_every_replica_at_once,
            every_advance_gives_a_value_not_seen_before
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
