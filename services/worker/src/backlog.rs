//! The worker's backpressure: results not stored yet, bounded by count and by bytes.
//!
//! A poll takes a place when the backend hands it to the worker, before it is fetched, and
//! gives it back once its results are stored, or as soon as it turns out to have nothing to
//! store (a retry, a discard, a failure). While every place is taken, or the results waiting
//! reach the byte bound, the backend neither leases nor hands out jobs: due polls wait in the
//! backend and the rest stay in the queue, so nothing is fetched that could not be kept. A poll
//! whose next slot comes first expires, and is recorded as expired because the store was behind
//! (`store_behind`) once the store is back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Context;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::ports::Clock;
use chamberlain_domain::usecases::ProcessedPoll;
use chamberlain_telemetry::instruments;
use futures_util::task::AtomicWaker;
use tokio::time::Instant;

/// At most one warning about a store that is behind per this many milliseconds.
const WARN_EVERY_MS: i64 = 60_000;

/// Stall episodes remembered to tell why a poll expired.
const EPISODES_KEPT: usize = 64;

/// The bounds of a worker's results not stored yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogBounds {
    /// Polls fetched or being fetched whose results are not stored yet.
    pub max_polls: usize,
    /// The results' approximate memory. Passed by at most what the fetches in flight bring
    /// back (each body within its chamber's response cap, then parsed into readings).
    pub max_bytes: usize,
}

/// When the backlog was full: episodes of a store falling behind.
#[derive(Debug, Default)]
struct Episodes {
    current: Option<Timestamp>,
    past: VecDeque<(Timestamp, Timestamp)>,
}

/// The shared count of results not stored yet. See the module docs.
pub(crate) struct Backlog {
    bounds: BacklogBounds,
    polls: AtomicUsize,
    bytes: AtomicUsize,
    /// The backend, waiting for a place.
    room: AtomicWaker,
    waiting_for_room: AtomicBool,
    behind: AtomicBool,
    episodes: Mutex<Episodes>,
    clock: Arc<dyn Clock>,
    /// When the oldest result waiting was fetched, as nanoseconds after `base` plus one (0:
    /// none waiting). Kept by the writer.
    oldest: AtomicU64,
    base: Instant,
    last_warned_ms: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backlog")
            .field("bounds", &self.bounds)
            .field("polls", &self.polls)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Backlog {
    pub(crate) fn new(bounds: BacklogBounds, clock: Arc<dyn Clock>) -> Self {
        Self {
            bounds: BacklogBounds {
                max_polls: bounds.max_polls.max(1),
                max_bytes: bounds.max_bytes.max(1),
            },
            polls: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            room: AtomicWaker::new(),
            waiting_for_room: AtomicBool::new(false),
            behind: AtomicBool::new(false),
            episodes: Mutex::new(Episodes::default()),
            clock,
            oldest: AtomicU64::new(0),
            base: Instant::now(),
            last_warned_ms: std::sync::atomic::AtomicI64::new(i64::MIN / 2),
        }
    }

    /// Polls and bytes waiting now.
    pub(crate) fn waiting(&self) -> (usize, usize) {
        (
            self.polls.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }

    /// Notes when the oldest result waiting in the writer was fetched (none: nothing waits).
    pub(crate) fn set_oldest(&self, fetched_at: Option<Instant>) {
        let nanos = fetched_at.map_or(0, |at| {
            u64::try_from(at.saturating_duration_since(self.base).as_nanos())
                .unwrap_or(u64::MAX - 1)
                + 1
        });
        self.oldest.store(nanos, Ordering::Relaxed);
    }

    /// How long the oldest result waiting has waited.
    pub(crate) fn oldest_age(&self) -> Duration {
        match self.oldest.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            nanos => (self.base + Duration::from_nanos(nanos - 1)).elapsed(),
        }
    }

    /// Records the backlog's gauges: results waiting, their bytes, the oldest's age.
    pub(crate) fn record_gauges(&self) {
        let metrics = instruments();
        let (polls, bytes) = self.waiting();
        metrics.results_waiting.record(polls as u64, &[]);
        metrics.results_waiting_bytes.record(bytes as u64, &[]);
        metrics
            .results_oldest_age
            .record(self.oldest_age().as_secs_f64(), &[]);
    }

    /// Whether the backend must wait: at the bound; and once it was reached, until the results
    /// waiting are back under nine tenths of it (so a store that is behind is not fed one poll
    /// at a time, each place taken as soon as it is given back).
    fn blocked(&self) -> bool {
        if !self.behind.load(Ordering::Acquire) {
            return self.is_full();
        }
        let (polls, bytes) = self.waiting();
        polls * 10 >= self.bounds.max_polls * 9 || bytes >= self.bounds.max_bytes / 10 * 9
    }

    pub(crate) fn is_full(&self) -> bool {
        let (polls, bytes) = self.waiting();
        polls >= self.bounds.max_polls || bytes >= self.bounds.max_bytes
    }

    /// Whether the backend may hand out a job now. If not, registers `cx` to be woken when a
    /// place is given back, and notes that the store is behind.
    pub(crate) fn has_room(&self, cx: &mut Context<'_>) -> bool {
        if self.blocked() {
            self.room.register(cx.waker());
            self.waiting_for_room.store(true, Ordering::SeqCst);
            // A place given back between the check and the registration woke nobody.
            if self.blocked() {
                self.fell_behind();
                return false;
            }
        }
        self.waiting_for_room.store(false, Ordering::Relaxed);
        self.caught_up();
        true
    }

    /// Takes a place for a job the backend handed out (it checked [`Backlog::has_room`] just
    /// before, on the same task, so the bound holds).
    pub(crate) fn take(self: &Arc<Self>) -> Place {
        self.polls.fetch_add(1, Ordering::AcqRel);
        Place {
            backlog: self.clone(),
            bytes: 0,
        }
    }

    fn give_back(&self, bytes: usize) {
        self.polls.fetch_sub(1, Ordering::AcqRel);
        if bytes > 0 {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        if self.waiting_for_room.load(Ordering::SeqCst) && !self.blocked() {
            self.room.wake();
        }
    }

    fn fell_behind(&self) {
        if self.behind.swap(true, Ordering::AcqRel) {
            return;
        }
        let now = self.clock.now();
        self.episodes().current = Some(now);
        let (polls, bytes) = self.waiting();
        instruments().store_behind.record(1, &[]);
        // A store that stays behind falls behind again and again: said once a minute at most.
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        let now_ms = now.as_unix_millis();
        if now_ms - last >= WARN_EVERY_MS
            && self
                .last_warned_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                polls,
                bytes,
                "the store is behind: results waiting to be stored reached their bound; no new polls until they are stored (said once a minute at most; see chamberlain_worker_store_behind)"
            );
        } else {
            tracing::debug!(polls, bytes, "the store is behind again");
        }
    }

