//! [`RedisLeaderLease`] and [`RedisScheduleCheckpoint`]: one leader among scheduler replicas,
//! and the watermark it leaves for the next one.
//!
//! The lease is one key holding `<holder>|<token>` with a TTL; the token comes from a counter
//! that only grows (`INCR`), so every grant has a larger fencing token than the last, and the
//! checkpoint refuses writes from a token older than one it has seen.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::Timestamp;
use chamberlain_domain::ports::{Clock, LeaderLease, LeaseError, LeaseGrant, ScheduleCheckpoint};
use redis::aio::ConnectionManager;

use crate::{RedisConfig, connection};

const ACQUIRE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder = string.match(cur, '^(.*)|%d+$')
  if holder ~= ARGV[1] then return false end
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

const SAVE: &str = r"
local fence = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token < fence then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
local cur = redis.call('GET', KEYS[2])
if (not cur) or tonumber(ARGV[2]) > tonumber(cur) then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
";

fn unavailable(e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Unavailable {
        message: format!("redis: {e}"),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The leader lease on Redis.
#[derive(Clone)]
pub struct RedisLeaderLease {
    conn: ConnectionManager,
    clock: Arc<dyn Clock>,
    key: String,
    fence: String,
}

impl std::fmt::Debug for RedisLeaderLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLeaderLease")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RedisLeaderLease {
    /// `clock` dates the grants' `expires_at` (the key's TTL in Redis is what counts).
    ///
    /// # Errors
    /// `Unavailable` if Redis cannot be reached.
    pub async fn connect(config: &RedisConfig, clock: Arc<dyn Clock>) -> Result<Self, LeaseError> {
        Self::connect_named(config, clock, "scheduler").await
    }

    /// The lease of another singleton role (`alerter`, ...): keys `<prefix>:<role>:leader` and
    /// `<prefix>:<role>:fence`, independent of the scheduler's.
    ///
    /// # Errors
    /// `Unavailable` if Redis cannot be reached.
    pub async fn connect_named(
        config: &RedisConfig,
        clock: Arc<dyn Clock>,
        role: &str,
    ) -> Result<Self, LeaseError> {
        Ok(Self {
            conn: connection::manager(config).await.map_err(unavailable)?,
            clock,
            key: config.key(&format!("{role}:leader")),
            fence: config.key(&format!("{role}:fence")),
        })
    }

    fn value(grant: &LeaseGrant) -> String {
        format!("{}|{}", grant.holder, grant.fencing_token)
    }
}

#[async_trait]
impl LeaderLease for RedisLeaderLease {
    async fn acquire(&self, holder: &str, ttl: Duration) -> Result<Option<LeaseGrant>, LeaseError> {
        let mut conn = self.conn.clone();
        let token: Option<u64> = redis::Script::new(ACQUIRE)
            .key(&self.key)
            .key(&self.fence)
            .arg(holder)
            .arg(ms(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(token.map(|fencing_token| LeaseGrant {
            holder: holder.to_owned(),
            fencing_token,
            expires_at: self.clock.now() + ttl,
        }))
    }

    async fn renew(
        &self,
        grant: &LeaseGrant,
        ttl: Duration,
    ) -> Result<Option<LeaseGrant>, LeaseError> {
        let mut conn = self.conn.clone();
        let renewed: i64 = redis::Script::new(RENEW)
            .key(&self.key)
            .arg(Self::value(grant))
            .arg(ms(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok((renewed == 1).then(|| LeaseGrant {
            expires_at: self.clock.now() + ttl,
            ..grant.clone()
        }))
    }

    async fn release(&self, grant: &LeaseGrant) -> Result<(), LeaseError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(&self.key)
            .arg(Self::value(grant))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// The schedule watermark on Redis, fenced by lease tokens.
#[derive(Clone)]
pub struct RedisScheduleCheckpoint {
    conn: ConnectionManager,
    fence: String,
    watermark: String,
}

impl std::fmt::Debug for RedisScheduleCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisScheduleCheckpoint")
            .field("key", &self.watermark)
            .finish_non_exhaustive()
    }
}

impl RedisScheduleCheckpoint {
    /// # Errors
    /// `Unavailable` if Redis cannot be reached.
    pub async fn connect(config: &RedisConfig) -> Result<Self, LeaseError> {
        Ok(Self {
            conn: connection::manager(config).await.map_err(unavailable)?,
            fence: config.key("scheduler:checkpoint-fence"),
            watermark: config.key("scheduler:watermark"),
        })
    }
}

#[async_trait]
impl ScheduleCheckpoint for RedisScheduleCheckpoint {
    async fn load(&self) -> Result<Option<Timestamp>, LeaseError> {
        let mut conn = self.conn.clone();
        let v: Option<i64> = redis::cmd("GET")
            .arg(&self.watermark)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(v.map(Timestamp::from_unix_millis))
    }

    async fn save(&self, fencing_token: u64, watermark: Timestamp) -> Result<bool, LeaseError> {
        let mut conn = self.conn.clone();
        let saved: i64 = redis::Script::new(SAVE)
            .key(&self.fence)
            .key(&self.watermark)
            .arg(fencing_token)
            .arg(watermark.as_unix_millis())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(saved == 1)
    }
}
