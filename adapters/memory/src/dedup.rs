//! The in-process queue's memory of poll identities: which (chamber, slot) were enqueued within
//! their dedup TTL, kept compact because it is most of what the queue holds (60 s of polls:
//! 300,000 identities at 5,000 chambers polled every second).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chamberlain_domain::model::PollId;
use chamberlain_domain::time::Timestamp;

/// How often expired seconds are dropped, at most.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// A poll identity within its slot's second: the chamber's id and the slot's millisecond, 18
/// bytes (a map of `PollId` to its expiry took 32 bytes an entry).
type Key = ([u8; 16], u16);

/// The identities whose slots fall in one second.
#[derive(Debug)]
struct Second {
    keys: HashSet<Key>,
    /// When the last of them stops refusing duplicates.
    until: Timestamp,
}

/// Poll identities seen, grouped by their slot's second. A second's identities are dropped
/// together once the last of them expired: each refuses duplicates for at least its TTL, and
/// longer by at most the spread of the enqueue times within its slot's second (the port's
/// contract is "within its TTL"). Small tables per second instead of one large one: no rehash
/// of every identity as the load grows, and expired identities leave without a scan.
#[derive(Debug, Default)]
pub(crate) struct SeenPolls {
    seconds: HashMap<i64, Second>,
    next_purge: Option<Timestamp>,
}

fn split(poll: &PollId) -> (i64, Key) {
    let ms = poll.slot.as_unix_millis();
    // rem_euclid(1000) is within 0..1000: it fits a u16.
    let within = u16::try_from(ms.rem_euclid(1000)).unwrap_or(u16::MAX);
    (
        ms.div_euclid(1000),
        (*poll.chamber_id.as_uuid().as_bytes(), within),
    )
}

impl SeenPolls {
    /// Whether `poll` was remembered and still refuses duplicates at `now`.
    pub(crate) fn refuses(&self, poll: &PollId, now: Timestamp) -> bool {
        let (second, key) = split(poll);
        self.seconds
            .get(&second)
            .is_some_and(|s| s.until > now && s.keys.contains(&key))
    }

    /// Remembers `poll` until `until` (at least).
    pub(crate) fn remember(&mut self, poll: &PollId, until: Timestamp) {
        let (second, key) = split(poll);
        let entry = self.seconds.entry(second).or_insert_with(|| Second {
            keys: HashSet::new(),
            until,
        });
        entry.keys.insert(key);
        entry.until = entry.until.max(until);
    }

    /// Drops the seconds whose identities all expired by `now` (at most once a second).
    pub(crate) fn purge(&mut self, now: Timestamp) {
        if self.next_purge.is_some_and(|at| now < at) {
            return;
        }
        self.seconds.retain(|_, s| s.until > now);
        self.next_purge = Some(now + PURGE_EVERY);
    }

    /// Identities remembered (expired ones included until purged).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seconds.values().map(|s| s.keys.len()).sum()
    }

    /// The memory of their tables, in bytes: each table's buckets (a power of two, at most
    /// seven eighths full) of a key and a control byte.
    #[cfg(test)]
    pub(crate) fn table_bytes(&self) -> usize {
        self.seconds
            .values()
            .map(|s| (s.keys.capacity() * 8 / 7).next_power_of_two() * (size_of::<Key>() + 1))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chamberlain_domain::model::ChamberId;

    fn poll(chamber: ChamberId, slot_ms: i64) -> PollId {
        PollId {
            chamber_id: chamber,
            slot: Timestamp::from_unix_millis(slot_ms),
        }
    }

    #[test]
    fn an_identity_refuses_duplicates_for_its_ttl_and_no_other_does() {
        let mut seen = SeenPolls::default();
        let (a, b) = (ChamberId::random(), ChamberId::random());
        let at = |ms| Timestamp::from_unix_millis(ms);
        seen.remember(&poll(a, 10_250), at(70_000));
        assert!(seen.refuses(&poll(a, 10_250), at(69_999)));
        assert!(!seen.refuses(&poll(a, 10_251), at(10_000)), "another slot");
        assert!(
            !seen.refuses(&poll(b, 10_250), at(10_000)),
            "another chamber"
        );
        assert!(
            !seen.refuses(&poll(a, 11_250), at(10_000)),
            "the next second"
        );
        assert!(!seen.refuses(&poll(a, 10_250), at(70_000)), "expired");
        // Before the epoch too (seconds rounded down, milliseconds positive).
        seen.remember(&poll(a, -1), at(70_000));
        assert!(seen.refuses(&poll(a, -1), at(0)));
        assert!(!seen.refuses(&poll(a, -1_001), at(0)));
    }

    /// 5,000 chambers polled every second, identities kept 60 s, for 3 minutes: what is held
    /// stays near the live identities, in tables of at most 40 bytes per identity (one map of
    /// `PollId` to expiry took 58: 337,500 identities in 2^19 buckets of 33 bytes).
    #[test]
    fn memory_follows_the_live_identities() {
        let mut seen = SeenPolls::default();
        let chambers: Vec<ChamberId> = (0..5_000).map(|_| ChamberId::random()).collect();
        let live = 60 * chambers.len();
        let mut largest = (0, 0);
        for second in 0..180_i64 {
            for (i, chamber) in chambers.iter().enumerate() {
                // Each chamber's slot at its own phase; enqueued 200 ms ahead.
                let slot = second * 1000 + (i as i64 % 1000);
                let now = Timestamp::from_unix_millis(slot - 200);
                seen.purge(now);
                let id = poll(*chamber, slot);
                assert!(!seen.refuses(&id, now));
                seen.remember(&id, now + Duration::from_secs(60));
            }
            largest = largest.max((seen.len(), seen.table_bytes()));
        }
        let (held, bytes) = largest;
        assert!(
            held <= live + 2 * chambers.len(),
            "{held} held for {live} live"
        );
        assert!(bytes <= 40 * held, "{bytes} bytes for {held} identities");
    }
}
