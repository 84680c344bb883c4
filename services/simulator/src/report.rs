//! What the simulated fleet saw: [`SimulatorReport`].

use std::fmt;

use serde::Serialize;

/// A snapshot of everything recorded since the simulator started or was last reset.
///
/// Requests without a `chamberlain-slot` header count in `requests` but not in lateness,
/// duplicates or missed slots. A missing `chamberlain-attempt` header counts as attempt 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimulatorReport {
    /// Chambers in the fleet.
    pub chambers: u32,
    /// Detectors per chamber.
    pub detectors: u32,
    /// Time since the start or the last reset, ms (monotonic).
    pub elapsed_ms: u64,
    /// Every chamber request, including those for unknown chambers (not `/report`).
    pub requests: u64,
    /// Mean arrival rate between the first and the last request (monotonic clock).
    pub rate_per_second: Option<f64>,
    /// Requests without a usable `chamberlain-slot` header.
    pub unslotted_requests: u64,
    /// Requests for a chamber number outside the fleet (answered 404).
    pub unknown_chamber_requests: u64,
    /// Requests with `chamberlain-attempt` greater than 1.
    pub retry_requests: u64,
    /// Arrival (wall clock) minus slot, over every slotted request.
    pub lateness_ms: Lateness,
    /// Requests for a (chamber, slot) that was already requested.
    pub duplicates: Duplicates,
    /// Requests for a slot older than the chamber's [window](crate::SLOT_WINDOW) of newest
    /// slots, which cannot be told new or repeated; not counted as seen slots.
    pub out_of_window: u64,
    /// Slots never requested between a chamber's first and last slot, summed over the
    /// chambers whose interval is known; `None` when no interval is configured.
    pub missed_slots: Option<u64>,
    /// Faults the simulator injected.
    pub injected: Injected,
    /// Chambers that got at least one request.
    pub chambers_polled: u32,
    /// The fewest requests any chamber got (0 if one was never polled).
    pub min_requests_per_chamber: u64,
    /// The most requests any chamber got.
    pub max_requests_per_chamber: u64,
    /// One entry per chamber that got a request, by chamber number.
    pub per_chamber: Vec<ChamberReport>,
}

impl SimulatorReport {
    /// The entry of chamber `chamber`, if it got a request.
    pub fn chamber(&self, chamber: u32) -> Option<&ChamberReport> {
        self.per_chamber
            .binary_search_by_key(&chamber, |c| c.chamber)
            .ok()
            .and_then(|at| self.per_chamber.get(at))
    }
}

/// Lateness percentiles, ms. Exact below 128 ms, within 1.6 % above (log-linear buckets,
/// rounded up); `max` is exact. Early requests (negative lateness) count as 0 in the
/// percentiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Lateness {
    /// Slotted requests measured.
    pub samples: u64,
    /// Requests that arrived before their slot.
    pub early: u64,
    pub p50: Option<i64>,
    pub p99: Option<i64>,
    pub max: Option<i64>,
}

/// Extra requests for a (chamber, slot) already requested.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Duplicates {
    /// With attempt 1 (or no attempt header): the same poll issued twice.
    pub attempt_one: u64,
    /// With attempt greater than 1: retries.
    pub retries: u64,
}

impl Duplicates {
    pub fn total(&self) -> u64 {
        self.attempt_one + self.retries
    }
}

/// Faults injected by rate or by a chamber's behaviour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Injected {
    /// Answered `500`.
    pub errors: u64,
    /// Answered with a corrupted body: `garbage + nan + missing_detector`.
    pub corrupt: u64,
    pub garbage: u64,
    pub nan: u64,
    pub missing_detector: u64,
    /// Held without an answer until shutdown.
    pub hung: u64,
    /// Answered with an oversized body.
    pub oversized: u64,
}

/// One chamber's counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChamberReport {
    pub chamber: u32,
    pub requests: u64,
    pub retry_requests: u64,
    pub unslotted_requests: u64,
    pub duplicates: Duplicates,
    /// `None` when the chamber's interval is unknown.
    pub missed_slots: Option<u64>,
    pub out_of_window: u64,
    pub errors_injected: u64,
    pub corrupt_injected: u64,
    /// The earliest and latest slot seen, unix ms.
    pub first_slot: Option<i64>,
    pub last_slot: Option<i64>,
}

impl ChamberReport {
    fn trouble(&self) -> u64 {
        self.missed_slots.unwrap_or(0) + self.duplicates.total() + self.out_of_window
    }
}

/// How many chambers with missed or repeated slots [`SimulatorReport`]'s `Display` lists.
const WORST_SHOWN: usize = 5;

impl fmt::Display for SimulatorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        writeln!(
            f,
            "simulator report: {} chambers x {} detectors, {:.1} s",
            self.chambers,
            self.detectors,
            self.elapsed_ms as f64 / 1000.0
        )?;
        write!(f, "  requests        {}", self.requests)?;
        if let Some(rate) = self.rate_per_second {
            write!(f, " ({rate:.1}/s)")?;
        }
        writeln!(
            f,
            ", {} without slot, {} for unknown chambers, {} retries",
            self.unslotted_requests, self.unknown_chamber_requests, self.retry_requests
        )?;
        let l = &self.lateness_ms;
        writeln!(
            f,
            "  lateness ms     p50 {}  p99 {}  max {}  ({} samples, {} early)",
            opt(l.p50),
            opt(l.p99),
            opt(l.max),
            l.samples,
            l.early
        )?;
        writeln!(
            f,
            "  duplicates      {} with attempt 1, {} retries, {} out of window",
            self.duplicates.attempt_one, self.duplicates.retries, self.out_of_window
        )?;
        match self.missed_slots {
            Some(missed) => writeln!(f, "  missed slots    {missed}")?,
            None => writeln!(f, "  missed slots    - (no interval given)")?,
        }
        let i = &self.injected;
        writeln!(
            f,
            "  injected        {} errors, {} corrupt ({} garbage, {} NaN, {} missing), {} hung, {} oversized",
            i.errors, i.corrupt, i.garbage, i.nan, i.missing_detector, i.hung, i.oversized
        )?;
        writeln!(
            f,
            "  chambers        {} of {} polled, {} to {} requests each",
            self.chambers_polled,
            self.chambers,
            self.min_requests_per_chamber,
            self.max_requests_per_chamber
        )?;
        let mut worst: Vec<&ChamberReport> = self
            .per_chamber
            .iter()
            .filter(|c| c.trouble() > 0)
            .collect();
        if !worst.is_empty() {
            worst.sort_by_key(|c| (std::cmp::Reverse(c.trouble()), c.chamber));
            write!(f, "  worst chambers ")?;
            for c in worst.iter().take(WORST_SHOWN) {
                write!(
                    f,
                    " #{}: {} missed, {} dup, {} retried;",
                    c.chamber,
                    c.missed_slots.unwrap_or(0),
                    c.duplicates.attempt_one,
                    c.duplicates.retries
                )?;
            }
            if worst.len() > WORST_SHOWN {
                write!(f, " and {} more", worst.len() - WORST_SHOWN)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
