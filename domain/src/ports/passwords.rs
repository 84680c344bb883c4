//! Password hashing: the one deliberately slow operation of authentication, kept behind a port
//! so the domain never sees an algorithm (the adapter uses argon2id) and tests stay fast.

use async_trait::async_trait;

use crate::model::Password;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// The hasher could not run (resources, a broken parameter set).
    #[error("password hashing failed: {message}")]
    Failed { message: String },
}

#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait PasswordHasher: Send + Sync {
    /// A PHC-format hash of `password` with a fresh salt.
    ///
    /// # Errors
    /// [`PasswordError::Failed`] only when the hasher itself cannot run.
    async fn hash(&self, password: &Password) -> Result<String, PasswordError>;

    /// Whether `password` matches `hash`. With `hash = None` (an unknown account) it does the
    /// same work and returns `false`, so a sign-in does not reveal which emails exist. A
    /// malformed stored hash is `false`, never an error.
    async fn verify(&self, password: &str, hash: Option<String>) -> bool;
}
