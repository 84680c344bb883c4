//! The API processes: `chamberlain gateway`, `chamberlain auth`, and the operator commands
//! around them (`bootstrap`, `descriptor-set`).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::ports::{
    AlertRepository, ApiTokenRepository, BatchRepository, ChamberChanges, ChamberHealthRepository,
    ChamberRepository, Clock, DetectorRepository, EventFeed, EventPublisher,
    OrganizationRepository, PollLedgerRepository, ReadingRepository, SectionRepository,
    TransmitterRepository, UserRepository,
};
use chamberlain_domain::usecases::{
    AdminSettings, AlertAdmin, AuthSettings, Authenticator, ChamberAdmin, EventWatch, NewUser,
    ReadingQueries, TransmitterAdmin, UserAdmin, WatchSettings,
};
use chamberlain_grpc::{Api, IdentityKey};

use crate::{ConfigError, Database, DatabaseArgs, RedisArgs, shutdown_signal};

/// Events the gateway's shared subscription holds for its streams before the slowest lags.
const EVENT_HUB_CAPACITY: usize = 65_536;

/// Every repository the API uses, from whichever store the URL names.
pub struct ApiStores {
    sections: Arc<dyn SectionRepository>,
    pub(crate) chambers: Arc<dyn ChamberRepository>,
    detectors: Arc<dyn DetectorRepository>,
    batches: Arc<dyn BatchRepository>,
    readings: Arc<dyn ReadingRepository>,
    ledger: Arc<dyn PollLedgerRepository>,
    pub(crate) health: Arc<dyn ChamberHealthRepository>,
    organizations: Arc<dyn OrganizationRepository>,
    users: Arc<dyn UserRepository>,
    tokens: Arc<dyn ApiTokenRepository>,
    pub(crate) alerts: Arc<dyn AlertRepository>,
    pub(crate) transmitters: Arc<dyn TransmitterRepository>,
}

pub(crate) fn api_stores<S>(s: Arc<S>) -> ApiStores
where
    S: SectionRepository
        + ChamberRepository
        + DetectorRepository
        + BatchRepository
        + ReadingRepository
        + PollLedgerRepository
        + ChamberHealthRepository
        + OrganizationRepository
        + UserRepository
        + ApiTokenRepository
        + AlertRepository
        + TransmitterRepository
        + 'static,
{
    ApiStores {
        sections: s.clone(),
        chambers: s.clone(),
        detectors: s.clone(),
        batches: s.clone(),
        readings: s.clone(),
        ledger: s.clone(),
        health: s.clone(),
        organizations: s.clone(),
        users: s.clone(),
        tokens: s.clone(),
        alerts: s.clone(),
        transmitters: s,
    }
}

pub(crate) async fn open(args: &DatabaseArgs) -> Result<ApiStores, anyhow::Error> {
    Ok(match args.database()? {
        Database::Postgres(config) => api_stores(Arc::new(
            chamberlain_postgres::PgStore::connect(&config).await?,
        )),
        Database::Sqlite(config) => {
            let store = chamberlain_sqlite::SqliteStore::connect(&config).await?;
            store.migrate().await?;
            api_stores(Arc::new(store))
        }
    })
}

fn bad(flag: &str, env: &str, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(ConfigError(format!(
        "invalid setting {flag} ({env}): {why}"
    )))
}

#[derive(Debug, clap::Args)]
pub struct IdentityKeyArgs {
    /// The key the auth service signs identities with and the gateway verifies them by
    /// (at least 32 bytes; the same on both). Required.
    #[arg(long, env = "CHAMBERLAIN_IDENTITY_KEY", hide_env_values = true)]
    identity_key: Option<String>,
}

impl IdentityKeyArgs {
    fn key(&self) -> Result<IdentityKey, anyhow::Error> {
        let raw = self
            .identity_key
            .as_deref()
            .ok_or_else(|| bad("--identity-key", "CHAMBERLAIN_IDENTITY_KEY", "is required"))?;
        IdentityKey::new(raw.as_bytes().to_vec())
            .map_err(|e| bad("--identity-key", "CHAMBERLAIN_IDENTITY_KEY", e))
    }
}

#[derive(Debug, clap::Args)]
pub struct AuthenticationArgs {
    /// Seconds a token decision is reused: a revoked token stops working within this time.
    #[arg(long, env = "CHAMBERLAIN_AUTH_CACHE_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=300))]
    auth_cache_secs: u64,
    /// Hours a token from signing in lasts.
    #[arg(long, env = "CHAMBERLAIN_SESSION_HOURS", default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=720))]
    session_hours: u64,
}

impl AuthenticationArgs {
    fn settings(&self) -> AuthSettings {
        AuthSettings {
            cache_ttl: Duration::from_secs(self.auth_cache_secs),
            session_ttl: Duration::from_secs(self.session_hours * 3600),
            ..AuthSettings::default()
        }
    }
}

