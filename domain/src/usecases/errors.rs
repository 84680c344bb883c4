//! The error every API-facing use case returns: what the gRPC layer maps to status codes.

use crate::error::ValidationError;
use crate::ports::{PasswordError, StoreError};
use crate::usecases::Forbidden;

/// Why an API-facing use case refused or failed. Variants map one-to-one onto gRPC status codes
/// (InvalidArgument, PermissionDenied, NotFound, AlreadyExists, FailedPrecondition,
/// Unavailable, Internal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UseCaseError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    /// Not found in the caller's organization (other tenants' rows look the same).
    #[error("{entity} not found")]
    NotFound { entity: &'static str },
    #[error("{} {entity} with this {field} already exists", article(entity))]
    Duplicate {
        entity: &'static str,
        field: &'static str,
    },
    /// The request conflicts with current state (an open batch, dependents, a concurrent change).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("storage unavailable: {message}")]
    Unavailable { message: String },
    /// The password hasher could not run (never a wrong password: that is a sign-in refusal).
    #[error(transparent)]
    Hashing(#[from] PasswordError),
}

/// "a" or "an" before an entity's name.
fn article(entity: &str) -> &'static str {
    if entity.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

impl From<StoreError> for UseCaseError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity } => Self::NotFound { entity },
            StoreError::MissingParent { parent, .. } => Self::NotFound { entity: parent },
            StoreError::Duplicate { entity, field } => Self::Duplicate { entity, field },
            StoreError::HasDependents { .. } | StoreError::Conflict { .. } => {
                Self::FailedPrecondition(e.to_string())
            }
            StoreError::Invalid(v) => Self::Invalid(v),
            StoreError::Unavailable { message } => Self::Unavailable { message },
        }
    }
}
