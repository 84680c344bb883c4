//! [`ApiUseCases`]: the use cases a driving adapter calls, built once over the same ports.

use std::sync::Arc;

use crate::ports::{
    AccessEpoch, ChamberChanges, Clock, EventFeed, EventPublisher, PasswordHasher, Repositories,
};
use crate::usecases::{
    AdminSettings, AlertAdmin, AuthSettings, Authenticator, ChamberAdmin, EventWatch,
    ReadingQueries, TransmitterAdmin, UserAdmin, WatchSettings,
};

/// The ports besides the repositories that the API's use cases need: in-process ones in the
/// embedded mode, Redis in the distributed one.
#[derive(Clone)]
pub struct ApiPorts {
    /// Chamber writes are published here for the scheduler.
    pub changes: Arc<dyn ChamberChanges>,
    pub events: Arc<dyn EventPublisher>,
    /// Live streams read from here.
    pub feed: Arc<dyn EventFeed>,
    pub passwords: Arc<dyn PasswordHasher>,
    /// Role changes, deletions and revocations move it on; the authenticator (here and in
    /// every auth replica) reads it before reusing a decision.
    pub access: Arc<dyn AccessEpoch>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ApiPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiPorts").finish_non_exhaustive()
    }
}

/// Installation-wide settings of the API's use cases.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiSettings {
    pub admin: AdminSettings,
    pub watch: WatchSettings,
    pub auth: AuthSettings,
}

/// Every use case the API offers. The gRPC services (and any other driving adapter) call
/// these, so role checks, validation and hashing happen in one place whatever the transport.
#[derive(Debug, Clone)]
pub struct ApiUseCases {
    pub admin: ChamberAdmin,
    pub queries: ReadingQueries,
    pub users: UserAdmin,
    pub watch: EventWatch,
    pub alerts: AlertAdmin,
    pub transmitters: TransmitterAdmin,
    /// Tokens and signing in. Clones share one decision cache.
    pub auth: Authenticator,
}

impl ApiUseCases {
    pub fn new(repositories: &Repositories, ports: ApiPorts, settings: ApiSettings) -> Self {
        Self {
            admin: ChamberAdmin::new(
                repositories,
                ports.changes,
                ports.events,
                ports.clock.clone(),
            )
            .with_settings(settings.admin),
            queries: ReadingQueries::new(repositories),
            users: UserAdmin::new(
                repositories,
                ports.passwords.clone(),
                ports.access.clone(),
                ports.clock.clone(),
            ),
            watch: EventWatch::new(repositories, ports.feed, settings.watch),
            alerts: AlertAdmin::new(repositories, ports.clock.clone()),
            transmitters: TransmitterAdmin::new(repositories, ports.clock.clone()),
            auth: Authenticator::new(
                repositories,
                ports.passwords,
                ports.access,
                ports.clock,
                settings.auth,
            ),
        }
    }
}
