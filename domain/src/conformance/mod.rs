//! Port conformance suites: the behaviour every adapter of a port must show, written once and
//! run against each adapter (memory, SQLite, PostgreSQL for the repositories; memory and Redis
//! for the queue and the lease) by the macros [`store_conformance_tests!`],
//! [`queue_conformance_tests!`], [`coordination_conformance_tests!`],
//! [`changes_conformance_tests!`] and [`access_conformance_tests!`].
//!
//! Each case is an `async fn` that panics on a violation. The macros expand to one
//! `#[tokio::test]` per case, so the invoking crate needs tokio (macros, rt) as a
//! dev-dependency, and a fresh fixture is built for every case (a fresh database, a fresh key
//! prefix).
//!
//! [`store_conformance_tests!`]: crate::store_conformance_tests
//! [`queue_conformance_tests!`]: crate::queue_conformance_tests
//! [`coordination_conformance_tests!`]: crate::coordination_conformance_tests
//! [`changes_conformance_tests!`]: crate::changes_conformance_tests
//! [`access_conformance_tests!`]: crate::access_conformance_tests

pub mod access;
pub mod alerts;
pub mod changes;
pub mod coordination;
pub mod fixtures;
pub mod poll_reads;
pub mod queue;
pub mod store;

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

/// Runs two futures concurrently on the current task (no runtime needed), for cases such as
/// "a waiting lease is woken by an enqueue".
pub async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let (mut ra, mut rb) = (None, None);
    poll_fn(move |cx| {
        if ra.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        match (ra.take(), rb.take()) {
            (Some(x), Some(y)) => Poll::Ready((x, y)),
            (x, y) => {
                ra = x;
                rb = y;
                Poll::Pending
            }
        }
    })
    .await
}
