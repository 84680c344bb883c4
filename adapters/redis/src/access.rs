//! [`RedisAccessEpoch`]: the access epoch shared by every gateway and auth replica, one key
//! `<prefix>:access:epoch`; [`RedisRateLimiter`]: rate limits shared by every auth replica.
//!
//! Each advance stores a fresh random value rather than counting up, so a Redis that restarts
//! empty (the key reads as 0) never hands a replica an epoch it cached decisions under before.

use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::ports::{AccessEpoch, AccessError, Admission, Bucket, RateLimiter};
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

/// The cell rate algorithm over every bucket at once, on Redis's clock (so replicas with
/// skewed clocks still share one limit): KEYS are the buckets, ARGV each one's emission
/// interval and tolerance in microseconds. Returns `{0, 0}` when admitted (each bucket's
/// arrival time moved on and set to expire when it has passed), else `{i, wait}` for the first
/// bucket `i` (1-based) without room, writing nothing.
const ADMIT: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local next = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local earliest = tat - tolerance
  if now < earliest then return {i, earliest - now} end
  next[i] = tat + interval
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%d', next[i]), 'PX', math.ceil((next[i] - now) / 1000) + 1)
end
return {0, 0}
";

/// Rate limits in Redis, shared by every auth replica: keys `<prefix>:rate:<bucket>`.
#[derive(Clone)]
pub struct RedisRateLimiter {
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// # Errors
    /// `Unavailable` if Redis cannot be reached.
    pub async fn connect(config: &RedisConfig) -> Result<Self, AccessError> {
        let mut config = config.clone();
        config.response_timeout = config.response_timeout.min(ACCESS_READ_TIMEOUT);
        Ok(Self {
            conn: connection::manager(&config).await.map_err(unavailable)?,
            prefix: config.key("rate:"),
            script: redis::Script::new(ADMIT),
        })
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn admit(&self, buckets: &[Bucket]) -> Result<Admission, AccessError> {
        if buckets.is_empty() {
            return Ok(Admission::Admitted);
        }
        let mut invocation = self.script.prepare_invoke();
        for bucket in buckets {
            invocation
                .key(format!("{}{}", self.prefix, bucket.key))
                .arg(bucket.rate.emission_interval_micros())
                .arg(bucket.rate.tolerance_micros());
        }
        let mut conn = self.conn.clone();
        let (refused, wait): (usize, u64) = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(match refused {
            0 => Admission::Admitted,
            i => Admission::Refused {
                bucket: i - 1,
                retry_after: Duration::from_micros(wait),
            },
        })
    }
}
