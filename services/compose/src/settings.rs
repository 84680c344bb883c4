//! Every setting of the service commands, each declared once: its flag, its `CHAMBERLAIN_*`
//! variable, its bounds and its default (taken from the service's `Config` or
//! `chamberlain_domain::limits`). Commands flatten the groups they take, so a setting shared by
//! several commands (the data directory, the egress allowlist, the worker's bounds) has one
//! definition. A bad value stops the command with exit code 2 and a [`ConfigError`] naming the
//! flag and the variable.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use chamberlain_domain::ValidationError;
use chamberlain_domain::egress::EgressPolicy;
use chamberlain_domain::limits::DEFAULT_RESPONSE_BODY_CAP;
use chamberlain_domain::usecases::AuthSettings;
use chamberlain_grpc::IdentityKey;
use chamberlain_http::HttpClientConfig;
use chamberlain_http::config::DEFAULT_POOL_MAX_IDLE_PER_HOST;
use chamberlain_worker::WorkerConfig;
use clap::builder::RangedU64ValueParser;

use crate::storage::Storage;

/// A setting that cannot be used; the `chamberlain` binary exits with code 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Names the flag and the environment variable of a bad setting, and why it is bad.
pub fn bad_setting(flag: &str, env: &str, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(ConfigError(format!(
        "invalid setting {flag} ({env}): {why}"
    )))
}

fn rule(e: &ValidationError) -> String {
    e.rule.to_string()
}

/// Where the embedded mode keeps its files.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArg {
    /// Where the embedded mode keeps its files (the SQLite database by default).
    #[arg(long, env = "CHAMBERLAIN_DATA_DIR", default_value = "chamberlain-data")]
    pub data_dir: PathBuf,
}

impl DataDirArg {
    /// Creates the directory if it is missing.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `--data-dir` when it cannot be created.
    pub fn create(&self) -> Result<(), anyhow::Error> {
        std::fs::create_dir_all(&self.data_dir).map_err(|e| {
            bad_setting(
                "--data-dir",
                "CHAMBERLAIN_DATA_DIR",
                format!("cannot create {}: {e}", self.data_dir.display()),
            )
        })
    }

    /// The embedded mode's database file.
    pub fn database_file(&self) -> PathBuf {
        self.data_dir.join("chamberlain.db")
    }
}

/// The store: PostgreSQL for the distributed mode, SQLite for the embedded one.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// postgres://user@host/db for the distributed mode, sqlite://path for the embedded one
    /// (default: sqlite://<data-dir>/chamberlain.db).
    #[arg(long, env = "CHAMBERLAIN_DATABASE_URL")]
    pub database_url: Option<String>,
    /// PostgreSQL connections this process opens at most (its pool). Every process has its own
    /// pool: their sum must stay under the server's `max_connections` (100 by default).
    #[arg(long, env = "CHAMBERLAIN_DATABASE_MAX_CONNECTIONS", default_value_t = chamberlain_postgres::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
    #[command(flatten)]
    pub data_dir: DataDirArg,
}

impl DatabaseArgs {
    /// The store the URL names, validated before anything connects.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `--database-url`.
    pub fn storage(&self) -> Result<Storage, anyhow::Error> {
        let url = match &self.database_url {
            Some(url) => url.trim().to_owned(),
            None => format!("sqlite://{}", self.data_dir.database_file().display()),
        };
        let storage = Storage::from_url(&url)
            .map_err(|why| bad_setting("--database-url", "CHAMBERLAIN_DATABASE_URL", why))?;
        Ok(match storage {
            Storage::Postgres(config) => Storage::Postgres(Box::new(
                config
                    .with_max_connections(self.database_max_connections)
                    .map_err(|e| {
                        bad_setting(
                            "--database-max-connections",
                            "CHAMBERLAIN_DATABASE_MAX_CONNECTIONS",
                            rule(&e),
                        )
                    })?,
            )),
            sqlite @ Storage::Sqlite(_) => sqlite,
        })
    }
}

/// The Redis of the distributed mode.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// The Redis holding the poll queue, the leader lease and the event bus.
    #[arg(
        long,
        env = "CHAMBERLAIN_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Prefix of every Redis key (a hash tag): installations sharing a Redis differ here.
    #[arg(
        long,
        env = "CHAMBERLAIN_REDIS_PREFIX",
        default_value = "{chamberlain}"
    )]
    pub redis_prefix: String,
}

