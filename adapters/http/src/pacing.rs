//! [`Pacer`]: per-host pacing (at most N in flight, at most R started per second), keyed by
//! the URL's `host:port`. Off unless configured.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::HostPacing;

/// Past this many hosts, state of hosts with nothing in flight is dropped.
const PRUNE_ABOVE_HOSTS: usize = 4096;

/// Waits for a host's turn.
pub(crate) struct Pacer {
    concurrency: Option<Concurrency>,
    rate: Option<DefaultKeyedRateLimiter<String>>,
}

struct Concurrency {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A request's turn: holds its host's concurrency slot until dropped.
#[derive(Debug)]
pub(crate) struct Turn {
    _slot: Option<OwnedSemaphorePermit>,
}

impl Pacer {
    pub(crate) fn new(pacing: HostPacing) -> Self {
        Self {
            concurrency: pacing.max_concurrent.map(|n| Concurrency {
                per_host: n.get() as usize,
                hosts: Mutex::new(HashMap::new()),
            }),
            rate: pacing
                .requests_per_second
                .map(|n| RateLimiter::keyed(Quota::per_second(n))),
        }
    }

    /// Waits until `host` (a `host:port`) may take one more request: first a concurrency slot,
    /// then the rate. Cancel-safe: dropping the future gives up its place.
    pub(crate) async fn turn(&self, host: &str) -> Turn {
        let slot = match &self.concurrency {
            Some(concurrency) => concurrency.semaphore(host).acquire_owned().await.ok(),
            None => None,
        };
        if let Some(rate) = &self.rate {
            let key = host.to_owned();
            if rate.len() > PRUNE_ABOVE_HOSTS {
                rate.retain_recent();
            }
            while let Err(not_until) = rate.check_key(&key) {
                tokio::time::sleep(not_until.wait_time_from(rate.clock().now())).await;
            }
        }
        Turn { _slot: slot }
    }
}

impl Concurrency {
    fn semaphore(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if hosts.len() > PRUNE_ABOVE_HOSTS {
            // Only this map holds the semaphore of a host with no request waiting or in flight.
            hosts.retain(|_, s| Arc::strong_count(s) > 1);
        }
        Arc::clone(
            hosts
                .entry(host.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_host))),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::num::NonZeroU32;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    #[tokio::test]
    async fn concurrency_is_counted_per_host() {
        let pacer = Pacer::new(HostPacing {
            max_concurrent: NonZeroU32::new(1),
            requests_per_second: None,
        });
        let a = pacer.turn("a:80").await;
        // Another host is not held up by a's request ...
        let _b = pacer.turn("b:80").await;
        // ... but a second request to a waits for the first to finish.
        let mut second = Box::pin(pacer.turn("a:80"));
        assert!(poll_once(second.as_mut()).is_none());
        drop(a);
        let _second = second.await;
    }

    #[tokio::test]
    async fn rate_is_counted_per_host() {
        let pacer = Pacer::new(HostPacing {
            max_concurrent: None,
            requests_per_second: NonZeroU32::new(1),
        });
        let _first = pacer.turn("a:80").await;
        let _other_host = pacer.turn("b:80").await;
        // One per second: a second request to a within the same second is not ready at once.
        let mut second = Box::pin(pacer.turn("a:80"));
        assert!(poll_once(second.as_mut()).is_none());
    }

    #[test]
    fn off_means_no_state() {
        let pacer = Pacer::new(HostPacing::default());
        assert!(pacer.concurrency.is_none() && pacer.rate.is_none());
    }

    /// Polls a future once with a no-op waker.
    fn poll_once<F: Future>(f: Pin<&mut F>) -> Option<F::Output> {
        match f.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        }
    }
}