/// The API over `db`, publishing chamber changes and events to the given buses.
#[allow(
    clippy::too_many_arguments,
    reason = "a composition root wires everything once"
)]
pub(crate) fn build_api(
    db: &ApiStores,
    changes: Arc<dyn ChamberChanges>,
    events: Arc<dyn EventPublisher>,
    feed: Arc<dyn EventFeed>,
    clock: Arc<dyn Clock>,
    watch: WatchSettings,
    chamber_cache: Duration,
    auth: AuthSettings,
) -> Api {
    Api {
        admin: ChamberAdmin {
            sections: db.sections.clone(),
            chambers: db.chambers.clone(),
            detectors: db.detectors.clone(),
            batches: db.batches.clone(),
            changes,
            events,
            clock: clock.clone(),
            settings: AdminSettings::default(),
        },
        watch: EventWatch {
            feed,
            sections: db.sections.clone(),
            chambers: db.chambers.clone(),
            detectors: db.detectors.clone(),
            settings: watch,
        },
        alerts: AlertAdmin {
            alerts: db.alerts.clone(),
            chambers: db.chambers.clone(),
            detectors: db.detectors.clone(),
            clock: clock.clone(),
        },
        transmitters: TransmitterAdmin {
            transmitters: db.transmitters.clone(),
            clock: clock.clone(),
        },
        queries: ReadingQueries {
            readings: db.readings.clone(),
            ledger: db.ledger.clone(),
            chambers: db.chambers.clone(),
            batches: db.batches.clone(),
        },
        users: UserAdmin {
            organizations: db.organizations.clone(),
            users: db.users.clone(),
            clock: clock.clone(),
        },
        auth: authenticator(db, clock.clone(), auth),
        passwords: Arc::new(chamberlain_argon2::Argon2Hasher::default()),
        health: db.health.clone(),
        clock,
        chamber_cache: Arc::new(chamberlain_grpc::ChamberCache::new(chamber_cache)),
    }
}

pub(crate) fn authenticator(
    db: &ApiStores,
    clock: Arc<dyn Clock>,
    settings: AuthSettings,
) -> Authenticator {
    Authenticator::new(
        db.tokens.clone(),
        db.users.clone(),
        Arc::new(chamberlain_argon2::Argon2Hasher::default()),
        clock,
        settings,
    )
}

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    metrics: crate::telemetry::MetricsArgs,
    #[command(flatten)]
    key: IdentityKeyArgs,
    #[command(flatten)]
    authentication: AuthenticationArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// Messages queued per live stream (WatchReadings, WatchEvents); beyond it a slow
    /// subscriber's messages are dropped and counted, and it is told how many it missed.
    #[arg(long, env = "CHAMBERLAIN_WATCH_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    watch_buffer: u64,
    /// Seconds a live stream may stay behind (dropping messages) before it is disconnected.
    #[arg(long, env = "CHAMBERLAIN_WATCH_MAX_LAG_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    watch_max_lag_secs: u64,
    /// Address the gRPC API listens on.
    #[arg(
        long,
        env = "CHAMBERLAIN_GATEWAY_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    listen: SocketAddr,
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "CHAMBERLAIN_GATEWAY_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=256 * 1024 * 1024))]
    max_message_bytes: u64,
    /// Milliseconds a GetChamber answer is reused; writes through this gateway drop it at once,
    /// other gateways' answers may lag by up to this. 0 turns the cache off.
    #[arg(long, env = "CHAMBERLAIN_GATEWAY_CHAMBER_CACHE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    chamber_cache_ms: u64,
    /// Seconds after which any call is cut off (DEADLINE_EXCEEDED).
    #[arg(long, env = "CHAMBERLAIN_GATEWAY_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout_secs: u64,
}

