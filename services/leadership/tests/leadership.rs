//! Two replicas on one lease, on paused time: never two leaders at once, a lost lease ends the
//! term at once, and a shutdown hands the lease over within a renewal period.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::T0;
use chamberlain_domain::ports::{Clock, LeaderLease, LeaseError, LeaseGrant};
use chamberlain_fakes::TokioClock;
use chamberlain_leadership::{Leadership, TermEnd};
use chamberlain_memory::MemoryLeaderLease;

/// A lease store this replica cannot reach once `failing` is set.
struct Unreachable {
    inner: Arc<MemoryLeaderLease>,
    failing: AtomicBool,
}

#[async_trait]
impl LeaderLease for Unreachable {
    async fn acquire(&self, holder: &str, ttl: Duration) -> Result<Option<LeaseGrant>, LeaseError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(LeaseError::Unavailable {
                message: "unreachable".into(),
            });
        }
        self.inner.acquire(holder, ttl).await
    }
    async fn renew(
        &self,
        grant: &LeaseGrant,
        ttl: Duration,
    ) -> Result<Option<LeaseGrant>, LeaseError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(LeaseError::Unavailable {
                message: "unreachable".into(),
            });
        }
        self.inner.renew(grant, ttl).await
    }
    async fn release(&self, grant: &LeaseGrant) -> Result<(), LeaseError> {
        self.inner.release(grant).await
    }
}

/// What the replicas did: (replica, started or ended, when).
type Log = Arc<Mutex<Vec<(&'static str, &'static str, Timestamp)>>>;

fn replica(
    name: &'static str,
    lease: Arc<dyn LeaderLease>,
    clock: Arc<dyn Clock>,
    log: Log,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let leadership = Leadership {
        lease,
        clock: clock.clone(),
        holder: name.into(),
        ttl: Duration::from_secs(5),
        renew_every: Duration::from_secs(1),
        role: "the test",
    };
    let task = tokio::spawn(async move {
        let ended = log.clone();
        let ended_clock = clock.clone();
        leadership
            .run(
                async {
                    let _ = stopped.await;
                },
                |_grant| {
                    let (log, clock) = (log.clone(), clock.clone());
                    async move {
                        log.lock().unwrap().push((name, "started", clock.now()));
                        std::future::pending::<()>().await;
                    }
                },
                move |end| {
                    let what = match end {
                        TermEnd::LostLease => "lost",
                        TermEnd::Shutdown => "shut down",
                    };
                    ended.lock().unwrap().push((name, what, ended_clock.now()));
                },
            )
            .await;
    });
    (task, stop)
}

#[tokio::test(start_paused = true)]
async fn renewals_failing_end_the_term_when_the_grant_expires_and_the_other_replica_takes_over() {
    let clock: Arc<dyn Clock> = TokioClock::at(T0);
    let inner = Arc::new(MemoryLeaderLease::new(clock.clone()));
    let flaky = Arc::new(Unreachable {
        inner: inner.clone(),
        failing: AtomicBool::new(false),
    });
    let log: Log = Arc::default();
    let (_a, _stop_a) = replica("a", flaky.clone(), clock.clone(), log.clone());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (_b, _stop_b) = replica("b", inner.clone(), clock.clone(), log.clone());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        *log.lock().unwrap(),
        [("a", "started", T0)],
        "a leads, b follows"
    );

    // From 30 s on, a cannot renew: its last grant (renewed at 30 s) expires at 35 s.
    flaky.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let log = log.lock().unwrap().clone();
    let at = |ms: u64| T0 + Duration::from_millis(ms);
    assert_eq!(
        log,
        [
            ("a", "started", T0),
            ("a", "lost", at(35_000)),
            // b tries every second from 10 ms on: its first try after the expiry.
            ("b", "started", at(35_010)),
        ],
        "a steps down when its grant expires, never after; b leads from then, never before"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_releases_the_lease_so_the_follower_leads_within_a_renewal_period() {
    let clock: Arc<dyn Clock> = TokioClock::at(T0);
    let lease = Arc::new(MemoryLeaderLease::new(clock.clone()));
    let log: Log = Arc::default();
    let (a, stop_a) = replica("a", lease.clone(), clock.clone(), log.clone());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (_b, _stop_b) = replica("b", lease.clone(), clock.clone(), log.clone());
    tokio::time::sleep(Duration::from_millis(9_990)).await;
    stop_a.send(()).unwrap();
    a.await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log[..2],
        [
            ("a", "started", T0),
            ("a", "shut down", T0 + Duration::from_secs(10))
        ]
    );
    let (who, what, when) = log[2];
    assert_eq!((who, what), ("b", "started"));
    assert!(
        when <= T0 + Duration::from_secs(11),
        "b leads within a renewal period of the release, not when the grant would have expired: {when}"
    );
    assert_eq!(log.len(), 3);
}
