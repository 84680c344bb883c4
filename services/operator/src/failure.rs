//! Why a command failed, as the exit code a script reads and the message a person reads.

use tonic::Code;
use tonic_types::StatusExt;

/// Why a command failed, and the exit code that tells a script which kind of failure it was.
#[derive(Debug)]
pub struct Failure {
    /// The process's exit code, one of [`exit`].
    pub exit: u8,
    pub(crate) message: String,
}

/// Exit codes of the operator commands (the README lists them).
pub mod exit {
    /// The server refused or failed the call for another reason.
    pub const FAILED: u8 = 1;
    /// Bad local input: a setting, a flag value, an unreadable file.
    pub const USAGE: u8 = 2;
    /// No token, a bad, expired or revoked token, or a role too low for the call.
    pub const DENIED: u8 = 3;
    /// No such chamber, section, batch, detector, token or user.
    pub const NOT_FOUND: u8 = 4;
    /// The server refused the input (the message names the field); an import with bad rows.
    pub const INVALID: u8 = 5;
    /// The server cannot be reached or is unavailable.
    pub const UNAVAILABLE: u8 = 6;
}

/// What a command returns.
pub(crate) type Done = Result<(), Failure>;

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            exit: exit::USAGE,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let exit = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => exit::DENIED,
            Code::NotFound => exit::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange | Code::AlreadyExists => exit::INVALID,
            Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
            _ => exit::FAILED,
        };
        let name = code_name(status.code());
        // The server's message may already say what kind it is ("permission denied: ...").
        let mut message = if status.message().starts_with(name) {
            status.message().to_owned()
        } else if status.message().contains("h2 protocol error") {
            // The connection, not the API, refused the call (a header too large, a reset).
            format!(
                "the server's connection refused the call ({}): {}",
                name,
                status.message()
            )
        } else {
            format!("{name}: {}", status.message())
        };
        if let Some(bad) = status.get_details_bad_request() {
            for v in bad.field_violations {
                message.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
        }
        Self { exit, message }
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated => "not authenticated",
        Code::PermissionDenied => "permission denied",
        Code::NotFound => "not found",
        Code::InvalidArgument => "invalid",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "refused",
        Code::ResourceExhausted => "rate limited",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "timed out",
        _ => "failed",
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};

    use super::{Failure, exit};

    #[test]
    fn a_message_is_not_prefixed_twice_and_exit_codes_follow_the_kind() {
        let f = Failure::from(Status::permission_denied(
            "permission denied: a viewer may not create a section",
        ));
        assert_eq!(
            (f.exit, f.to_string().as_str()),
            (
                exit::DENIED,
                "permission denied: a viewer may not create a section"
            )
        );
        let f = Failure::from(Status::not_found("chamber not found"));
        assert_eq!(f.to_string(), "not found: chamber not found");
        let f = Failure::from(Status::new(
            Code::ResourceExhausted,
            "h2 protocol error: error reading a body from connection",
        ));
        assert!(
            !f.to_string().starts_with("rate limited"),
            "a protocol error is not a rate limit: {f}"
        );
    }
}
