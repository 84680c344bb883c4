//! Settings of the Redis adapters, validated before any connection is made.

use std::fmt;
use std::time::Duration;

use chamberlain_domain::error::{Rule, ValidationError};

/// How to reach Redis and where to keep keys.
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) client: redis::Client,
    /// Every key starts with this. Braces make it a Redis Cluster hash tag, so all of one
    /// installation's keys (which Lua scripts touch together) live in one slot.
    pub key_prefix: String,
    /// How long any one command may take before the call fails with `Unavailable`. Longer than
    /// a `CLIENT PAUSE` or a failover, so consumers ride those out.
    pub response_timeout: Duration,
    pub connection_timeout: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.client.get_connection_info();
        f.debug_struct("RedisConfig")
            .field("addr", &info.addr().to_string())
            .field("key_prefix", &self.key_prefix)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// Defaults for a `redis://` URL: key prefix `{chamberlain}`, 10 s response timeout, 5 s
    /// connection timeout.
    ///
    /// # Errors
    /// `redis_url`: [`Rule::Format`] when the URL cannot be parsed.
    pub fn from_url(url: &str) -> Result<Self, ValidationError> {
        let url = url.trim();
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            return Err(ValidationError::new(
                "redis_url",
                Rule::Format("must start with redis://, rediss:// or unix://".into()),
            ));
        }
        let client = redis::Client::open(url).map_err(|e| {
            ValidationError::new("redis_url", Rule::Format(format!("invalid URL: {e}")))
        })?;
        Ok(Self {
            client,
            key_prefix: "{chamberlain}".into(),
            response_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(5),
        })
    }

    /// # Errors
    /// `redis_key_prefix`: [`Rule::Required`] when empty, [`Rule::Format`] with whitespace.
    pub fn with_key_prefix(mut self, prefix: &str) -> Result<Self, ValidationError> {
        if prefix.is_empty() {
            return Err(ValidationError::new("redis_key_prefix", Rule::Required));
        }
        if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValidationError::new(
                "redis_key_prefix",
                Rule::Format("must not contain whitespace".into()),
            ));
        }
        self.key_prefix = prefix.to_owned();
        Ok(self)
    }

    pub(crate) fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.key_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_prefixes_are_checked() {
        assert!(RedisConfig::from_url("redis://127.0.0.1:6379").is_ok());
        assert_eq!(
            RedisConfig::from_url("http://x").unwrap_err().field,
            "redis_url"
        );
        let c = RedisConfig::from_url("redis://:secret@127.0.0.1:6379/0").unwrap();
        assert!(!format!("{c:?}").contains("secret"));
        assert!(c.clone().with_key_prefix("").is_err());
        assert!(c.clone().with_key_prefix("a b").is_err());
        assert_eq!(
            c.with_key_prefix("{lab}").unwrap().key("q:stream"),
            "{lab}:q:stream"
        );
    }
}