impl RedisArgs {
    /// # Errors
    /// A [`ConfigError`] naming `--redis-url` or `--redis-prefix`.
    pub fn config(&self) -> Result<chamberlain_redis::RedisConfig, anyhow::Error> {
        chamberlain_redis::RedisConfig::from_url(&self.redis_url)
            .map_err(|e| bad_setting("--redis-url", "CHAMBERLAIN_REDIS_URL", rule(&e)))?
            .with_key_prefix(&self.redis_prefix)
            .map_err(|e| bad_setting("--redis-prefix", "CHAMBERLAIN_REDIS_PREFIX", rule(&e)))
    }
}

/// Which private addresses outbound connections (chambers, webhooks, MQTT brokers) may reach.
#[derive(Debug, Clone, clap::Args)]
pub struct EgressArgs {
    /// CIDRs chambers, webhooks and MQTT brokers may be reached in although private, loopback,
    /// link-local... (comma-separated, e.g. 10.20.0.0/16,127.0.0.2/32).
    #[arg(long, env = "CHAMBERLAIN_EGRESS_ALLOW", default_value = "")]
    pub egress_allow: String,
}

impl EgressArgs {
    /// The policy, with `extra` CIDRs allowed besides the operator's (the embedded mode's own
    /// simulator).
    ///
    /// # Errors
    /// A [`ConfigError`] naming `--egress-allow`.
    pub fn policy(&self, extra: &[String]) -> Result<EgressPolicy, anyhow::Error> {
        let list: Vec<&str> = std::iter::once(self.egress_allow.trim())
            .chain(extra.iter().map(String::as_str))
            .filter(|s| !s.is_empty())
            .collect();
        EgressPolicy::parse(&list.join(","))
            .map_err(|e| bad_setting("--egress-allow", "CHAMBERLAIN_EGRESS_ALLOW", rule(&e)))
    }
}

/// A worker's bounds.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerLimitsArgs {
    /// Fetches in flight at once.
    #[arg(long, env = "CHAMBERLAIN_WORKER_CONCURRENCY", default_value_t = WorkerConfig::default().concurrency, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub concurrency: usize,
    /// Leased polls held until their slot comes (the scheduler enqueues them ahead), beyond
    /// those being fetched.
    #[arg(long, env = "CHAMBERLAIN_WORKER_MAX_WAITING", default_value_t = WorkerConfig::default().max_waiting, value_parser = RangedU64ValueParser::<usize>::new().range(0..=100_000))]
    pub max_waiting: usize,
    /// Results fetched (or being fetched) and not stored yet, at most: at this bound the
    /// worker takes no new polls until the store catches up (backpressure).
    #[arg(long, env = "CHAMBERLAIN_WORKER_MAX_RESULTS_WAITING", default_value_t = WorkerConfig::default().max_results_waiting, value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub max_results_waiting: usize,
    /// Their approximate memory, at most, in MiB.
    #[arg(long, env = "CHAMBERLAIN_WORKER_MAX_RESULTS_MIB", default_value_t = WorkerConfig::default().max_results_bytes / (1024 * 1024), value_parser = RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub max_results_mib: usize,
}

impl WorkerLimitsArgs {
    /// `config` with these bounds.
    pub fn apply(&self, config: WorkerConfig) -> WorkerConfig {
        WorkerConfig {
            concurrency: self.concurrency,
            max_waiting: self.max_waiting,
            max_results_waiting: self.max_results_waiting,
            max_results_bytes: self.max_results_mib * 1024 * 1024,
            ..config
        }
    }
}

/// The chamber client's limits (the distributed worker).
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Largest chamber response read, in bytes (1 KiB to 64 MiB).
    #[arg(long, env = "CHAMBERLAIN_HTTP_BODY_CAP", default_value_t = DEFAULT_RESPONSE_BODY_CAP)]
    pub body_cap: usize,
    /// Idle keep-alive connections kept per chamber host (0 turns keep-alive off).
    #[arg(long, env = "CHAMBERLAIN_HTTP_POOL_IDLE_PER_HOST", default_value_t = DEFAULT_POOL_MAX_IDLE_PER_HOST, value_parser = RangedU64ValueParser::<usize>::new().range(0..=1024))]
    pub http_pool_idle_per_host: usize,
}

impl HttpArgs {
    /// `config` with these limits.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the flag.
    pub fn apply(&self, config: HttpClientConfig) -> Result<HttpClientConfig, anyhow::Error> {
        config
            .with_body_cap(self.body_cap)
            .map_err(|e| bad_setting("--body-cap", "CHAMBERLAIN_HTTP_BODY_CAP", rule(&e)))?
            .with_pool_max_idle_per_host(self.http_pool_idle_per_host)
            .map_err(|e| {
                bad_setting(
                    "--http-pool-idle-per-host",
                    "CHAMBERLAIN_HTTP_POOL_IDLE_PER_HOST",
                    rule(&e),
                )
            })
    }
}

