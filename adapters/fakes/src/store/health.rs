//! [`ChamberHealthRepository`] of [`MemoryStore`].

use std::collections::BTreeMap;

use super::MemoryStore;
use async_trait::async_trait;
use chamberlain_domain::model::{ChamberHealth, ChamberId};
use chamberlain_domain::ports::{ChamberHealthRepository, StoreError};

#[async_trait]
impl ChamberHealthRepository for MemoryStore {
    async fn get(&self, chamber: ChamberId) -> Result<Option<ChamberHealth>, StoreError> {
        Ok(self.lock().health.get(&chamber).cloned())
    }

    async fn count_by_state(
        &self,
    ) -> Result<Vec<(chamberlain_domain::model::HealthState, u64)>, StoreError> {
        let t = self.lock();
        let mut counts: BTreeMap<&'static str, (chamberlain_domain::model::HealthState, u64)> =
            BTreeMap::new();
        for id in t.chambers.keys() {
            let state = t
                .health
                .get(id)
                .map_or(chamberlain_domain::model::HealthState::Unknown, |h| h.state);
            counts.entry(state.as_str()).or_insert((state, 0)).1 += 1;
        }
        Ok(counts.into_values().collect())
    }

    async fn save(&self, health: &ChamberHealth) -> Result<u64, StoreError> {
        let mut t = self.lock();
        if !t.chambers.contains_key(&health.chamber_id) {
            return Err(StoreError::MissingParent {
                entity: "health",
                parent: "chamber",
            });
        }
        let stored = t.health.get(&health.chamber_id).map_or(0, |h| h.version);
        if stored != health.version {
            return Err(StoreError::Conflict {
                entity: "health",
                reason: format!("version {} is stale (stored: {stored})", health.version),
            });
        }
        let version = stored + 1;
        t.health.insert(
            health.chamber_id,
            ChamberHealth {
                version,
                ..health.clone()
            },
        );
        Ok(version)
    }
}
