//! Conformance cases of the [`PollQueue`] port.

use std::sync::Arc;
use std::time::Duration;

use crate::conformance::fixtures::{self, Advance};
use crate::conformance::join2;
use crate::model::{ChamberId, OrganizationId, PollJob};
use crate::ports::{Clock, PollQueue, QueueInspector, QueuedJobState};
use crate::time::Timestamp;

/// A fresh queue, the clock it runs on, and a way to let time pass.
#[derive(Clone)]
pub struct QueueFixture {
    pub queue: Arc<dyn PollQueue>,
    /// The same queue seen read-only, through its own connection where the adapter has one (as
    /// the console's process sees the workers' queue).
    pub inspector: Arc<dyn QueueInspector>,
    pub clock: Arc<dyn Clock>,
    pub advance: Advance,
    pub keepalive: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for QueueFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueFixture").finish_non_exhaustive()
    }
}

const VISIBILITY: Duration = Duration::from_millis(400);
/// Long enough for any adapter to notice a deadline it has passed.
const PATIENCE: Duration = Duration::from_secs(5);

fn jobs(f: &QueueFixture, n: usize) -> Vec<PollJob> {
    let org = OrganizationId::random();
    let now = f.clock.now();
    (0..n)
        .map(|i| {
            let slot = Timestamp::from_unix_millis(now.as_unix_millis() - 1000 + i as i64);
            fixtures::poll_job(org, ChamberId::random(), slot, 1, now)
        })
        .collect()
}

pub async fn enqueue_deduplicates_by_poll_identity(f: &QueueFixture) {
    let js = jobs(f, 3);
    let report = f.queue.enqueue(&js).await.unwrap();
    assert_eq!((report.new, report.duplicates), (3, 0));
    // The same polls again, and one repeated within a call: all refused.
    let mut again = js.clone();
    again.push(js[0].clone());
    let report = f.queue.enqueue(&again).await.unwrap();
    assert_eq!((report.new, report.duplicates), (0, 4));
    let fresh = jobs(f, 1);
    let report = f
        .queue
        .enqueue(&[fresh[0].clone(), fresh[0].clone()])
        .await
        .unwrap();
    assert_eq!((report.new, report.duplicates), (1, 1));
    let leased = f.queue.lease(10, VISIBILITY, Duration::ZERO).await.unwrap();
    assert_eq!(leased.len(), 4);
}

