#![doc = include_str!("../README.md")]

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use chamberlain_domain::model::Password;
use chamberlain_domain::ports::{PasswordError, PasswordHasher};

/// argon2id with the given cost.
#[derive(Debug, Clone)]
pub struct Argon2Hasher {
    params: Params,
    /// A hash of a random password with the same cost, verified for unknown accounts so that a
    /// sign-in takes as long whether or not the email exists.
    decoy: String,
}

impl Default for Argon2Hasher {
    fn default() -> Self {
        Self::with_params(Params::default())
    }
}

impl Argon2Hasher {
    /// # Panics
    /// Never with valid `Params` (the decoy hash cannot fail).
    pub fn with_params(params: Params) -> Self {
        let decoy =
            hash_blocking(&params, "decoy password that matches nothing").unwrap_or_default();
        Self { params, decoy }
    }

    /// The cheapest valid parameters, for tests.
    pub fn fast_for_tests() -> Self {
        Self::with_params(Params::new(Params::MIN_M_COST, 1, 1, None).unwrap_or_default())
    }
}

fn argon(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Failed {
            message: e.to_string(),
        })
}

fn verify_blocking(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        // The stored hash carries its own parameters.
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[async_trait]
impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: &Password) -> Result<String, PasswordError> {
        let (params, password) = (self.params.clone(), password.expose().to_owned());
        tokio::task::spawn_blocking(move || hash_blocking(&params, &password))
            .await
            .map_err(|e| PasswordError::Failed {
                message: e.to_string(),
            })?
    }

    async fn verify(&self, password: &str, hash: Option<String>) -> bool {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy.clone());
        let password = password.to_owned();
        let matched = tokio::task::spawn_blocking(move || verify_blocking(&password, &hash))
            .await
            .unwrap_or(false);
        known && matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let hasher = Argon2Hasher::fast_for_tests();
        let pw = Password::parse("correct horse battery").unwrap();
        let hash = hasher.hash(&pw).await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(
            hasher
                .verify("correct horse battery", Some(hash.clone()))
                .await
        );
        assert!(
            !hasher
                .verify("correct horse batterY", Some(hash.clone()))
                .await
        );
        assert!(!hasher.verify("correct horse battery", None).await);
        assert!(
            !hasher
                .verify("correct horse battery", Some("not a hash".into()))
                .await
        );
        // A fresh salt each time.
        assert_ne!(hash, hasher.hash(&pw).await.unwrap());
    }
}
