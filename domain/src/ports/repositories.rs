//! [`Repositories`]: every repository port in one bundle, as one store provides them.

use std::sync::Arc;

use super::{
    AlertRepository, ApiTokenRepository, BatchRepository, ChamberHealthRepository,
    ChamberRepository, DetectorRepository, OrganizationRepository, PollLedgerRepository,
    ReadingRepository, SectionRepository, TransmitterRepository, UserRepository,
};

/// Every repository port, each an `Arc<dyn …>` over whichever store was opened (PostgreSQL,
/// SQLite, or a test's fake). Use cases and services take what they need from it in their
/// constructors, so a wiring site names the store once. A caller that wants one port served
/// differently replaces that field with struct-update syntax:
/// `Repositories { chambers: other, ..repositories }`. (The worker's cached chamber reads are
/// not served that way: they are the narrow `PollReads` port, handed to
/// `PollHandler::with_reads`.)
#[derive(Clone)]
pub struct Repositories {
    pub organizations: Arc<dyn OrganizationRepository>,
    pub sections: Arc<dyn SectionRepository>,
    pub chambers: Arc<dyn ChamberRepository>,
    pub detectors: Arc<dyn DetectorRepository>,
    pub batches: Arc<dyn BatchRepository>,
    pub readings: Arc<dyn ReadingRepository>,
    pub ledger: Arc<dyn PollLedgerRepository>,
    pub health: Arc<dyn ChamberHealthRepository>,
    pub users: Arc<dyn UserRepository>,
    pub tokens: Arc<dyn ApiTokenRepository>,
    pub alerts: Arc<dyn AlertRepository>,
    pub transmitters: Arc<dyn TransmitterRepository>,
}

impl std::fmt::Debug for Repositories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repositories").finish_non_exhaustive()
    }
}

/// A store that implements every repository port (PostgreSQL, SQLite, the test fake).
pub trait Store:
    OrganizationRepository
    + SectionRepository
    + ChamberRepository
    + DetectorRepository
    + BatchRepository
    + ReadingRepository
    + PollLedgerRepository
    + ChamberHealthRepository
    + UserRepository
    + ApiTokenRepository
    + AlertRepository
    + TransmitterRepository
{
}

impl<S> Store for S where
    S: OrganizationRepository
        + SectionRepository
        + ChamberRepository
        + DetectorRepository
        + BatchRepository
        + ReadingRepository
        + PollLedgerRepository
        + ChamberHealthRepository
        + UserRepository
        + ApiTokenRepository
        + AlertRepository
        + TransmitterRepository
{
}

impl Repositories {
    /// Every port from one store that implements them all.
    pub fn of<S: Store + 'static>(store: Arc<S>) -> Self {
        Self {
            organizations: store.clone(),
            sections: store.clone(),
            chambers: store.clone(),
            detectors: store.clone(),
            batches: store.clone(),
            readings: store.clone(),
            ledger: store.clone(),
            health: store.clone(),
            users: store.clone(),
            tokens: store.clone(),
            alerts: store.clone(),
            transmitters: store,
        }
    }
}
