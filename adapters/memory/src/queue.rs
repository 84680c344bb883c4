//! [`MemoryPollQueue`]: the in-process poll queue of the embedded mode and of domain tests.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::model::PollJob;
use chamberlain_domain::ports::{
    Clock, EnqueueReport, LeaseReceipt, LeasedJob, PollQueue, QueueConsumer, QueueDepth,
    QueueError, QueueInspector, QueuedJob, QueuedJobState,
};
use chamberlain_domain::time::Timestamp;
use tokio::sync::Notify;

use crate::dedup::SeenPolls;

#[derive(Debug)]
struct Stored {
    job: PollJob,
    /// Not leasable before this instant (release delay).
    visible_at: Timestamp,
    /// Current lease: receipt and deadline.
    lease: Option<(String, Timestamp)>,
    /// When the current lease began.
    leased_at: Option<Timestamp>,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<u64, Stored>,
    /// Jobs not leased, by (visible_at, id): oldest first.
    waiting: BTreeSet<(Timestamp, u64)>,
    /// Leased jobs by (deadline, id).
    leased: BTreeSet<(Timestamp, u64)>,
    /// Poll identities seen, until when they refuse duplicates.
    seen: SeenPolls,
    next_id: u64,
    next_lease: u64,
    /// When a worker last asked for jobs.
    last_lease_call: Option<Timestamp>,
}

impl State {
    /// Returns expired leases to the waiting set, one attempt more.
    fn expire_leases(&mut self, now: Timestamp) {
        while let Some(&(deadline, id)) = self.leased.first() {
            if deadline > now {
                break;
            }
            self.leased.pop_first();
            if let Some(stored) = self.jobs.get_mut(&id) {
                stored.lease = None;
                stored.job.meta.attempt = stored.job.meta.attempt.saturating_add(1);
                stored.visible_at = deadline;
                self.waiting.insert((deadline, id));
            }
        }
    }

    /// Shrinks the jobs' table when it is far larger than the jobs (left so by a burst: the
    /// start-up's first polls, a worker away).
    fn shrink_jobs(&mut self) {
        let held = self.jobs.len().max(1024);
        if self.jobs.capacity() > 4 * held {
            self.jobs.shrink_to(2 * held);
        }
    }

    fn take_ready(&mut self, now: Timestamp, max: usize, visibility: Duration) -> Vec<LeasedJob> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(visible_at, id)) = self.waiting.first() else {
                break;
            };
            if visible_at > now {
                break;
            }
            self.waiting.pop_first();
            let Some(stored) = self.jobs.get_mut(&id) else {
                continue;
            };
            self.next_lease += 1;
            let receipt = format!("{id}:{}", self.next_lease);
            let deadline = now + visibility;
            stored.lease = Some((receipt.clone(), deadline));
            stored.leased_at = Some(now);
            self.leased.insert((deadline, id));
            out.push(LeasedJob {
                job: stored.job.clone(),
                receipt: LeaseReceipt(receipt),
            });
        }
        out
    }

    /// The job a receipt leases, if that lease is still current.
    fn leased_by(&self, receipt: &LeaseReceipt) -> Option<u64> {
        let id: u64 = receipt.0.split_once(':')?.0.parse().ok()?;
        let stored = self.jobs.get(&id)?;
        matches!(&stored.lease, Some((r, _)) if *r == receipt.0).then_some(id)
    }
}

/// The one consumer of the in-process queue: the embedded mode's worker.
const CONSUMER: &str = "in-process";

/// An in-process [`PollQueue`]: at-least-once with visibility timeouts and dedup, on the
/// injected clock; not durable (the embedded mode re-derives due polls from its watermark).
pub struct MemoryPollQueue {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    arrivals: Notify,
}

impl std::fmt::Debug for MemoryPollQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPollQueue").finish_non_exhaustive()
    }
}

