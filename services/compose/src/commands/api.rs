//! `chamberlain gateway`, `auth`, `bootstrap` and `descriptor-set`: the distributed mode's API
//! processes and the commands around them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::model::{Email, Role};
use chamberlain_domain::usecases::{
    Actor, ApiSettings, AuthSettings, Authenticator, NewUser, UseCaseError, UserAdmin,
    WatchSettings,
};
use chamberlain_memory::SystemClock;
use chamberlain_telemetry::Telemetry;

use crate::distributed::Distributed;
use crate::settings::{
    AuthenticationArgs, ConfigError, DatabaseArgs, GatewayLimitsArgs, GatewayListenArg,
    IdentityKeyArgs, RateLimitArgs, RedisArgs, bind,
};
use crate::shutdown::shutdown_signal;
use crate::telemetry::MetricsArgs;

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    key: IdentityKeyArgs,
    #[command(flatten)]
    authentication: AuthenticationArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// Messages queued per live stream (WatchReadings, WatchEvents); beyond it a slow
    /// subscriber's messages are dropped and counted, and it is told how many it missed.
    #[arg(long, env = "CHAMBERLAIN_WATCH_BUFFER", default_value_t = WatchSettings::default().buffer, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    watch_buffer: usize,
    /// Seconds a live stream may stay behind (dropping messages) before it is disconnected.
    #[arg(long, env = "CHAMBERLAIN_WATCH_MAX_LAG_SECS", default_value_t = WatchSettings::default().max_lag.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    watch_max_lag_secs: u64,
    #[command(flatten)]
    listen: GatewayListenArg,
    #[command(flatten)]
    limits: GatewayLimitsArgs,
    /// Milliseconds a GetChamber answer is reused; writes through this gateway drop it at once,
    /// other gateways' answers may lag by up to this. 0 turns the cache off.
    #[arg(long, env = "CHAMBERLAIN_GATEWAY_CHAMBER_CACHE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    chamber_cache_ms: u64,
    /// Where the web console answers (plain HTTP/1.1; Envoy routes `/console` here).
    #[arg(
        long,
        env = "CHAMBERLAIN_GATEWAY_HTTP_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    http_listen: std::net::SocketAddr,
    /// Marks the console's session cookie `Secure`: set it when browsers reach Envoy over
    /// HTTPS.
    #[arg(long, env = "CHAMBERLAIN_CONSOLE_SECURE_COOKIES")]
    console_secure_cookies: bool,
    #[command(flatten)]
    installation_operators: crate::settings::InstallationOperatorsArgs,
}

pub async fn gateway(args: GatewayArgs, telemetry: &Telemetry) -> Result<(), anyhow::Error> {
    let key = args.key.key()?;
    let redis = args.redis.config()?;
    let storage = args.database.storage()?;
    args.metrics.serve(telemetry, 9463).await?;
    let repositories = storage.open().await?.repositories();
    let distributed = Distributed::new(redis);
    let settings = ApiSettings {
        watch: WatchSettings {
            buffer: args.watch_buffer,
            max_lag: Duration::from_secs(args.watch_max_lag_secs),
        },
        auth: args.authentication.settings(),
        ..ApiSettings::default()
    };
    let use_cases = distributed.use_cases(&repositories, settings).await?;
    // The console: its CSRF tokens are keyed by the identity key, so any gateway replica
    // accepts a form another one rendered; sign-in attempts are limited in Redis.
    let console = chamberlain_console::Console::new(
        use_cases.clone(),
        distributed.clock(),
        chamberlain_console::ConsoleSettings {
            csrf_key: args
                .key
                .identity_key
                .clone()
                .unwrap_or_default()
                .into_bytes(),
            secure_cookies: args.console_secure_cookies,
            sign_in_limit: Some((
                distributed.rate_limiter().await?,
                chamberlain_auth::DEFAULT_SIGN_IN_LIMIT,
            )),
            queue_board: Some(
                distributed
                    .queue_board(args.installation_operators.operators()?)
                    .await?,
            ),
        },
    );
    let http_listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .map_err(|e| {
            crate::settings::bad_setting(
                "--http-listen",
                "CHAMBERLAIN_GATEWAY_HTTP_LISTEN",
                format!("cannot bind {}: {e}", args.http_listen),
            )
        })?;
    tracing::info!(listen = %http_listener.local_addr()?, "console serving");
    let console = tokio::spawn(async move {
        console
            .serve(http_listener, axum::Router::new(), shutdown_signal())
            .await
    });
    let api = chamberlain_grpc::Api::new(
        use_cases,
        distributed.clock(),
        Duration::from_millis(args.chamber_cache_ms),
    );
    let listener = args.listen.bind().await?;
    tracing::info!(listen = %listener.local_addr()?, "gateway serving");
    chamberlain_gateway::serve(
        api,
        chamberlain_gateway::GatewayConfig {
            max_message_bytes: args.limits.max_message_bytes,
            request_timeout: args.limits.request_timeout(),
            identity_key: key,
            embedded_auth: None,
        },
        listener,
        shutdown_signal(),
    )
    .await?;
    let _ = console.await;
    tracing::info!("gateway stopped");
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    key: IdentityKeyArgs,
    #[command(flatten)]
    authentication: AuthenticationArgs,
    /// The Redis the gateways announce access changes through (and rate limits are kept in).
    #[command(flatten)]
    redis: RedisArgs,
    /// Address the ext_authz gRPC service listens on.
    #[arg(
        long,
        env = "CHAMBERLAIN_AUTH_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    rate_limits: RateLimitArgs,
}

