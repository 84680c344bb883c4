//! [`RedisAccessEpoch`]: the access epoch shared by every gateway and auth replica, one key
//! `<prefix>:access:epoch`.
//!
//! Each advance stores a fresh random value rather than counting up, so a Redis that restarts
//! empty (the key reads as 0) never hands a replica an epoch it cached decisions under before.

use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::ports::{AccessEpoch, AccessError};
use redis::aio::ConnectionManager;

use crate::{RedisConfig, connection};

/// The longest an epoch read may take: the auth check waits for it on every call, and when it
/// fails the check decides from the store instead.
pub const ACCESS_READ_TIMEOUT: Duration = Duration::from_secs(1);

fn unavailable(e: impl std::fmt::Display) -> AccessError {
    AccessError::Unavailable {
        message: format!("redis: {e}"),
    }
}

/// The access epoch on Redis.
#[derive(Clone)]
pub struct RedisAccessEpoch {
    conn: ConnectionManager,
    key: String,
}

impl std::fmt::Debug for RedisAccessEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAccessEpoch")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RedisAccessEpoch {
    /// # Errors
    /// `Unavailable` if Redis cannot be reached.
    pub async fn connect(config: &RedisConfig) -> Result<Self, AccessError> {
        let mut config = config.clone();
        config.response_timeout = config.response_timeout.min(ACCESS_READ_TIMEOUT);
        Ok(Self {
            conn: connection::manager(&config).await.map_err(unavailable)?,
            key: config.key("access:epoch"),
        })
    }
}

#[async_trait]
impl AccessEpoch for RedisAccessEpoch {
    async fn current(&self) -> Result<u64, AccessError> {
        let mut conn = self.conn.clone();
        let v: Option<u64> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(v.unwrap_or(0))
    }

    async fn advance(&self) -> Result<u64, AccessError> {
        // Never 0, the value of a missing key.
        let value = uuid::Uuid::new_v4().as_u64_pair().0.max(1);
        let mut conn = self.conn.clone();
        let () = redis::cmd("SET")
            .arg(&self.key)
            .arg(value)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(value)
    }
}
