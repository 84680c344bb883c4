//! The delivery port: sends one [`Delivery`] to one transmitter's destination.

use async_trait::async_trait;

use crate::transmit::{Delivery, Transmitter};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth trying again: the destination could not be reached, timed out, or answered that
    /// it is busy or broken (HTTP 408, 429, 5xx).
    #[error("delivery failed, may succeed later: {reason}")]
    Transient { reason: String },
    /// Trying again will not help: the destination refused the delivery (HTTP 4xx), the egress
    /// policy forbids it, or this client does not serve the destination's kind.
    #[error("delivery refused: {reason}")]
    Permanent { reason: String },
    /// The egress policy refuses the destination's address: every delivery to it will be
    /// refused the same way until the allowlist or the transmitter changes, so the forwarder
    /// reports it once per transmitter rather than once per event.
    #[error("destination blocked: {reason}")]
    Blocked { reason: String },
}

impl DeliveryError {
    /// Why the delivery failed, without the kind of failure.
    pub fn reason(&self) -> &str {
        match self {
            Self::Transient { reason } | Self::Permanent { reason } | Self::Blocked { reason } => {
                reason
            }
        }
    }
}

/// Sends deliveries. An adapter serves one or more kinds of
/// [`Destination`](crate::transmit::Destination); each call is bounded in time by the adapter.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait DeliveryClient: Send + Sync {
    /// # Errors
    /// `Transient` or `Permanent`, as documented on [`DeliveryError`].
    async fn deliver(
        &self,
        transmitter: &Transmitter,
        delivery: &Delivery,
    ) -> Result<(), DeliveryError>;
}
