//! Limits and defaults, in one place (they mirror the table in DESIGN.md; change both together).

use std::time::Duration;

/// Shortest poll interval unless the operator lowers the floor.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The lowest floor an operator may set for poll intervals.
pub const LOWEST_POLL_INTERVAL_FLOOR: Duration = Duration::from_millis(100);
/// Longest poll interval.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Shortest poll timeout.
pub const MIN_POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Timeout used when none is given (capped by the interval).
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on a chamber's response body.
pub const DEFAULT_RESPONSE_BODY_CAP: usize = 1024 * 1024;
/// Bounds of the response body cap an operator may set.
pub const MIN_RESPONSE_BODY_CAP: usize = 1024;
pub const MAX_RESPONSE_BODY_CAP: usize = 64 * 1024 * 1024;
/// Names of organizations, sections, chambers, detectors, batches: 1 to this many characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Free-text descriptions.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Units such as `°C` or `%RH`.
pub const MAX_UNIT_CHARS: usize = 32;
/// Endpoint URLs.
pub const MAX_URL_CHARS: usize = 2048;
/// Detectors per chamber.
pub const MAX_DETECTORS_PER_CHAMBER: usize = 1000;
/// Health: consecutive failed polls before a chamber is degraded.
pub const DEGRADED_AFTER_FAILURES: u32 = 3;
/// Health: consecutive failed polls before a chamber is down ...
pub const DOWN_AFTER_FAILURES: u32 = 10;
/// ... and it must also have been failing at least this long (whichever is later).
pub const DOWN_AFTER_DURATION: Duration = Duration::from_secs(60);
/// Bounded backfill after a scheduler outage: at most this many slots per chamber.
pub const MAX_BACKFILL_SLOTS: u32 = 1000;
/// Leader lease time to live and renewal period.
pub const LEADER_LEASE_TTL: Duration = Duration::from_secs(5);
pub const LEADER_LEASE_RENEW_EVERY: Duration = Duration::from_secs(1);
/// Dedup keys of enqueued polls live 2 × the interval, and at least this long.
pub const MIN_DEDUP_TTL: Duration = Duration::from_secs(60);
/// Page sizes for list queries.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Readings written in one batch from the API side (poll results are bounded by detectors).
pub const MAX_READINGS_PER_WRITE: usize = 100_000;
/// Rows in one chamber import (one transaction).
pub const MAX_IMPORT_ROWS: usize = 50_000;