    fn caught_up(&self) {
        if !self.behind.load(Ordering::Acquire) || !self.behind.swap(false, Ordering::AcqRel) {
            return;
        }
        let now = self.clock.now();
        let mut episodes = self.episodes();
        if let Some(since) = episodes.current.take() {
            if episodes.past.len() == EPISODES_KEPT {
                episodes.past.pop_front();
            }
            episodes.past.push_back((since, now));
            drop(episodes);
            tracing::debug!(
                behind_for_ms = now.saturating_since(since).as_millis() as u64,
                "the store caught up; taking polls again"
            );
        }
        instruments().store_behind.record(0, &[]);
    }

    /// Whether the store was behind at some time in `from..to` (a poll due in that window and
    /// not fetched in it expired because of it).
    pub(crate) fn was_behind_within(&self, from: Timestamp, to: Timestamp) -> bool {
        let episodes = self.episodes();
        episodes.current.is_some_and(|since| since < to)
            || episodes
                .past
                .iter()
                .any(|&(since, until)| since < to && until >= from)
    }

    fn episodes(&self) -> std::sync::MutexGuard<'_, Episodes> {
        self.episodes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One poll's place in the backlog, given back when dropped: once its results are stored, or
/// when there is nothing to store.
#[derive(Debug)]
pub(crate) struct Place {
    backlog: Arc<Backlog>,
    bytes: usize,
}

impl Place {
    /// Counts the poll's results against the byte bound until the place is given back.
    pub(crate) fn hold(&mut self, poll: &ProcessedPoll) {
        let bytes = approximate_bytes(poll);
        self.backlog.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.bytes += bytes;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.backlog.give_back(self.bytes);
    }
}

/// A fetched poll's memory while it waits, roughly: its readings and ledger entry, the text
/// of its outcome, and the writer's bookkeeping.
pub(crate) fn approximate_bytes(poll: &ProcessedPoll) -> usize {
    use chamberlain_domain::model::{PollOutcome, Reading};
    const OVERHEAD: usize = 256;
    let record = &poll.record;
    let text = match &record.entry.outcome {
        PollOutcome::ConnectionFailed { reason }
        | PollOutcome::Blocked { reason }
        | PollOutcome::Malformed { reason } => reason.capacity(),
        _ => 0,
    };
    OVERHEAD + size_of::<ProcessedPoll>() + text + record.readings.capacity() * size_of::<Reading>()
}
