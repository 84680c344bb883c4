//! Counts every request as it arrives, in bounded memory, and summarises them as a
//! [`SimulatorReport`].
//!
//! Per request: one uncontended per-chamber mutex (chambers are polled by one poller at a
//! time, so two requests rarely race for the same chamber) and a handful of relaxed atomic
//! adds. Memory is fixed at start: one [`ChamberState`] (about 200 bytes) per chamber plus
//! one lateness histogram, however long the run.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::config::{CorruptKind, SimulatorConfig};
use crate::report::{ChamberReport, Duplicates, Injected, Lateness, SimulatorReport};

/// How many of a chamber's newest distinct slots are remembered to tell a repeat from a new
/// slot. A request for a slot older than all of them is counted as out of window.
pub const SLOT_WINDOW: usize = 16;

/// When and how a request arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    /// Monotonic arrival time.
    pub(crate) at: Instant,
    /// Wall-clock arrival time, unix ms, from the configured clock.
    pub(crate) wall_ms: i64,
}

/// How the simulator chose to answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Answered,
    ServerError,
    Corrupt(CorruptKind),
    Hung,
    Oversized,
}

/// Everything recorded since the start or the last reset.
pub(crate) struct Recorder {
    /// Origin of every monotonic offset below.
    base: Instant,
    /// Offset of the last reset, ns.
    since_ns: AtomicU64,
    /// Offsets of the first and last arrival since then, ns (`u64::MAX` and 0 when none).
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    requests: AtomicU64,
    unknown_chamber: AtomicU64,
    errors: AtomicU64,
    corrupt: [AtomicU64; 3],
    hung: AtomicU64,
    oversized: AtomicU64,
    lateness: Histogram,
    chambers: Box<[Mutex<ChamberState>]>,
}

