//! The machine's wall clock, the default [`Clock`] of a simulator.

use std::time::{SystemTime, UNIX_EPOCH};

use chamberlain_domain::Timestamp;
use chamberlain_domain::ports::Clock;

/// Unix milliseconds from [`SystemTime`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Timestamp::from_unix_millis(ms)
    }
}
