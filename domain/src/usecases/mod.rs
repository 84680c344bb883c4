//! Use cases: the application layer. Each holds its ports as `Arc<dyn Port>` and is the only
//! way adapters on the driving side (gRPC, CLI, workers, the scheduler) change anything.

mod admin;
mod alerts;
mod auth;
mod authz;
mod bundle;
mod errors;
mod export;
mod import;
mod poll;
mod queries;
mod users;
mod watch;

pub use admin::{
    AdminSettings, ChamberAdmin, ChamberPatch, ChamberView, NewChamber, NewDetector, NewSection,
    validate_detector,
};
pub use alerts::{
    AlertAdmin, AlertEvaluator, NewAlertRule, NewCondition, NewDestination, NewTransmitter,
    TransmitterAdmin,
};
pub use auth::{
    AuthError, AuthSettings, Authenticator, Identity, IssuedToken, OrganizationChoice, Refusal,
    SignInError,
};
pub use authz::{Actor, Forbidden};
pub use bundle::{ApiPorts, ApiSettings, ApiUseCases};
pub use errors::UseCaseError;
pub use export::{CSV_HEADER, CsvExport, ExportScope, csv_line};
pub use import::{ChamberImport, ImportMode, ImportReport, RowRejection};
pub use poll::{
    Answer, Completion, JobOutcome, PollAttempt, PollHandler, PollSettings, Prepared,
    ProcessedPoll, interpret_response,
};
pub use queries::{
    Aggregate, Coverage, CoverageScope, MAX_BUCKETS, MAX_LATEST_CHAMBERS, ReadingQueries,
};
pub use users::{NewUser, UserAdmin};
pub use watch::{
    EventKind, EventWatch, LagState, LagVerdict, Watch, WatchFilter, WatchItem, WatchRequest,
    WatchSettings,
};