pub async fn auth(args: AuthArgs, telemetry: &Telemetry) -> Result<(), anyhow::Error> {
    let key = args.key.key()?;
    let redis = args.redis.config()?;
    let storage = args.database.storage()?;
    args.metrics.serve(telemetry, 9464).await?;
    let repositories = storage.open().await?.repositories();
    let distributed = Distributed::new(redis);
    let clock = distributed.clock();
    let (limits, trusted_proxies) = args.rate_limits.limits()?;
    let check = chamberlain_auth::AuthCheck::new(
        Authenticator::new(
            &repositories,
            Arc::new(chamberlain_argon2::Argon2Hasher::default()),
            distributed.access_epoch().await?,
            clock.clone(),
            args.authentication.settings(),
        ),
        clock,
        chamberlain_auth::Limiters::new(
            distributed.rate_limiter().await?,
            Arc::new(chamberlain_memory::MemoryRateLimiter::default()),
        ),
        &chamberlain_auth::AuthServiceConfig {
            identity_key: key,
            limits,
            trusted_proxies,
        },
    );
    let listener = bind(args.listen, "CHAMBERLAIN_AUTH_LISTEN").await?;
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
#[allow(
    clippy::print_stdout,
    reason = "the token is shown once, to the operator"
)]
pub async fn bootstrap(args: BootstrapArgs) -> Result<(), anyhow::Error> {
    let repositories = args.database.storage()?.open().await?.repositories();
    let clock: Arc<dyn chamberlain_domain::ports::Clock> = Arc::new(SystemClock);
    let passwords = Arc::new(chamberlain_argon2::Argon2Hasher::default());
    // A one-shot command: nothing is cached anywhere that a new organization would change.
    let access = Arc::new(chamberlain_memory::MemoryAccessEpoch::default());
    let users = UserAdmin::new(
        &repositories,
        passwords.clone(),
        access.clone(),
        clock.clone(),
    );
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
                password: None,
            },
        )
        .await
        .map_err(|e| match e {
            // Bad input on the command line: exit 2, naming the field.
            UseCaseError::Invalid(_) => anyhow::Error::new(ConfigError(e.to_string())),
            // Already done once: not a bad setting, and the way on is another command.
            UseCaseError::Duplicate { .. } => anyhow::anyhow!(
                "{e}; bootstrap runs once. A lost admin token: `chamberlain admin-token --email \
                 <admin email>` prints a new one"
            ),
            other => anyhow::Error::new(other),
        })?;
    let actor = Actor {
        user_id: admin.id,
        organization_id: org.id,
        role: Role::Admin,
    };
    let issued = Authenticator::new(
        &repositories,
        passwords,
        access,
        clock,
        AuthSettings::default(),
    )
    .create_token(&actor, "bootstrap", None, None)
    .await?;
    println!("organization {} ({})", org.name.as_str(), org.id);
    println!("admin {} ({})", admin.email.as_str(), admin.id);
    println!("api token (shown once): {}", issued.secret.expose());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct AdminTokenArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Email of an admin of the organization.
    #[arg(long)]
    email: String,
    /// The organization (its name or id), when the address has accounts in several.
    #[arg(long)]
    organization: Option<String>,
    /// The token's name (shown by `chamberlain tokens list`).
    #[arg(long, default_value = "admin-token")]
    name: String,
}