/// The gRPC API's address.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayListenArg {
    /// Address the gRPC API listens on (the `chamberlain` client commands talk to it).
    #[arg(
        long,
        env = "CHAMBERLAIN_GATEWAY_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,
}

impl GatewayListenArg {
    /// Binds the address (before anything else starts, so a taken port stops the command).
    ///
    /// # Errors
    /// A [`ConfigError`] naming `--listen`.
    pub async fn bind(&self) -> Result<tokio::net::TcpListener, anyhow::Error> {
        bind(self.listen, "CHAMBERLAIN_GATEWAY_LISTEN").await
    }
}

/// Binds `addr` for the setting `env` (its flag is `--listen`).
///
/// # Errors
/// A [`ConfigError`] naming `--listen` and `env`.
pub async fn bind(addr: SocketAddr, env: &str) -> Result<tokio::net::TcpListener, anyhow::Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| bad_setting("--listen", env, format!("cannot bind {addr}: {e}")))
}

/// The gRPC API's limits on each call.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayLimitsArgs {
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "CHAMBERLAIN_GATEWAY_MAX_MESSAGE_BYTES", default_value_t = chamberlain_gateway::DEFAULT_MAX_MESSAGE_BYTES, value_parser = RangedU64ValueParser::<usize>::new().range(1024..=256 * 1024 * 1024))]
    pub max_message_bytes: usize,
    /// Seconds after which any call is cut off (DEADLINE_EXCEEDED).
    #[arg(long, env = "CHAMBERLAIN_GATEWAY_TIMEOUT_SECS", default_value_t = chamberlain_gateway::DEFAULT_REQUEST_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_secs: u64,
}

impl GatewayLimitsArgs {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// The key identities are signed with between the auth service and the gateways.
#[derive(Debug, Clone, clap::Args)]
pub struct IdentityKeyArgs {
    /// The key the auth service signs identities with and the gateway verifies them by
    /// (at least 32 bytes; the same on both). Required.
    #[arg(long, env = "CHAMBERLAIN_IDENTITY_KEY", hide_env_values = true)]
    pub identity_key: Option<String>,
}

impl IdentityKeyArgs {
    /// # Errors
    /// A [`ConfigError`] naming `--identity-key` when it is missing or too short.
    pub fn key(&self) -> Result<IdentityKey, anyhow::Error> {
        let raw = self.identity_key.as_deref().ok_or_else(|| {
            bad_setting("--identity-key", "CHAMBERLAIN_IDENTITY_KEY", "is required")
        })?;
        IdentityKey::new(raw.as_bytes().to_vec())
            .map_err(|e| bad_setting("--identity-key", "CHAMBERLAIN_IDENTITY_KEY", e))
    }
}

/// How tokens are checked and how long a session lasts.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthenticationArgs {
    /// The longest a token decision is reused (a role change, a deleted user or a revoked
    /// token ends every reuse on the next call).
    #[arg(long, env = "CHAMBERLAIN_AUTH_CACHE_SECS", default_value_t = AuthSettings::default().cache_ttl.as_secs(), value_parser = clap::value_parser!(u64).range(0..=300))]
    pub auth_cache_secs: u64,
    /// Hours a token from signing in lasts.
    #[arg(long, env = "CHAMBERLAIN_SESSION_HOURS", default_value_t = AuthSettings::default().session_ttl.as_secs() / 3600, value_parser = clap::value_parser!(u64).range(1..=720))]
    pub session_hours: u64,
}

impl AuthenticationArgs {
    pub fn settings(&self) -> AuthSettings {
        AuthSettings {
            cache_ttl: Duration::from_secs(self.auth_cache_secs),
            session_ttl: Duration::from_secs(self.session_hours * 3600),
            ..AuthSettings::default()
        }
    }
}