pub async fn gateway(
    args: GatewayArgs,
    telemetry: &chamberlain_telemetry::Telemetry,
) -> Result<(), anyhow::Error> {
    let key = args.key.key()?;
    let redis = args.redis.config()?;
    args.metrics.serve(telemetry, 9463).await?;
    let db = open(&args.database).await?;
    let clock: Arc<dyn Clock> = Arc::new(chamberlain_memory::SystemClock);
    let changes = Arc::new(chamberlain_redis::RedisChamberChanges::connect(&redis, 4096).await?);
    let events =
        Arc::new(chamberlain_redis::RedisEventBus::connect(&redis, EVENT_HUB_CAPACITY).await?);
    let api = build_api(
        &db,
        changes,
        events.clone(),
        events,
        clock,
        WatchSettings {
            buffer: usize::try_from(args.watch_buffer).unwrap_or(1024),
            max_lag: Duration::from_secs(args.watch_max_lag_secs),
        },
        Duration::from_millis(args.chamber_cache_ms),
        args.authentication.settings(),
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            bad(
                "--listen",
                "CHAMBERLAIN_GATEWAY_LISTEN",
                format!("cannot bind {}: {e}", args.listen),
            )
        })?;
    tracing::info!(listen = %listener.local_addr()?, "gateway serving");
    chamberlain_gateway::serve(
        api,
        chamberlain_gateway::GatewayConfig {
            max_message_bytes: usize::try_from(args.max_message_bytes).unwrap_or(usize::MAX),
            request_timeout: Duration::from_secs(args.timeout_secs),
            identity_key: key,
            embedded_auth: None,
        },
        listener,
        shutdown_signal(),
    )
    .await?;
    tracing::info!("gateway stopped");
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    metrics: crate::telemetry::MetricsArgs,
    #[command(flatten)]
    key: IdentityKeyArgs,
    #[command(flatten)]
    authentication: AuthenticationArgs,
    /// Address the ext_authz gRPC service listens on.
    #[arg(
        long,
        env = "CHAMBERLAIN_AUTH_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    listen: SocketAddr,
    /// Calls per second each user may make (sustained).
    #[arg(long, env = "CHAMBERLAIN_RATE_LIMIT_PER_SEC", default_value_t = NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN))]
    rate_limit_per_sec: NonZeroU32,
    /// Calls each user may make at once above the sustained rate.
    #[arg(long, env = "CHAMBERLAIN_RATE_LIMIT_BURST", default_value_t = NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN))]
    rate_limit_burst: NonZeroU32,
    /// Sign-in attempts per second from one client address (sustained; bursts of 10).
    #[arg(long, env = "CHAMBERLAIN_SIGN_IN_PER_SEC", default_value_t = NonZeroU32::new(1).unwrap_or(NonZeroU32::MIN))]
    sign_in_per_sec: NonZeroU32,
}

pub async fn auth(
    args: AuthArgs,
    telemetry: &chamberlain_telemetry::Telemetry,
) -> Result<(), anyhow::Error> {
    let key = args.key.key()?;
    args.metrics.serve(telemetry, 9464).await?;
    let db = open(&args.database).await?;
    let clock: Arc<dyn Clock> = Arc::new(chamberlain_memory::SystemClock);
    let check = chamberlain_auth::AuthCheck::new(
        authenticator(&db, clock.clone(), args.authentication.settings()),
        clock,
        &chamberlain_auth::AuthServiceConfig {
            identity_key: key,
            rate_limit: chamberlain_auth::RateLimit {
                per_second: args.rate_limit_per_sec,
                burst: args.rate_limit_burst,
            },
            sign_in_limit: chamberlain_auth::RateLimit {
                per_second: args.sign_in_per_sec,
                burst: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            },
        },
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            bad(
                "--listen",
                "CHAMBERLAIN_AUTH_LISTEN",
                format!("cannot bind {}: {e}", args.listen),
            )
        })?;
    tracing::info!(listen = %listener.local_addr()?, "auth service serving");
    chamberlain_auth::serve(check, listener, shutdown_signal()).await?;
    tracing::info!("auth service stopped");
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Name of the new organization.
    #[arg(long)]
    organization: String,
    /// Email of its first admin.
    #[arg(long)]
    admin_email: String,
    /// Display name of its first admin (default: the email).
    #[arg(long)]
    admin_name: Option<String>,
}

/// Creates an organization with its first admin and prints an admin API token (once).
pub async fn bootstrap(args: BootstrapArgs) -> Result<(), anyhow::Error> {
    let db = open(&args.database).await?;
    let clock: Arc<dyn Clock> = Arc::new(chamberlain_memory::SystemClock);
    let users = UserAdmin {
        organizations: db.organizations.clone(),
        users: db.users.clone(),
        clock: clock.clone(),
    };
    let (org, admin) = users
        .create_organization(
            &args.organization,
            NewUser {
                display_name: args
                    .admin_name
                    .clone()
                    .unwrap_or_else(|| args.admin_email.clone()),
                email: args.admin_email.clone(),
                role: "admin".into(),
                password_hash: None,
            },
        )
        .await
        .map_err(|e| anyhow::Error::new(ConfigError(e.to_string())))?;
    let actor = chamberlain_domain::usecases::Actor {
        user_id: admin.id,
        organization_id: org.id,
        role: chamberlain_domain::model::Role::Admin,
    };
    let issued = authenticator(&db, clock, AuthSettings::default())
        .create_token(&actor, "bootstrap", None, None)
        .await?;
    println!("organization {} ({})", org.name.as_str(), org.id);
    println!("admin {} ({})", admin.email.as_str(), admin.id);
    println!("api token (shown once): {}", issued.secret.expose());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct DescriptorSetArgs {
    /// Where to write the API's descriptor set (imports included) for Envoy's JSON transcoder.
    #[arg(long, default_value = "chamberlain.pb")]
    out: PathBuf,
}

pub fn descriptor_set(args: &DescriptorSetArgs) -> Result<(), anyhow::Error> {
    std::fs::write(&args.out, chamberlain_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", args.out.display()))?;
    println!(
        "wrote {} ({} bytes): services {}",
        args.out.display(),
        chamberlain_proto::FILE_DESCRIPTOR_SET.len(),
        chamberlain_proto::SERVICES.join(", ")
    );
    Ok(())
}