impl MemoryPollQueue {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            state: Mutex::default(),
            arrivals: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl PollQueue for MemoryPollQueue {
    async fn enqueue(&self, jobs: &[PollJob]) -> Result<EnqueueReport, QueueError> {
        let now = self.clock.now();
        let mut report = EnqueueReport::default();
        {
            let mut s = self.lock();
            s.seen.purge(now);
            s.shrink_jobs();
            for job in jobs {
                if s.seen.refuses(&job.poll, now) {
                    report.duplicates += 1;
                    continue;
                }
                s.seen.remember(&job.poll, now + job.dedup_ttl());
                s.next_id += 1;
                let id = s.next_id;
                s.jobs.insert(
                    id,
                    Stored {
                        job: job.clone(),
                        visible_at: now,
                        lease: None,
                        leased_at: None,
                    },
                );
                s.waiting.insert((now, id));
                report.new += 1;
            }
        }
        if report.new > 0 {
            self.arrivals.notify_waiters();
        }
        Ok(report)
    }

    async fn lease(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<LeasedJob>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.arrivals.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.clock.now();
            let (jobs, next_visible) = {
                let mut s = self.lock();
                s.last_lease_call = Some(now);
                s.expire_leases(now);
                let jobs = s.take_ready(now, max, visibility);
                let next = [
                    s.waiting.first().map(|w| w.0),
                    s.leased.first().map(|l| l.0),
                ]
                .into_iter()
                .flatten()
                .min();
                (jobs, next)
            };
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !jobs.is_empty() || max == 0 || remaining.is_zero() {
                return Ok(jobs);
            }
            // Sleep until a job arrives, a delayed job or an expired lease becomes leasable,
            // or the wait is over.
            let until_visible = next_visible.map_or(remaining, |t| t.saturating_since(now));
            let nap = remaining.min(until_visible.max(Duration::from_millis(1)));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn ack(&self, receipts: &[LeaseReceipt]) -> Result<u64, QueueError> {
        let mut s = self.lock();
        let mut removed = 0;
        for r in receipts {
            if let Some(id) = s.leased_by(r)
                && let Some(stored) = s.jobs.remove(&id)
            {
                if let Some((_, deadline)) = stored.lease {
                    s.leased.remove(&(deadline, id));
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn extend(
        &self,
        receipts: &[LeaseReceipt],
        visibility: Duration,
    ) -> Result<u64, QueueError> {
        let deadline = self.clock.now() + visibility;
        let mut s = self.lock();
        let mut extended = 0;
        for r in receipts {
            let Some(id) = s.leased_by(r) else {
                continue;
            };
            let Some(stored) = s.jobs.get_mut(&id) else {
                continue;
            };
            let Some((receipt, old)) = stored.lease.take() else {
                continue;
            };
            stored.lease = Some((receipt, deadline));
            s.leased.remove(&(old, id));
            s.leased.insert((deadline, id));
            extended += 1;
        }
        Ok(extended)
    }

    async fn release(&self, receipt: &LeaseReceipt, delay: Duration) -> Result<(), QueueError> {
        let now = self.clock.now();
        {
            let mut s = self.lock();
            let Some(id) = s.leased_by(receipt) else {
                return Ok(());
            };
            let visible_at = now + delay;
            if let Some(stored) = s.jobs.get_mut(&id) {
                let lease = stored.lease.take();
                stored.visible_at = visible_at;
                stored.job.meta.attempt = stored.job.meta.attempt.saturating_add(1);
                if let Some((_, deadline)) = lease {
                    s.leased.remove(&(deadline, id));
                }
                s.waiting.insert((visible_at, id));
            }
        }
        self.arrivals.notify_waiters();
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let now = self.clock.now();
        let mut s = self.lock();
        s.expire_leases(now);
        let mut depth = QueueDepth {
            leased: s.leased.len() as u64,
            ..QueueDepth::default()
        };
        for (visible_at, id) in &s.waiting {
            if *visible_at <= now {
                depth.ready += 1;
                let enqueued = s.jobs.get(id).map(|j| j.job.meta.enqueued_at);
                depth.oldest_ready_enqueued_at = match (depth.oldest_ready_enqueued_at, enqueued) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            } else {
                depth.delayed += 1;
            }
        }
        Ok(depth)
    }
}

impl State {
    fn queued(&self, id: u64, now: Timestamp) -> Option<QueuedJob> {
        let stored = self.jobs.get(&id)?;
        let state = match stored.lease {
            Some(_) => QueuedJobState::Leased,
            None if stored.visible_at > now => QueuedJobState::Delayed,
            None => QueuedJobState::Ready,
        };
        Some(QueuedJob {
            id: id.to_string(),
            job: stored.job.clone(),
            state,
            consumer: stored.lease.as_ref().map(|_| CONSUMER.to_owned()),
            leased_at: stored.lease.as_ref().and(stored.leased_at),
        })
    }
}

#[async_trait]
impl QueueInspector for MemoryPollQueue {
    async fn consumers(&self, within: Duration) -> Result<Vec<QueueConsumer>, QueueError> {
        let now = self.clock.now();
        let mut s = self.lock();
        s.expire_leases(now);
        let leased = s.leased.len() as u64;
        let idle = s.last_lease_call.map(|at| now.saturating_since(at));
        Ok(match idle {
            Some(idle) if idle <= within || leased > 0 => vec![QueueConsumer {
                name: CONSUMER.to_owned(),
                leased,
                idle,
            }],
            _ => Vec::new(),
        })
    }

    async fn jobs(
        &self,
        state: QueuedJobState,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<QueuedJob>, QueueError> {
        let now = self.clock.now();
        let mut s = self.lock();
        s.expire_leases(now);
        let ids: Vec<u64> = match state {
            QueuedJobState::Leased => {
                let mut ids: Vec<u64> = s.leased.iter().map(|&(_, id)| id).collect();
                ids.sort_unstable();
                ids.into_iter().skip(offset).take(limit).collect()
            }
            QueuedJobState::Ready => s
                .waiting
                .iter()
                .filter(|(visible_at, _)| *visible_at <= now)
                .map(|&(_, id)| id)
                .skip(offset)
                .take(limit)
                .collect(),
            QueuedJobState::Delayed => s
                .waiting
                .iter()
                .filter(|(visible_at, _)| *visible_at > now)
                .map(|&(_, id)| id)
                .skip(offset)
                .take(limit)
                .collect(),
        };
        Ok(ids.into_iter().filter_map(|id| s.queued(id, now)).collect())
    }

    async fn job(&self, id: &str) -> Result<Option<QueuedJob>, QueueError> {
        let now = self.clock.now();
        let mut s = self.lock();
        s.expire_leases(now);
        Ok(id.parse().ok().and_then(|id| s.queued(id, now)))
    }
}
