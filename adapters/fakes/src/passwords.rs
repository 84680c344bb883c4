//! A password hasher for tests: instant and deliberately insecure (the "hash" is the password
//! behind a marker). Never wired into a running service; those use argon2id.

use async_trait::async_trait;
use chamberlain_domain::model::Password;
use chamberlain_domain::ports::{PasswordError, PasswordHasher};

const MARKER: &str = "$insecure-test$";

#[derive(Debug, Clone, Copy, Default)]
pub struct InsecureTestPasswordHasher;

#[async_trait]
impl PasswordHasher for InsecureTestPasswordHasher {
    async fn hash(&self, password: &Password) -> Result<String, PasswordError> {
        Ok(format!("{MARKER}{}", password.expose()))
    }

    async fn verify(&self, password: &str, hash: Option<String>) -> bool {
        hash.as_deref().and_then(|h| h.strip_prefix(MARKER)) == Some(password)
    }
}
