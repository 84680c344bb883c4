//! Polls (one due visit to a chamber), the jobs that carry them, and the poll ledger.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::MIN_DEDUP_TTL;
use crate::model::{ChamberId, OrganizationId, PollInterval};
use crate::time::Timestamp;

/// A poll's identity: the chamber and the slot (its due time on the chamber's grid). The same
/// poll enqueued twice is one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PollId {
    pub chamber_id: ChamberId,
    pub slot: Timestamp,
}

impl fmt::Display for PollId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.chamber_id, self.slot.as_unix_millis())
    }
}

/// Why a poll was enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollKind {
    /// Due now; expires once the chamber's next slot is due.
    Scheduled,
    /// Replaying a slot missed during a scheduler outage (bounded backfill); never expires.
    Backfill,
}

/// W3C trace context (`traceparent`, `tracestate`), carried verbatim so that one trace spans
/// scheduler → queue → worker.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: String,
}

/// What every job carries besides its poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMetadata {
    pub trace: Option<TraceContext>,
    /// 1 on first delivery; incremented by the queue on each redelivery.
    pub attempt: u32,
    pub enqueued_at: Timestamp,
}

/// A poll on its way through the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollJob {
    pub poll: PollId,
    pub organization_id: OrganizationId,
    /// The chamber's interval when the poll was scheduled: fixes when the poll expires and how
    /// long its dedup key lives.
    pub interval: PollInterval,
    pub kind: PollKind,
    pub meta: JobMetadata,
}

impl PollJob {
    /// When the chamber's next slot is due; a scheduled poll not fetched by then has expired.
    pub fn expires_at(&self) -> Timestamp {
        self.poll.slot + self.interval.as_duration()
    }

    /// Whether the poll may still be fetched at `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.kind == PollKind::Scheduled && now >= self.expires_at()
    }

    /// How long the queue remembers this poll's identity to refuse duplicates.
    pub fn dedup_ttl(&self) -> Duration {
        dedup_ttl(self.interval)
    }
}

/// Dedup keys live 2 × the interval, and at least 60 s.
pub fn dedup_ttl(interval: PollInterval) -> Duration {
    (interval.as_duration() * 2).max(MIN_DEDUP_TTL)
}

/// The outcome of one poll, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PollOutcome {
    /// Fetched; every detector's value was good.
    Ok,
    /// Fetched; this many detectors' values were stored as corrupted readings.
    CorruptedValues { corrupted: u32 },
    /// The chamber did not answer within the poll timeout.
    Timeout,
    /// No connection: refused, reset, unresolvable name, TLS failure.
    ConnectionFailed { reason: String },
    /// The egress guard refused the address (loopback, private, metadata ... not allowlisted).
    Blocked { reason: String },
    /// The chamber answered with a non-success HTTP status.
    HttpStatus { status: u16 },
    /// The body exceeded the response cap.
    TooLarge { limit_bytes: u64 },
    /// The body could not be read in the chamber's format; every detector got a corrupted reading.
    Malformed { reason: String },
    /// Never enqueued: the scheduler was down (or behind) when the slot was due.
    Missed,
    /// Delivered after the chamber's next slot was due, so not fetched.
    Expired {
        /// Why it came too late (`late` for entries written before reasons were kept).
        #[serde(default)]
        reason: ExpiryReason,
    },
    /// The chamber was paused (or its schedule changed) before the poll ran.
    Cancelled,
}

impl PollOutcome {
    /// A stable snake_case code for metrics, filters and exports.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::CorruptedValues { .. } => "corrupted_values",
            Self::Timeout => "timeout",
            Self::ConnectionFailed { .. } => "connection_failed",
            Self::Blocked { .. } => "blocked",
            Self::HttpStatus { .. } => "http_status",
            Self::TooLarge { .. } => "too_large",
            Self::Malformed { .. } => "malformed",
            Self::Missed => "missed",
            Self::Expired { .. } => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the chamber answered usefully. Drives health: `Some(true)` a success,
    /// `Some(false)` a failure of the chamber, `None` not the chamber's doing (missed, expired,
    /// cancelled).
    pub fn chamber_succeeded(&self) -> Option<bool> {
        match self {
            Self::Ok | Self::CorruptedValues { .. } => Some(true),
            Self::Timeout
            | Self::ConnectionFailed { .. }
            | Self::Blocked { .. }
            | Self::HttpStatus { .. }
            | Self::TooLarge { .. }
            | Self::Malformed { .. } => Some(false),
            Self::Missed | Self::Expired { .. } | Self::Cancelled => None,
        }
    }
}

/// Why a poll expired before it was fetched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryReason {
    /// No worker took it in time (workers down, busy, or the queue unreachable).
    #[default]
    Late,
    /// The worker that held it had stopped fetching because its store was behind: results
    /// that could not be written yet were waiting, up to their bound (backpressure).
    StoreBehind,
}

impl ExpiryReason {
    /// A stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Late => "late",
            Self::StoreBehind => "store_behind",
        }
    }
}

/// One poll's line in the ledger: what was expected, what arrived, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub poll: PollId,
    pub outcome: PollOutcome,
    /// Delivery attempt that produced this outcome (0 for slots that were never enqueued).
    pub attempt: u32,
    /// When the request was sent (none if nothing was sent).
    pub requested_at: Option<Timestamp>,
    /// When the outcome was known.
    pub recorded_at: Timestamp,
    /// Request to response (none if nothing was sent).
    pub latency: Option<Duration>,
    /// How long after the slot the request was sent (or the outcome known, if nothing was sent).
    pub lateness: Duration,
}

impl LedgerEntry {
    /// An entry for a slot that was never fetched (missed, expired, cancelled).
    pub fn unfetched(poll: PollId, outcome: PollOutcome, attempt: u32, at: Timestamp) -> Self {
        Self {
            poll,
            outcome,
            attempt,
            requested_at: None,
            recorded_at: at,
            latency: None,
            lateness: at.saturating_since(poll.slot),
        }
    }
}