pub async fn each_job_goes_to_one_worker_with_its_metadata(f: &QueueFixture) {
    let js = jobs(f, 3);
    f.queue.enqueue(&js).await.unwrap();
    let a = f
        .queue
        .lease(2, VISIBILITY * 10, Duration::ZERO)
        .await
        .unwrap();
    let b = f
        .queue
        .lease(2, VISIBILITY * 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((a.len(), b.len()), (2, 1));
    let mut seen: Vec<_> = a.iter().chain(&b).map(|l| l.job.clone()).collect();
    seen.sort_by_key(|j| j.poll);
    let mut expected = js.clone();
    expected.sort_by_key(|j| j.poll);
    assert_eq!(
        seen, expected,
        "jobs arrive whole: poll, interval, kind, trace, attempt 1, enqueued_at"
    );
    assert!(
        f.queue
            .lease(2, VISIBILITY, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let receipts: Vec<_> = a.iter().chain(&b).map(|l| l.receipt.clone()).collect();
    assert_eq!(f.queue.ack(&receipts).await.unwrap(), 3);
    assert_eq!(
        f.queue.ack(&receipts).await.unwrap(),
        0,
        "acking twice removes nothing more"
    );
    let depth = f.queue.depth().await.unwrap();
    assert_eq!((depth.ready, depth.leased, depth.delayed), (0, 0, 0));
}

pub async fn an_expired_lease_is_delivered_again(f: &QueueFixture) {
    let js = jobs(f, 1);
    f.queue.enqueue(&js).await.unwrap();
    let first = f.queue.lease(1, VISIBILITY, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    (f.advance)(VISIBILITY + Duration::from_millis(50)).await;
    let second = f.queue.lease(1, VISIBILITY * 10, PATIENCE).await.unwrap();
    assert_eq!(
        second.len(),
        1,
        "the job comes back after its visibility timeout"
    );
    assert_eq!(second[0].job.poll, js[0].poll);
    assert_eq!(second[0].job.meta.attempt, 2);
    // The first worker's receipt is stale now: it cannot remove the job from the second.
    assert_eq!(
        f.queue
            .ack(std::slice::from_ref(&first[0].receipt))
            .await
            .unwrap(),
        0
    );
    assert_eq!(f.queue.depth().await.unwrap().leased, 1);
    assert_eq!(
        f.queue
            .ack(std::slice::from_ref(&second[0].receipt))
            .await
            .unwrap(),
        1
    );
}

pub async fn an_extended_lease_is_kept_and_a_stale_one_is_not(f: &QueueFixture) {
    let js = jobs(f, 1);
    f.queue.enqueue(&js).await.unwrap();
    let first = f.queue.lease(1, VISIBILITY, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    let receipt = std::slice::from_ref(&first[0].receipt);
    (f.advance)(VISIBILITY * 3 / 4).await;
    assert_eq!(f.queue.extend(receipt, VISIBILITY).await.unwrap(), 1);
    (f.advance)(VISIBILITY * 3 / 4).await;
    assert!(
        f.queue
            .lease(1, VISIBILITY, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "past the first visibility timeout, the extended lease still holds the job"
    );
    (f.advance)(VISIBILITY / 2).await;
    let second = f.queue.lease(1, VISIBILITY * 10, PATIENCE).await.unwrap();
    assert_eq!(
        second.len(),
        1,
        "the job comes back once the extension ran out"
    );
    assert_eq!(second[0].job.meta.attempt, 2);
    assert_eq!(
        f.queue.extend(receipt, VISIBILITY * 10).await.unwrap(),
        0,
        "the first receipt is stale: it cannot take the job back from the second"
    );
    let current = std::slice::from_ref(&second[0].receipt);
    assert_eq!(f.queue.ack(current).await.unwrap(), 1);
    assert_eq!(
        f.queue.extend(current, VISIBILITY).await.unwrap(),
        0,
        "an acked job is not extended"
    );
    assert_eq!(f.queue.depth().await.unwrap().leased, 0);
}

pub async fn release_gives_a_job_back_after_its_delay(f: &QueueFixture) {
    let js = jobs(f, 1);
    f.queue.enqueue(&js).await.unwrap();
    let leased = f
        .queue
        .lease(1, VISIBILITY * 10, Duration::ZERO)
        .await
        .unwrap();
    let delay = Duration::from_millis(300);
    f.queue.release(&leased[0].receipt, delay).await.unwrap();
    assert!(
        f.queue
            .lease(1, VISIBILITY, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "not before its delay"
    );
    assert_eq!(f.queue.depth().await.unwrap().delayed, 1);
    (f.advance)(delay + Duration::from_millis(50)).await;
    let again = f.queue.lease(1, VISIBILITY, PATIENCE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].job.meta.attempt, 2);
    // Releasing with a stale receipt is ignored.
    f.queue
        .release(&leased[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(f.queue.depth().await.unwrap().leased, 1);
}

pub async fn a_waiting_lease_wakes_when_a_job_arrives(f: &QueueFixture) {
    let js = jobs(f, 1);
    let queue = f.queue.clone();
    let (leased, report) = join2(f.queue.lease(1, VISIBILITY, PATIENCE), async move {
        queue.enqueue(&js).await.unwrap()
    })
    .await;
    assert_eq!(report.new, 1);
    assert_eq!(leased.unwrap().len(), 1);
}

pub async fn dedup_outlives_the_ack(f: &QueueFixture) {
    let js = jobs(f, 1);
    f.queue.enqueue(&js).await.unwrap();
    let leased = f.queue.lease(1, VISIBILITY, Duration::ZERO).await.unwrap();
    f.queue.ack(&[leased[0].receipt.clone()]).await.unwrap();
    let report = f.queue.enqueue(&js).await.unwrap();
    assert_eq!(
        report.duplicates, 1,
        "a poll done once is not enqueued again within its dedup TTL"
    );
}

pub async fn depth_counts_ready_and_leased_jobs(f: &QueueFixture) {
    assert_eq!(
        f.queue.depth().await.unwrap().oldest_ready_enqueued_at,
        None
    );
    let js = jobs(f, 5);
    f.queue.enqueue(&js).await.unwrap();
    f.queue
        .lease(2, VISIBILITY * 10, Duration::ZERO)
        .await
        .unwrap();
    let depth = f.queue.depth().await.unwrap();
    assert_eq!((depth.ready, depth.leased), (3, 2));
    assert_eq!(depth.oldest_ready_enqueued_at, Some(js[0].meta.enqueued_at));
}

pub async fn inspection_shows_each_job_where_it_is_and_changes_nothing(f: &QueueFixture) {
    let js = jobs(f, 4);
    f.queue.enqueue(&js).await.unwrap();
    let polls =
        |listed: &[crate::ports::QueuedJob]| listed.iter().map(|q| q.job.poll).collect::<Vec<_>>();
    let ready = f
        .inspector
        .jobs(QueuedJobState::Ready, 0, 10)
        .await
        .unwrap();
    assert_eq!(polls(&ready), js.iter().map(|j| j.poll).collect::<Vec<_>>());
    assert!(
        ready
            .iter()
            .all(|q| q.state == QueuedJobState::Ready && q.consumer.is_none())
    );

    let leased = f
        .queue
        .lease(2, Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(leased.len(), 2);
    f.queue
        .release(&leased[1].receipt, Duration::from_secs(60))
        .await
        .unwrap();
    let depth = f.queue.depth().await.unwrap();

    let ready = f
        .inspector
        .jobs(QueuedJobState::Ready, 0, 10)
        .await
        .unwrap();
    assert_eq!(polls(&ready), vec![js[2].poll, js[3].poll]);
    assert_eq!(
        polls(
            &f.inspector
                .jobs(QueuedJobState::Ready, 1, 10)
                .await
                .unwrap()
        ),
        vec![js[3].poll]
    );
    assert_eq!(
        polls(&f.inspector.jobs(QueuedJobState::Ready, 0, 1).await.unwrap()),
        vec![js[2].poll]
    );
    let held = f
        .inspector
        .jobs(QueuedJobState::Leased, 0, 10)
        .await
        .unwrap();
    assert_eq!(polls(&held), vec![js[0].poll]);
    assert_eq!(held[0].state, QueuedJobState::Leased);
    let holder = held[0]
        .consumer
        .clone()
        .expect("a leased job names its consumer");
    let delayed = f
        .inspector
        .jobs(QueuedJobState::Delayed, 0, 10)
        .await
        .unwrap();
    assert_eq!(polls(&delayed), vec![js[1].poll]);
    assert_eq!(delayed[0].state, QueuedJobState::Delayed);
    assert!(
        ready
            .iter()
            .chain(&delayed)
            .all(|q| q.leased_at.is_none() && q.consumer.is_none())
    );

    let consumers = f
        .inspector
        .consumers(Duration::from_secs(60))
        .await
        .unwrap();
    let named: Vec<_> = consumers.iter().filter(|c| c.name == holder).collect();
    assert_eq!(named.len(), 1, "{consumers:?}");
    assert_eq!(named[0].leased, 1);
    assert!(named[0].idle < Duration::from_secs(60));

    let found = f
        .inspector
        .job(&held[0].id)
        .await
        .unwrap()
        .expect("the leased job");
    assert_eq!(
        (found.job.poll, found.state),
        (js[0].poll, QueuedJobState::Leased)
    );
    let found = f
        .inspector
        .job(&ready[0].id)
        .await
        .unwrap()
        .expect("a ready job");
    assert_eq!(
        (found.job.poll, found.state),
        (js[2].poll, QueuedJobState::Ready)
    );
    let found = f
        .inspector
        .job(&delayed[0].id)
        .await
        .unwrap()
        .expect("the delayed job");
    assert_eq!(
        (found.job.poll, found.state),
        (js[1].poll, QueuedJobState::Delayed)
    );
    // Looking changed nothing: the same depth, and the receipt still acks its job.
    assert_eq!(f.queue.depth().await.unwrap(), depth);
    assert_eq!(f.queue.ack(&[leased[0].receipt.clone()]).await.unwrap(), 1);
    assert_eq!(
        f.inspector.job(&held[0].id).await.unwrap(),
        None,
        "acked: gone"
    );
}

/// Expands to one `#[tokio::test]` per queue case; `$make` evaluates to a future of a fresh
/// [`QueueFixture`].
#[macro_export]
macro_rules! queue_conformance_tests {
    ($make:expr) => {
        $crate::queue_conformance_tests!(@cases $make;
            enqueue_deduplicates_by_poll_identity,
            each_job_goes_to_one_worker_with_its_metadata,
            an_expired_lease_is_delivered_again,
            an_extended_lease_is_kept_and_a_stale_one_is_not,
            release_gives_a_job_back_after_its_delay,
            a_waiting_lease_wakes_when_a_job_arrives,
            dedup_outlives_the_ack,
            depth_counts_ready_and_leased_jobs,
            inspection_shows_each_job_where_it_is_and_changes_nothing
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let fixture: $crate::conformance::queue::QueueFixture = $make.await;
                $crate::conformance::queue::$case(&fixture).await;
            }
        )*
    };
}
