#![doc = include_str!("../README.md")]

// One module per proto file, holding that file's services.
mod alerts;
mod auth;
mod batches;
mod cache;
mod chambers;
mod convert;
mod events;
pub mod identity;
mod readings;
mod sections;
pub mod status;

use std::sync::Arc;

use std::time::Duration;

use chamberlain_domain::ports::Clock;
use chamberlain_domain::usecases::{Actor, ApiUseCases, Identity};
use chamberlain_proto::v1::alert_service_server::AlertServiceServer;
use chamberlain_proto::v1::auth_service_server::AuthServiceServer;
use chamberlain_proto::v1::batch_service_server::BatchServiceServer;
use chamberlain_proto::v1::chamber_service_server::ChamberServiceServer;
use chamberlain_proto::v1::event_service_server::EventServiceServer;
use chamberlain_proto::v1::poll_service_server::PollServiceServer;
use chamberlain_proto::v1::reading_service_server::ReadingServiceServer;
use chamberlain_proto::v1::section_service_server::SectionServiceServer;
use chamberlain_proto::v1::transmitter_service_server::TransmitterServiceServer;
use chamberlain_proto::v1::user_service_server::UserServiceServer;
use tonic::{Request, Status};

pub use cache::ChamberCache;
pub use events::Outgoing;
pub use identity::{IdentityKey, IdentityProblem};

/// Every service of `chamberlain.v1`, backed by the domain's use cases (reached through
/// `Deref`: `self.admin`, `self.auth`, ...). Methods read the caller from the request's
/// extensions (an [`Identity`] put there by whichever authentication layer runs in front: the
/// gateway's verifier of the auth service's signed header, or the embedded mode's in-process
/// authenticator); without one they answer `UNAUTHENTICATED`.
#[derive(Clone)]
pub struct Api {
    use_cases: ApiUseCases,
    pub clock: Arc<dyn Clock>,
    /// `GetChamber` answers, dropped by every write through this API.
    pub chamber_cache: Arc<ChamberCache>,
}

impl Api {
    /// The API over `use_cases`; `GetChamber` answers are reused for `chamber_cache` (zero
    /// turns the cache off).
    pub fn new(use_cases: ApiUseCases, clock: Arc<dyn Clock>, chamber_cache: Duration) -> Self {
        Self {
            use_cases,
            clock,
            chamber_cache: Arc::new(ChamberCache::new(chamber_cache)),
        }
    }
}

impl std::ops::Deref for Api {
    type Target = ApiUseCases;

    fn deref(&self) -> &ApiUseCases {
        &self.use_cases
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// The authenticated caller of a request.
///
/// # Errors
/// `UNAUTHENTICATED` when no authentication layer vouched for the request.
pub fn caller<T>(request: &Request<T>) -> Result<Actor, Status> {
    request
        .extensions()
        .get::<Identity>()
        .map(|i| i.actor)
        .ok_or_else(|| {
            Status::unauthenticated("no verified identity: call through Envoy with a token")
        })
}

/// The tonic services, each with the given limits on message size.
#[derive(Debug)]
pub struct Services {
    pub sections: SectionServiceServer<Api>,
    pub chambers: ChamberServiceServer<Api>,
    pub batches: BatchServiceServer<Api>,
    pub readings: ReadingServiceServer<Api>,
    pub polls: PollServiceServer<Api>,
    pub auth: AuthServiceServer<Api>,
    pub users: UserServiceServer<Api>,
    pub events: EventServiceServer<Api>,
    pub alerts: AlertServiceServer<Api>,
    pub transmitters: TransmitterServiceServer<Api>,
}

impl Api {
    pub fn services(&self, max_message_bytes: usize) -> Services {
        macro_rules! server {
            ($ty:ident) => {
                $ty::new(self.clone())
                    .max_decoding_message_size(max_message_bytes)
                    .max_encoding_message_size(max_message_bytes.max(4 << 20))
            };
        }
        Services {
            sections: server!(SectionServiceServer),
            chambers: server!(ChamberServiceServer),
            batches: server!(BatchServiceServer),
            readings: server!(ReadingServiceServer),
            polls: server!(PollServiceServer),
            auth: server!(AuthServiceServer),
            users: server!(UserServiceServer),
            events: server!(EventServiceServer),
            alerts: server!(AlertServiceServer),
            transmitters: server!(TransmitterServiceServer),
        }
    }
}

/// The methods that need no identity: signing in.
pub const ANONYMOUS_METHODS: [&str; 2] = ["/chamberlain.v1.AuthService/SignIn", "/v1/auth:signIn"];