/// Prints a new API token for an existing admin (once): the way back in when every admin token
/// is lost. It needs the database, so only whoever runs the installation can use it.
#[allow(
    clippy::print_stdout,
    reason = "the token is shown once, to the operator"
)]
pub async fn admin_token(args: AdminTokenArgs) -> Result<(), anyhow::Error> {
    let email = Email::parse(&args.email).map_err(|e| {
        anyhow::Error::new(ConfigError(format!("invalid setting --email: {}", e.rule)))
    })?;
    let repositories = args.database.storage()?.open().await?.repositories();
    let user = account_of(&repositories, &email, args.organization.as_deref()).await?;
    if user.role != Role::Admin || user.disabled {
        anyhow::bail!(
            "{} is not an active admin (role {}); ask an admin, or name one",
            email.as_str(),
            user.role
        );
    }
    let actor = Actor {
        user_id: user.id,
        organization_id: user.organization_id,
        role: Role::Admin,
    };
    let clock: Arc<dyn chamberlain_domain::ports::Clock> = Arc::new(SystemClock);
    let issued = Authenticator::new(
        &repositories,
        Arc::new(chamberlain_argon2::Argon2Hasher::default()),
        // Creating a token changes nobody's access.
        Arc::new(chamberlain_memory::MemoryAccessEpoch::default()),
        clock,
        AuthSettings::default(),
    )
    .create_token(&actor, &args.name, None, None)
    .await
    .map_err(|e| match e {
        UseCaseError::Invalid(v) => {
            anyhow::Error::new(ConfigError(format!("invalid setting --name: {}", v.rule)))
        }
        other => anyhow::Error::new(other),
    })?;
    println!("admin {} ({})", user.email.as_str(), user.id);
    println!("api token (shown once): {}", issued.secret.expose());
    Ok(())
}

/// The account `email` has in `organization` (a name or an id), or its only account.
async fn account_of(
    repositories: &chamberlain_domain::ports::Repositories,
    email: &Email,
    organization: Option<&str>,
) -> Result<chamberlain_domain::model::User, anyhow::Error> {
    let mut accounts = Vec::new();
    for user in repositories.users.find_by_email(email).await? {
        let org = repositories.organizations.get(user.organization_id).await?;
        let wanted = organization
            .is_none_or(|o| o.trim() == org.name.as_str() || o.trim() == org.id.to_string());
        if wanted {
            accounts.push((user, org));
        }
    }
    match accounts.len() {
        0 => match organization {
            Some(o) => anyhow::bail!("no user {} in organization {o}", email.as_str()),
            None => anyhow::bail!("no user {} in this installation", email.as_str()),
        },
        1 => Ok(accounts.remove(0).0),
        _ => Err(anyhow::Error::new(ConfigError(format!(
            "{} has an account in several organizations; choose one with --organization: {}",
            email.as_str(),
            accounts
                .iter()
                .map(|(_, org)| format!("{} ({})", org.name.as_str(), org.id))
                .collect::<Vec<_>>()
                .join(", ")
        )))),
    }
}

#[derive(Debug, clap::Args)]
pub struct DescriptorSetArgs {
    /// Where to write the API's descriptor set (imports included) for Envoy's JSON transcoder.
    #[arg(long, default_value = "chamberlain.pb")]
    out: PathBuf,
}

#[allow(clippy::print_stdout, reason = "the command reports what it wrote")]
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
