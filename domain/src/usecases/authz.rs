//! Who is asking: the authenticated actor, and the role checks every use case makes first.

use crate::model::{OrganizationId, Role, UserId};

/// The authenticated caller of a use case. Built by the authentication layer (Envoy's ext_authz
/// via the auth service, or the in-process layer); use cases trust it and check its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    pub user_id: UserId,
    pub organization_id: OrganizationId,
    pub role: Role,
}

/// The caller's role is below what the action needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("permission denied: {action} requires the {required} role (caller is {actual})")]
pub struct Forbidden {
    pub action: &'static str,
    pub required: Role,
    pub actual: Role,
}

impl Actor {
    /// # Errors
    /// [`Forbidden`] if the actor's role is below `required`.
    pub fn require(&self, required: Role, action: &'static str) -> Result<(), Forbidden> {
        if self.role >= required {
            Ok(())
        } else {
            Err(Forbidden {
                action,
                required,
                actual: self.role,
            })
        }
    }
}
