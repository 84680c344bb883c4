//! Use-case errors as gRPC statuses. `INVALID_ARGUMENT` carries a `google.rpc.BadRequest`
//! detail whose field violation names the field.

use chamberlain_domain::error::ValidationError;
use chamberlain_domain::usecases::{AuthError, SignInError, UseCaseError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `INVALID_ARGUMENT` naming `field`.
pub fn invalid(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// `INVALID_ARGUMENT` naming the field as the request names it.
pub fn from_validation(e: &ValidationError) -> Status {
    invalid(request_field(&e.field), e.rule.to_string())
}

/// The domain names a field within its entity (`chamber.url`, `section.name`); every request
/// of `chamberlain.v1` carries its entity's fields at the top (`CreateChamberRequest.url`,
/// `SetChamberIntervalRequest.interval`), so the entity is dropped.
pub fn request_field(field: &str) -> &str {
    [
        "chamber.",
        "section.",
        "batch.",
        "user.",
        "rule.",
        "transmitter.",
    ]
    .iter()
    .find_map(|entity| field.strip_prefix(entity))
    .unwrap_or(field)
}

pub fn from_use_case(e: UseCaseError) -> Status {
    match e {
        UseCaseError::Invalid(v) => from_validation(&v),
        UseCaseError::Forbidden(f) => Status::permission_denied(f.to_string()),
        UseCaseError::NotFound { .. } => Status::not_found(e.to_string()),
        UseCaseError::Duplicate { .. } => Status::already_exists(e.to_string()),
        UseCaseError::FailedPrecondition(m) => Status::failed_precondition(m),
        UseCaseError::Unavailable { message } => {
            tracing::warn!(error = %message, "storage unavailable");
            Status::unavailable("storage unavailable; retry later")
        }
        UseCaseError::Hashing(e) => {
            tracing::error!(error = %e, "password hashing failed");
            Status::internal(e.to_string())
        }
    }
}

pub fn from_auth(e: AuthError) -> Status {
    match e {
        AuthError::Unauthenticated(why) => Status::unauthenticated(why.to_string()),
        AuthError::Unavailable { message } => {
            tracing::warn!(error = %message, "authentication unavailable");
            Status::unavailable("authentication unavailable; retry later")
        }
    }
}

/// The `reason` of the `google.rpc.ErrorInfo` a sign-in that must name its organization carries.
pub const ORGANIZATION_REQUIRED: &str = "ORGANIZATION_REQUIRED";

/// A sign-in refused; one that must choose among organizations is `FAILED_PRECONDITION` with a
/// `google.rpc.ErrorInfo` whose metadata maps each organization's id to its name.
pub fn from_sign_in(e: SignInError) -> Status {
    match e {
        SignInError::Auth(e) => from_auth(e),
        SignInError::ChooseOrganization(ref choices) => {
            let metadata = choices
                .iter()
                .map(|c| (c.id.to_string(), c.name.as_str().to_owned()))
                .collect::<std::collections::HashMap<_, _>>();
            Status::with_error_details(
                Code::FailedPrecondition,
                e.to_string(),
                ErrorDetails::with_error_info(ORGANIZATION_REQUIRED, "chamberlain.v1", metadata),
            )
        }
    }
}

/// A create or update naming an unknown parent (`section_id`): the caller's input is wrong, so
/// `INVALID_ARGUMENT` naming the field rather than `NOT_FOUND` for the call itself.
pub fn unknown_parent(e: UseCaseError, parent: &'static str, field: &str) -> Status {
    match e {
        UseCaseError::NotFound { entity } if entity == parent => {
            invalid(field, format!("no such {parent} in your organization"))
        }
        other => from_use_case(other),
    }
}

#[cfg(test)]
mod tests {
    use super::request_field;

    #[test]
    fn fields_are_named_as_the_flat_requests_name_them() {
        for (domain, request) in [
            ("chamber.format", "format"),
            ("chamber.interval", "interval"),
            ("section.name", "name"),
            ("user.display_name", "display_name"),
            ("transmitter.webhook.url", "webhook.url"),
            ("detectors[2].key", "detectors[2].key"),
            ("section_id", "section_id"),
        ] {
            assert_eq!(request_field(domain), request, "{domain}");
        }
    }
}
