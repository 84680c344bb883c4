//! Batches: what a section processes over a time window.

use serde::{Deserialize, Serialize};

use crate::model::{BatchId, Description, Name, OrganizationId, SectionId};
use crate::time::Timestamp;

/// A batch runs in one section from `started_at` until `ended_at` (open while `None`). A section
/// has at most one open batch; a reading belongs to the batch open in its chamber's section when
/// the reading was requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub id: BatchId,
    pub organization_id: OrganizationId,
    pub section_id: SectionId,
    pub name: Name,
    pub description: Description,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
}

impl Batch {
    pub fn is_open(&self) -> bool {
        self.ended_at.is_none()
    }

    /// Whether `at` falls in the batch's window (start inclusive, end exclusive).
    pub fn covers(&self, at: Timestamp) -> bool {
        at >= self.started_at && self.ended_at.is_none_or(|end| at < end)
    }
}
