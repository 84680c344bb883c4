//! The identity the auth service asserts to the gateway, in one header signed with a key the
//! two share (HMAC-SHA256). Envoy strips any client-sent copy before its filters run and the
//! auth service sets it on allow; the gateway trusts nothing else, so a caller that reaches the
//! gateway directly cannot claim an identity.
//!
//! `x-chamberlain-identity: v1 org=<uuid> user=<uuid> role=<role> token=<uuid> exp=<unix ms> sig=<hex>`
//! where `sig` signs everything before ` sig=`. `exp` bounds replay of a captured header.

use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{ApiTokenId, OrganizationId, Role, UserId};
use chamberlain_domain::usecases::{Actor, Identity};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header that carries the signed identity.
pub const IDENTITY_HEADER: &str = "x-chamberlain-identity";
/// Every header whose name starts with this is Chamberlain's own: Envoy removes client-sent ones.
pub const IDENTITY_HEADER_PREFIX: &str = "x-chamberlain-";
/// The shortest accepted signing key.
pub const MIN_KEY_BYTES: usize = 32;
/// How long a signed identity is accepted after it was made.
pub const IDENTITY_LIFETIME: Duration = Duration::from_secs(60);

/// Why a signed identity was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityProblem {
    #[error("identity header is malformed")]
    Malformed,
    #[error("identity signature does not verify")]
    BadSignature,
    #[error("identity assertion has expired")]
    Expired,
}

/// The shared signing key (`CHAMBERLAIN_IDENTITY_KEY`).
#[derive(Clone)]
pub struct IdentityKey(Vec<u8>);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityKey(…)")
    }
}

impl IdentityKey {
    /// # Errors
    /// A message naming the rule when the key is shorter than [`MIN_KEY_BYTES`].
    pub fn new(key: impl Into<Vec<u8>>) -> Result<Self, String> {
        let key = key.into();
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "must be at least {MIN_KEY_BYTES} bytes (got {})",
                key.len()
            ));
        }
        Ok(Self(key))
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(payload.as_bytes());
        mac
    }

    /// The header value asserting `identity` until `now + IDENTITY_LIFETIME`.
    pub fn sign(&self, identity: &Identity, now: Timestamp) -> String {
        let exp = (now + IDENTITY_LIFETIME).as_unix_millis();
        let a = identity.actor;
        let payload = format!(
            "v1 org={} user={} role={} token={} exp={exp}",
            a.organization_id, a.user_id, a.role, identity.token_id
        );
        let sig = self.mac(&payload).finalize().into_bytes();
        let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
        format!("{payload} sig={hex}")
    }

    /// The identity a header value asserts, if its signature verifies and it has not expired.
    ///
    /// # Errors
    /// [`IdentityProblem`] saying why not.
    pub fn verify(&self, value: &str, now: Timestamp) -> Result<Identity, IdentityProblem> {
        let (payload, sig) = value
            .rsplit_once(" sig=")
            .ok_or(IdentityProblem::Malformed)?;
        let sig = decode_hex(sig).ok_or(IdentityProblem::Malformed)?;
        self.mac(payload)
            .verify_slice(&sig)
            .map_err(|_| IdentityProblem::BadSignature)?;
        let mut parts = payload.split(' ');
        if parts.next() != Some("v1") {
            return Err(IdentityProblem::Malformed);
        }
        let mut field = |name: &str| {
            parts
                .next()
                .and_then(|p| p.strip_prefix(name))
                .and_then(|p| p.strip_prefix('='))
                .ok_or(IdentityProblem::Malformed)
        };
        let org = OrganizationId::parse(field("org")?).map_err(|_| IdentityProblem::Malformed)?;
        let user = UserId::parse(field("user")?).map_err(|_| IdentityProblem::Malformed)?;
        let role = Role::parse(field("role")?).map_err(|_| IdentityProblem::Malformed)?;
        let token = ApiTokenId::parse(field("token")?).map_err(|_| IdentityProblem::Malformed)?;
        let exp: i64 = field("exp")?
            .parse()
            .map_err(|_| IdentityProblem::Malformed)?;
        if now.as_unix_millis() >= exp {
            return Err(IdentityProblem::Expired);
        }
        Ok(Identity {
            actor: Actor {
                user_id: user,
                organization_id: org,
                role,
            },
            token_id: token,
        })
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            actor: Actor {
                user_id: UserId::random(),
                organization_id: OrganizationId::random(),
                role: Role::Operator,
            },
            token_id: ApiTokenId::random(),
        }
    }

    #[test]
    fn a_signed_identity_verifies_and_a_tampered_one_does_not() {
        let key = IdentityKey::new(vec![7; 32]).unwrap();
        let now = Timestamp::from_unix_millis(1_000_000);
        let id = identity();
        let header = key.sign(&id, now);
        assert_eq!(key.verify(&header, now), Ok(id));
        let promoted = header.replace("role=operator", "role=admin");
        assert_eq!(
            key.verify(&promoted, now),
            Err(IdentityProblem::BadSignature)
        );
        let other = IdentityKey::new(vec![8; 32]).unwrap();
        assert_eq!(
            other.verify(&header, now),
            Err(IdentityProblem::BadSignature)
        );
        assert_eq!(key.verify("v1 org=x", now), Err(IdentityProblem::Malformed));
        assert_eq!(
            key.verify(&header, now + IDENTITY_LIFETIME),
            Err(IdentityProblem::Expired)
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(IdentityKey::new(b"too short".to_vec()).is_err());
    }
}
