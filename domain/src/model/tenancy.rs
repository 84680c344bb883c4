//! Tenants and the people in them: organizations, sections, users, roles and API tokens.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Rule, ValidationError};
use crate::model::{ApiTokenId, Description, Email, Name, OrganizationId, SectionId, UserId};
use crate::time::Timestamp;

/// The tenant: everything else belongs to exactly one organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    pub id: OrganizationId,
    pub name: Name,
    pub created_at: Timestamp,
}

/// A room or area of an organization that holds chambers and batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub id: SectionId,
    pub organization_id: OrganizationId,
    pub name: Name,
    pub description: Description,
    pub created_at: Timestamp,
}

/// What a user may do within their organization. Ordered: each role can do everything the
/// roles below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads chambers, readings and the ledger.
    Viewer,
    /// Also configures sections, chambers, detectors and batches.
    Operator,
    /// Also manages users and API tokens.
    Admin,
}

impl Role {
    /// # Errors
    /// `role`: [`Rule::Format`] unless `admin`, `operator` or `viewer`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            _ => Err(ValidationError::new(
                "role",
                Rule::Format("must be one of: admin, operator, viewer".into()),
            )),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A person or service account in one organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub organization_id: OrganizationId,
    pub email: Email,
    pub display_name: Name,
    pub role: Role,
    /// A PHC-format password hash (argon2), or none for accounts that only use API tokens.
    /// Produced by `UserAdmin` through the `PasswordHasher` port and checked by `Authenticator`
    /// through it; the algorithm stays behind the port.
    pub password_hash: Option<String>,
    pub disabled: bool,
    pub created_at: Timestamp,
}

/// The SHA-256 digest of an API token's secret; the secret itself is shown once and never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: enough to tell tokens apart in logs, useless to an attacker.
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// An API token: acts for its user with at most its own role (`role_cap`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: ApiTokenId,
    pub organization_id: OrganizationId,
    pub user_id: UserId,
    pub name: Name,
    pub hash: TokenHash,
    /// The token never acts with more than this role, nor more than its user's current role.
    pub role_cap: Role,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// Why a presented token does not grant access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("token was revoked")]
    Revoked,
    #[error("token has expired")]
    Expired,
}

impl ApiToken {
    /// Whether the token may be used at `now`.
    ///
    /// # Errors
    /// [`TokenRefusal`] naming why not.
    pub fn check_usable(&self, now: Timestamp) -> Result<(), TokenRefusal> {
        if self.revoked_at.is_some_and(|t| t <= now) {
            return Err(TokenRefusal::Revoked);
        }
        if self.expires_at.is_some_and(|t| t <= now) {
            return Err(TokenRefusal::Expired);
        }
        Ok(())
    }

    /// The role the token acts with: the lower of its cap and its user's role.
    pub fn effective_role(&self, user_role: Role) -> Role {
        self.role_cap.min(user_role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires: Option<i64>, revoked: Option<i64>) -> ApiToken {
        ApiToken {
            id: ApiTokenId::random(),
            organization_id: OrganizationId::random(),
            user_id: UserId::random(),
            name: Name::parse("ci").unwrap(),
            hash: TokenHash([7; 32]),
            role_cap: Role::Operator,
            created_at: Timestamp::from_unix_millis(0),
            expires_at: expires.map(Timestamp::from_unix_millis),
            last_used_at: None,
            revoked_at: revoked.map(Timestamp::from_unix_millis),
        }
    }

    #[test]
    fn tokens_stop_at_expiry_and_revocation() {
        let now = Timestamp::from_unix_millis(1000);
        assert_eq!(token(None, None).check_usable(now), Ok(()));
        assert_eq!(token(Some(1001), None).check_usable(now), Ok(()));
        assert_eq!(
            token(Some(1000), None).check_usable(now),
            Err(TokenRefusal::Expired)
        );
        assert_eq!(
            token(None, Some(999)).check_usable(now),
            Err(TokenRefusal::Revoked)
        );
    }

    #[test]
    fn a_token_never_exceeds_its_user_or_its_cap() {
        let t = token(None, None);
        assert_eq!(t.effective_role(Role::Admin), Role::Operator);
        assert_eq!(t.effective_role(Role::Viewer), Role::Viewer);
        assert!(
            format!("{:?}", t.hash).len() < 30,
            "debug output must not print the whole hash"
        );
    }

    #[test]
    fn roles_parse_and_order() {
        assert_eq!(Role::parse(" Admin ").unwrap(), Role::Admin);
        assert!(Role::parse("root").is_err());
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }
}