impl std::fmt::Debug for Recorder {
    /// Short: a fleet can have 100,000 chambers.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("chambers", &self.chambers.len())
            .field("requests", &self.requests.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Recorder {
    pub(crate) fn new(chambers: u32) -> Self {
        Self {
            base: Instant::now(),
            since_ns: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            unknown_chamber: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            corrupt: Default::default(),
            hung: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
            lateness: Histogram::new(),
            chambers: (0..chambers)
                .map(|_| Mutex::new(ChamberState::default()))
                .collect(),
        }
    }

    fn offset_ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn arrived(&self, arrival: Arrival) {
        let ns = self.offset_ns(arrival.at);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.first_ns.fetch_min(ns, Ordering::Relaxed);
        self.last_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// A request for a chamber that does not exist.
    pub(crate) fn record_unknown_chamber(&self, arrival: Arrival) {
        self.arrived(arrival);
        self.unknown_chamber.fetch_add(1, Ordering::Relaxed);
    }

    /// A request for chamber `chamber` (which exists).
    pub(crate) fn record(
        &self,
        chamber: u32,
        arrival: Arrival,
        slot: Option<i64>,
        attempt: Option<u32>,
        outcome: Outcome,
    ) {
        self.arrived(arrival);
        match outcome {
            Outcome::Answered => {}
            Outcome::ServerError => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Corrupt(kind) => {
                self.corrupt[kind as usize].fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Hung => {
                self.hung.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Oversized => {
                self.oversized.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(slot) = slot {
            self.lateness.record(arrival.wall_ms.saturating_sub(slot));
        }
        let Some(state) = self.chambers.get(chamber as usize) else {
            return;
        };
        lock(state).record(slot, attempt.unwrap_or(1), outcome);
    }

    /// Forgets everything recorded so far.
    pub(crate) fn reset(&self) {
        self.since_ns
            .store(self.offset_ns(Instant::now()), Ordering::Relaxed);
        self.first_ns.store(u64::MAX, Ordering::Relaxed);
        self.last_ns.store(0, Ordering::Relaxed);
        for counter in [
            &self.requests,
            &self.unknown_chamber,
            &self.errors,
            &self.hung,
            &self.oversized,
        ]
        .into_iter()
        .chain(&self.corrupt)
        {
            counter.store(0, Ordering::Relaxed);
        }
        self.lateness.reset();
        for state in &self.chambers {
            *lock(state) = ChamberState::default();
        }
    }

    /// A summary of everything recorded so far.
    pub(crate) fn report(&self, config: &SimulatorConfig) -> SimulatorReport {
        let now_ns = self.offset_ns(Instant::now());
        let since_ns = self.since_ns.load(Ordering::Relaxed);
        let first_ns = self.first_ns.load(Ordering::Relaxed);
        let last_ns = self.last_ns.load(Ordering::Relaxed);
        let requests = self.requests.load(Ordering::Relaxed);
        let corrupt = self.corrupt.each_ref().map(|c| c.load(Ordering::Relaxed));

        let mut report = SimulatorReport {
            chambers: config.chambers(),
            detectors: config.detectors(),
            elapsed_ms: now_ns.saturating_sub(since_ns) / 1_000_000,
            requests,
            rate_per_second: None,
            unslotted_requests: 0,
            unknown_chamber_requests: self.unknown_chamber.load(Ordering::Relaxed),
            retry_requests: 0,
            lateness_ms: self.lateness.summary(),
            duplicates: Duplicates::default(),
            out_of_window: 0,
            missed_slots: None,
            injected: Injected {
                errors: self.errors.load(Ordering::Relaxed),
                corrupt: corrupt.iter().sum(),
                garbage: corrupt[CorruptKind::Garbage as usize],
                nan: corrupt[CorruptKind::NaN as usize],
                missing_detector: corrupt[CorruptKind::MissingDetector as usize],
                hung: self.hung.load(Ordering::Relaxed),
                oversized: self.oversized.load(Ordering::Relaxed),
            },
            chambers_polled: 0,
            min_requests_per_chamber: u64::MAX,
            max_requests_per_chamber: 0,
            per_chamber: Vec::new(),
        };
        if requests >= 2 && last_ns > first_ns {
            report.rate_per_second =
                Some((requests - 1) as f64 / ((last_ns - first_ns) as f64 / 1e9));
        }
        for (chamber, state) in (0u32..).zip(self.chambers.iter()) {
            let state = *lock(state);
            let requests = u64::from(state.requests);
            report.min_requests_per_chamber = report.min_requests_per_chamber.min(requests);
            report.max_requests_per_chamber = report.max_requests_per_chamber.max(requests);
            if requests == 0 {
                continue;
            }
            let interval_ms = config
                .interval(chamber)
                .map(|i| u64::try_from(i.as_millis()).unwrap_or(u64::MAX));
            let missed = interval_ms.map(|i| state.missed(i));
            let chamber_report = ChamberReport {
                chamber,
                requests,
                retry_requests: u64::from(state.retry_requests),
                unslotted_requests: u64::from(state.unslotted),
                duplicates: Duplicates {
                    attempt_one: u64::from(state.repeats_attempt_one),
                    retries: u64::from(state.repeats_retry),
                },
                missed_slots: missed,
                out_of_window: u64::from(state.out_of_window),
                errors_injected: u64::from(state.errors),
                corrupt_injected: u64::from(state.corrupt),
                first_slot: (state.distinct > 0).then_some(state.min_slot),
                last_slot: (state.distinct > 0).then_some(state.max_slot),
            };
            report.chambers_polled += 1;
            report.unslotted_requests += chamber_report.unslotted_requests;
            report.retry_requests += chamber_report.retry_requests;
            report.duplicates.attempt_one += chamber_report.duplicates.attempt_one;
            report.duplicates.retries += chamber_report.duplicates.retries;
            report.out_of_window += chamber_report.out_of_window;
            if let Some(missed) = missed {
                *report.missed_slots.get_or_insert(0) += missed;
            }
            report.per_chamber.push(chamber_report);
        }
        if report.missed_slots.is_none()
            && (config.interval.is_some() || !config.chamber_intervals.is_empty())
        {
            report.missed_slots = Some(0);
        }
        if report.min_requests_per_chamber == u64::MAX {
            report.min_requests_per_chamber = 0;
        }
        report
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What is kept of one chamber's requests.
#[derive(Debug, Clone, Copy, Default)]
struct ChamberState {
    requests: u32,
    retry_requests: u32,
    unslotted: u32,
    repeats_attempt_one: u32,
    repeats_retry: u32,
    out_of_window: u32,
    errors: u32,
    corrupt: u32,
    /// Distinct slots seen (out-of-window requests excluded).
    distinct: u32,
    min_slot: i64,
    max_slot: i64,
    /// The newest distinct slots, ascending: `window[..window_len]`.
    window: [i64; SLOT_WINDOW],
    window_len: u8,
}

/// Whether a slot was seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    New,
    Repeat,
    /// Older than every remembered slot: cannot tell.
    OutOfWindow,
}

impl ChamberState {
    fn record(&mut self, slot: Option<i64>, attempt: u32, outcome: Outcome) {
        bump(&mut self.requests);
        let retry = attempt > 1;
        if retry {
            bump(&mut self.retry_requests);
        }
        match outcome {
            Outcome::ServerError => bump(&mut self.errors),
            Outcome::Corrupt(_) => bump(&mut self.corrupt),
            Outcome::Answered | Outcome::Hung | Outcome::Oversized => {}
        }
        let Some(slot) = slot else {
            bump(&mut self.unslotted);
            return;
        };
        match self.observe(slot) {
            Seen::New => {}
            Seen::Repeat if retry => bump(&mut self.repeats_retry),
            Seen::Repeat => bump(&mut self.repeats_attempt_one),
            Seen::OutOfWindow => bump(&mut self.out_of_window),
        }
    }

    fn observe(&mut self, slot: i64) -> Seen {
        let len = usize::from(self.window_len);
        let pos = match self.window[..len].binary_search(&slot) {
            Ok(_) => return Seen::Repeat,
            Err(pos) => pos,
        };
        if len == SLOT_WINDOW {
            if pos == 0 {
                return Seen::OutOfWindow;
            }
            // Drop the oldest and insert before `pos`.
            self.window.copy_within(1..pos, 0);
            self.window[pos - 1] = slot;
        } else {
            self.window.copy_within(pos..len, pos + 1);
            self.window[pos] = slot;
            self.window_len += 1;
        }
        if self.distinct == 0 {
            self.min_slot = slot;
            self.max_slot = slot;
        } else {
            self.min_slot = self.min_slot.min(slot);
            self.max_slot = self.max_slot.max(slot);
        }
        bump(&mut self.distinct);
        Seen::New
    }

    /// Slots on the grid from the first to the last slot seen (`interval_ms` apart) that were
    /// never requested: a gap of k intervals between consecutive slots counts k − 1.
    fn missed(&self, interval_ms: u64) -> u64 {
        if self.distinct == 0 || interval_ms == 0 {
            return 0;
        }
        let span = self.max_slot.abs_diff(self.min_slot);
        let expected = span.saturating_add(interval_ms / 2) / interval_ms + 1;
        expected.saturating_sub(u64::from(self.distinct))
    }
}

fn bump(counter: &mut u32) {
    *counter = counter.saturating_add(1);
}

/// Sub-buckets per power of two: values are kept within 1/64 (1.6 %); below 128 exactly.
const SUB_BUCKETS: u64 = 64;
/// Values from `2^MAX_EXPONENT` ms (about 70 minutes) on share the last, overflow bucket.
const MAX_EXPONENT: u32 = 22;
const BUCKETS: usize = (2 * SUB_BUCKETS + (MAX_EXPONENT as u64 - 7) * SUB_BUCKETS) as usize + 1;

/// A log-linear histogram of lateness in ms (HDR-like): exact below 128 ms, within 1.6 %
/// above; negative values (early requests) count in bucket 0 and in `early`. The maximum is
/// kept exactly.
struct Histogram {
    buckets: Box<[AtomicU64]>,
    samples: AtomicU64,
    early: AtomicU64,
    max: AtomicI64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            samples: AtomicU64::new(0),
            early: AtomicU64::new(0),
            max: AtomicI64::new(i64::MIN),
        }
    }

    fn record(&self, value: i64) {
        if value < 0 {
            self.early.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[bucket_of(value.max(0).unsigned_abs())].fetch_add(1, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    fn reset(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Ordering::Relaxed);
        }
        self.samples.store(0, Ordering::Relaxed);
        self.early.store(0, Ordering::Relaxed);
        self.max.store(i64::MIN, Ordering::Relaxed);
    }

    fn summary(&self) -> Lateness {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let samples: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let max = (samples > 0 && max != i64::MIN).then_some(max);
        let quantile = |q: f64| {
            let rank = ((q * samples as f64).ceil() as u64).clamp(1, samples);
            let mut seen = 0;
            counts.iter().enumerate().find_map(|(bucket, &count)| {
                seen += count;
                (seen >= rank).then(|| {
                    let high = i64::try_from(bucket_high(bucket)).unwrap_or(i64::MAX);
                    max.map_or(high, |max| high.min(max))
                })
            })
        };
        Lateness {
            samples,
            early: self.early.load(Ordering::Relaxed),
            p50: (samples > 0).then(|| quantile(0.50)).flatten(),
            p99: (samples > 0).then(|| quantile(0.99)).flatten(),
            max,
        }
    }
}

/// The bucket of a value.
fn bucket_of(value: u64) -> usize {
    if value < 2 * SUB_BUCKETS {
        return value as usize;
    }
    if value >= 1 << MAX_EXPONENT {
        return BUCKETS - 1;
    }
    let shift = 63 - value.leading_zeros() - 6;
    let sub = (value >> shift) - SUB_BUCKETS;
    (2 * SUB_BUCKETS + u64::from(shift - 1) * SUB_BUCKETS + sub) as usize
}

/// The highest value that falls in `bucket` (the last bucket: unbounded).
fn bucket_high(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < 2 * SUB_BUCKETS {
        return bucket;
    }
    if bucket as usize == BUCKETS - 1 {
        return u64::MAX;
    }
    let shift = (bucket - 2 * SUB_BUCKETS) / SUB_BUCKETS + 1;
    let sub = (bucket - 2 * SUB_BUCKETS) % SUB_BUCKETS + SUB_BUCKETS;
    ((sub + 1) << shift) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for value in (0..200_000).chain([1 << 21, (1 << 22) - 1, 1 << 22, u64::MAX]) {
            let bucket = bucket_of(value);
            assert!(bucket >= last, "{value}");
            assert!(bucket < BUCKETS, "{value}");
            last = bucket;
            assert!(bucket_high(bucket) >= value, "{value}");
            if value < 128 {
                assert_eq!(bucket_high(bucket), value);
            } else if value < 1 << 22 {
                let error = (bucket_high(bucket) - value) as f64 / value as f64;
                assert!(error < 1.0 / 64.0, "{value}: {error}");
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_exact_for_small_values_and_capped_by_max() {
        let histogram = Histogram::new();
        for value in 1..=100 {
            histogram.record(value);
        }
        histogram.record(-3);
        histogram.record(5_000);
        let summary = histogram.summary();
        assert_eq!(summary.samples, 102);
        assert_eq!(summary.early, 1);
        assert_eq!(summary.p50, Some(50));
        assert_eq!(summary.p99, Some(100));
        assert_eq!(summary.max, Some(5_000));
        histogram.reset();
        histogram.record(1_000);
        let summary = histogram.summary();
        assert_eq!((summary.p50, summary.max), (Some(1_000), Some(1_000)));
    }

    #[test]
    fn window_tells_repeats_and_keeps_the_newest_slots() {
        let mut state = ChamberState::default();
        assert_eq!(state.observe(5), Seen::New);
        assert_eq!(state.observe(3), Seen::New);
        assert_eq!(state.observe(5), Seen::Repeat);
        assert_eq!(state.observe(3), Seen::Repeat);
        for slot in 10..(10 + SLOT_WINDOW as i64) {
            assert_eq!(state.observe(slot), Seen::New);
        }
        // 3 and 5 fell out of the window.
        assert_eq!(state.observe(4), Seen::OutOfWindow);
        assert_eq!(state.observe(10), Seen::Repeat);
        // A gap inside the window can still be filled.
        assert_eq!(state.observe(100), Seen::New);
        assert_eq!(state.observe(50), Seen::New);
        assert_eq!(state.observe(50), Seen::Repeat);
        assert!(state.window[..SLOT_WINDOW].is_sorted());
        assert_eq!(state.min_slot, 3);
        assert_eq!(state.max_slot, 100);
    }

    #[test]
    fn missed_counts_holes_in_the_grid() {
        let mut state = ChamberState::default();
        for slot in [0, 1_000, 4_000, 3_000, 7_000] {
            state.observe(slot);
        }
        // 0..=7000 every 1000 is 8 slots; 5 seen.
        assert_eq!(state.missed(1_000), 3);
        assert_eq!(ChamberState::default().missed(1_000), 0);
    }
}
