//! A short-lived cache of `GetChamber` answers: chamber configuration is read far more often
//! than it changes. Every chamber or detector write through this API drops the chamber's entry
//! at once (read-your-writes on this replica); other replicas' answers may lag by at most the
//! TTL. A TTL of zero turns it off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chamberlain_domain::model::{ChamberId, OrganizationId};
use chamberlain_proto::v1;

/// The most entries kept; past it, expired ones are dropped, then everything.
const CAPACITY: usize = 100_000;

#[derive(Debug)]
pub struct ChamberCache {
    ttl: Duration,
    entries: Mutex<HashMap<(OrganizationId, ChamberId), (Instant, v1::Chamber)>>,
}

impl ChamberCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(OrganizationId, ChamberId), (Instant, v1::Chamber)>>
    {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, org: OrganizationId, id: ChamberId) -> Option<v1::Chamber> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.lock();
        let (at, chamber) = entries.get(&(org, id))?;
        (at.elapsed() < self.ttl).then(|| chamber.clone())
    }

    pub fn put(&self, org: OrganizationId, id: ChamberId, chamber: &v1::Chamber) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert((org, id), (Instant::now(), chamber.clone()));
    }

    pub fn forget(&self, org: OrganizationId, id: ChamberId) {
        self.lock().remove(&(org, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_are_forgotten_and_stay_within_their_organization() {
        let cache = ChamberCache::new(Duration::from_secs(60));
        let (org, other, id) = (
            OrganizationId::random(),
            OrganizationId::random(),
            ChamberId::random(),
        );
        let c = v1::Chamber {
            name: "c".into(),
            ..Default::default()
        };
        cache.put(org, id, &c);
        assert_eq!(cache.get(org, id), Some(c));
        assert_eq!(cache.get(other, id), None, "another tenant never sees it");
        cache.forget(org, id);
        assert_eq!(cache.get(org, id), None);
        let off = ChamberCache::new(Duration::ZERO);
        off.put(org, id, &v1::Chamber::default());
        assert_eq!(off.get(org, id), None);
    }
}