/// The auth service's rate limits, shared by its replicas through Redis, and who the client
/// is behind proxies.
#[derive(Debug, Clone, clap::Args)]
pub struct RateLimitArgs {
    /// Calls per second each user may make (sustained).
    #[arg(long, env = "CHAMBERLAIN_RATE_LIMIT_PER_SEC", default_value_t = chamberlain_auth::DEFAULT_USER_LIMIT.per_second)]
    pub rate_limit_per_sec: NonZeroU32,
    /// Calls each user may make at once.
    #[arg(long, env = "CHAMBERLAIN_RATE_LIMIT_BURST", default_value_t = chamberlain_auth::DEFAULT_USER_LIMIT.burst)]
    pub rate_limit_burst: NonZeroU32,
    /// Calls per second all the users and tokens of one organization may make together.
    #[arg(long, env = "CHAMBERLAIN_ORG_RATE_LIMIT_PER_SEC", default_value_t = chamberlain_auth::DEFAULT_ORGANIZATION_LIMIT.per_second)]
    pub org_rate_limit_per_sec: NonZeroU32,
    /// Calls one organization may make at once.
    #[arg(long, env = "CHAMBERLAIN_ORG_RATE_LIMIT_BURST", default_value_t = chamberlain_auth::DEFAULT_ORGANIZATION_LIMIT.burst)]
    pub org_rate_limit_burst: NonZeroU32,
    /// Sign-in attempts per second from one client address (sustained; bursts of 10).
    #[arg(long, env = "CHAMBERLAIN_SIGN_IN_PER_SEC", default_value_t = chamberlain_auth::DEFAULT_SIGN_IN_LIMIT.per_second)]
    pub sign_in_per_sec: NonZeroU32,
    /// Calls without a valid credential per second from one client address (bursts of twice
    /// this); beyond, they are answered 429 instead of 401.
    #[arg(long, env = "CHAMBERLAIN_UNAUTHENTICATED_PER_SEC", default_value_t = chamberlain_auth::DEFAULT_UNAUTHENTICATED_LIMIT.per_second)]
    pub unauthenticated_per_sec: NonZeroU32,
    /// Proxies in front of Envoy (load balancers), as networks or addresses separated by
    /// commas: the client address is the `x-forwarded-for` entry the nearest untrusted hop
    /// added. Empty: the connection's peer is the client.
    #[arg(long, env = "CHAMBERLAIN_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
}

impl RateLimitArgs {
    /// # Errors
    /// A [`ConfigError`] naming `--trusted-proxies`.
    pub fn limits(
        &self,
    ) -> Result<(chamberlain_auth::RateLimits, Vec<ipnet::IpNet>), anyhow::Error> {
        use chamberlain_domain::ports::Rate;
        let trusted = chamberlain_auth::parse_networks(&self.trusted_proxies)
            .map_err(|e| bad_setting("--trusted-proxies", "CHAMBERLAIN_TRUSTED_PROXIES", e))?;
        let twice = |n: NonZeroU32| n.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        Ok((
            chamberlain_auth::RateLimits {
                per_user: Rate {
                    per_second: self.rate_limit_per_sec,
                    burst: self.rate_limit_burst,
                },
                per_organization: Rate {
                    per_second: self.org_rate_limit_per_sec,
                    burst: self.org_rate_limit_burst,
                },
                sign_in: Rate {
                    per_second: self.sign_in_per_sec,
                    ..chamberlain_auth::DEFAULT_SIGN_IN_LIMIT
                },
                unauthenticated: Rate {
                    per_second: self.unauthenticated_per_sec,
                    burst: twice(self.unauthenticated_per_sec),
                },
            },
            trusted,
        ))
    }
}

/// Who operates the installation (the queue on the console shows every organization's polls).
#[derive(Debug, Clone, clap::Args)]
pub struct InstallationOperatorsArgs {
    /// User ids (comma-separated) of the installation's operators: they alone open the queue
    /// view on the console (`/console/queue`). A user's id is in `AuthService.WhoAmI`. Ids, not
    /// addresses: an organization admin could give a user of theirs any address.
    #[arg(
        long,
        env = "CHAMBERLAIN_INSTALLATION_OPERATORS",
        value_delimiter = ','
    )]
    pub installation_operators: Vec<String>,
}

impl InstallationOperatorsArgs {
    /// # Errors
    /// An entry that is not a user id, named.
    pub fn operators(
        &self,
    ) -> Result<std::collections::HashSet<chamberlain_domain::model::UserId>, anyhow::Error> {
        self.installation_operators
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                chamberlain_domain::model::UserId::parse(s).map_err(|_| {
                    bad_setting(
                        "--installation-operators",
                        "CHAMBERLAIN_INSTALLATION_OPERATORS",
                        format!("`{s}` is not a user id (a UUID, as AuthService.WhoAmI gives)"),
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installation_operators_are_user_ids_and_a_bad_one_is_named() {
        let id = chamberlain_domain::model::UserId::random();
        let args = InstallationOperatorsArgs {
            installation_operators: vec![id.to_string(), " ".into()],
        };
        assert_eq!(args.operators().unwrap(), [id].into_iter().collect());
        let args = InstallationOperatorsArgs {
            installation_operators: vec![id.to_string(), "admin@lab.example".into()],
        };
        let err = args.operators().unwrap_err().to_string();
        assert!(
            err.contains("--installation-operators")
                && err.contains("CHAMBERLAIN_INSTALLATION_OPERATORS")
                && err.contains("`admin@lab.example` is not a user id"),
            "{err}"
        );
    }
}
