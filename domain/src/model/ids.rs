//! Identifiers: UUID newtypes, one per entity, so an id of one kind can never be passed as another.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Rule, ValidationError};

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new random (v4) id.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// Parses the hyphenated (or simple) UUID text form.
            ///
            /// # Errors
            /// [`ValidationError`] on the field named after the entity when `s` is not a UUID.
            pub fn parse(s: &str) -> Result<Self, ValidationError> {
                Uuid::from_str(s.trim()).map(Self).map_err(|_| {
                    ValidationError::new($field, Rule::Format("must be a UUID".into()))
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

define_id!(/// A tenant.
    OrganizationId, "organization_id");
define_id!(/// A room or area of an organization.
    SectionId, "section_id");
define_id!(/// A polled device.
    ChamberId, "chamber_id");
define_id!(/// One measured channel of a chamber.
    DetectorId, "detector_id");
define_id!(/// What a section processes over a time window.
    BatchId, "batch_id");
define_id!(/// A person (or service account) in an organization.
    UserId, "user_id");
define_id!(/// An API token (its id, not its secret).
    ApiTokenId, "token_id");
define_id!(/// An alert rule of a chamber.
    AlertRuleId, "rule_id");
define_id!(/// One alert: a rule's condition held, from opening to resolving.
    AlertId, "alert_id");
define_id!(/// A destination events are forwarded to (a webhook, an MQTT broker).
    TransmitterId, "transmitter_id");
define_id!(/// A delivery given up after its last try.
    DeadLetterId, "dead_letter_id");
