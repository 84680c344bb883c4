//! Fetching a chamber's current response.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::EndpointUrl;
use crate::time::Timestamp;

/// One request to a chamber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub url: EndpointUrl,
    /// The whole request, connect to last byte, must finish within this.
    pub timeout: Duration,
    /// The poll's slot, sent along (e.g. a `chamberlain-slot` header) so a chamber can tell
    /// lateness and repeats.
    pub slot: Timestamp,
    pub attempt: u32,
}

/// The chamber's answer, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl FetchedResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why no response could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("timed out")]
    Timeout,
    /// Refused, reset, unresolvable, TLS failure: the chamber could not be reached.
    #[error("connection failed: {reason}")]
    Connect { reason: String },
    /// The egress guard refused the destination (not in the operator's allowlist).
    #[error("blocked by egress policy: {reason}")]
    Blocked { reason: String },
    /// The body exceeded the configured cap.
    #[error("response larger than {limit_bytes} bytes")]
    TooLarge { limit_bytes: u64 },
    /// The chamber spoke, but not HTTP we can read. (Redirects are not followed: a 3xx comes back
    /// as a response with its status.)
    #[error("protocol error: {reason}")]
    Protocol { reason: String },
}

impl FetchError {
    /// Whether trying again soon might succeed (a policy question the worker asks before
    /// retrying while the poll is still current).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout | Self::Connect { .. })
    }
}

/// Fetches chamber responses.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ChamberClient: Send + Sync {
    /// Sends one GET and reads the body. Non-success statuses are responses, not errors.
    ///
    /// # Errors
    /// [`FetchError`] as documented on each variant.
    async fn fetch(&self, request: &FetchRequest) -> Result<FetchedResponse, FetchError>;
}
