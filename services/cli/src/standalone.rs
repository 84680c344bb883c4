//! `chamberlain standalone`: the embedded default. One process, no servers to install: SQLite in
//! the data directory, the in-process queue and event bus, the scheduler, a worker, the alerter
//! and the gRPC API with the authentication decision in-process. `--simulate N` also serves N
//! simulated chambers and registers them, so a first run shows readings arriving.
//!
//! It restarts where it stopped: chambers, schedules and readings are in SQLite, and so is the
//! schedule watermark, so slots missed while stopped are recorded by the catch-up policy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::model::{Email, Organization, Role};
use chamberlain_domain::model::{PageRequest, PageSize};
use chamberlain_domain::ports::{ChamberFilter, Clock, PollQueue, UserRepository};
use chamberlain_domain::usecases::{
    Actor, AuthSettings, NewChamber, NewDetector, NewSection, NewUser, PollHandler, PollSettings,
    UserAdmin, WatchSettings,
};
use chamberlain_grpc::IdentityKey;
use chamberlain_sqlite::{SqliteConfig, SqliteStore};
use tokio::sync::watch;

use crate::api::{api_stores, authenticator, build_api};
use crate::telemetry::MetricsArgs;
use crate::{ConfigError, bad_setting, shutdown_signal};

/// The embedded mode's administrator, created on first start.
pub const ADMIN_EMAIL: &str = "admin@localhost";
/// The section the simulated chambers are registered in.
const SIMULATED_SECTION: &str = "simulated";

#[derive(Debug, clap::Args)]
pub struct StandaloneArgs {
    /// Where the embedded mode keeps its files (the SQLite database).
    #[arg(long, env = "CHAMBERLAIN_DATA_DIR", default_value = "chamberlain-data")]
    data_dir: PathBuf,
    /// The gRPC API's address (the `chamberlain` client commands talk to it).
    #[arg(
        long,
        env = "CHAMBERLAIN_GATEWAY_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    listen: SocketAddr,
    /// Also serve this many simulated chambers (8 detectors each, at 1 s) and register them
    /// once, in a section named "simulated".
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    simulate: Option<u32>,
    /// Where the simulated chambers answer (kept across restarts: the registered URLs use it).
    #[arg(
        long,
        env = "CHAMBERLAIN_SIMULATOR_LISTEN",
        default_value = "127.0.0.2:9800"
    )]
    simulate_listen: SocketAddr,
    /// CIDRs chambers may be polled in although private, loopback, link-local...
    /// (comma-separated); the simulator's address is added when simulating.
    #[arg(long, env = "CHAMBERLAIN_EGRESS_ALLOW", default_value = "")]
    egress_allow: String,
    /// Fetches in flight at once.
    #[arg(long, env = "CHAMBERLAIN_WORKER_CONCURRENCY", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// Leased polls held until their slot comes (the scheduler enqueues them ahead), beyond
    /// those being fetched.
    #[arg(long, env = "CHAMBERLAIN_WORKER_MAX_WAITING", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    max_waiting: u64,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// The organization and administrator of the embedded mode: created on the first start (and
/// a token printed once), found again afterwards.
async fn administrator(
    store: &Arc<SqliteStore>,
    clock: Arc<dyn Clock>,
) -> Result<Actor, anyhow::Error> {
    let email = Email::parse(ADMIN_EMAIL).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(user) = UserRepository::find_by_email(&**store, &email).await? {
        return Ok(Actor {
            user_id: user.id,
            organization_id: user.organization_id,
            role: Role::Admin,
        });
    }
    let users = UserAdmin {
        organizations: store.clone(),
        users: store.clone(),
        clock: clock.clone(),
    };
    let (org, admin): (Organization, _) = users
        .create_organization(
            "Lab",
            NewUser {
                email: ADMIN_EMAIL.into(),
                display_name: "Administrator".into(),
                role: "admin".into(),
                password_hash: None,
            },
        )
        .await?;
    let actor = Actor {
        user_id: admin.id,
        organization_id: org.id,
        role: Role::Admin,
    };
    let db = api_stores(store.clone());
    let issued = authenticator(&db, clock, AuthSettings::default())
        .create_token(&actor, "standalone admin", None, None)
        .await?;
    #[allow(
        clippy::print_stdout,
        reason = "shown once to the operator who started it"
    )]
    {
        println!("created organization \"Lab\" with administrator {ADMIN_EMAIL}");
        println!(
            "api token (shown once, keep it): {}",
            issued.secret.expose()
        );
    }
    Ok(actor)
}

/// Registers the simulated chambers that are not registered yet.
async fn register_simulated(
    api: &chamberlain_grpc::Api,
    actor: &Actor,
    sim: &chamberlain_simulator::SimulatorHandle,
    n: u32,
) -> Result<(), anyhow::Error> {
    let page = PageRequest::first(PageSize::new(1000).unwrap_or_default());
    let sections = api.admin.list_sections(actor, page).await?;
    let section = match sections
        .items
        .into_iter()
        .find(|s| s.name.as_str() == SIMULATED_SECTION)
    {
        Some(s) => s,
        None => {
            api.admin
                .create_section(
                    actor,
                    NewSection {
                        name: SIMULATED_SECTION.into(),
                        description: "chambers served by `chamberlain standalone --simulate`"
                            .into(),
                    },
                )
                .await?
        }
    };
    let mut existing = std::collections::HashSet::new();
    let mut page = PageRequest::first(PageSize::new(1000).unwrap_or_default());
    loop {
        let got = api
            .admin
            .list_chambers(
                actor,
                ChamberFilter {
                    section_id: Some(section.id),
                    state: None,
                },
                page.clone(),
            )
            .await?;
        existing.extend(got.items.into_iter().map(|c| c.name.as_str().to_owned()));
        match got.next {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    let mut added = 0;
    for i in 0..n {
        let name = format!("sim-{i:04}");
        if existing.contains(&name) {
            continue;
        }
        api.admin
            .create_chamber(
                actor,
                NewChamber {
                    section_id: section.id,
                    name,
                    url: sim.chamber_url(i, chamberlain_simulator::Format::Json),
                    format: "json".into(),
                    interval: Duration::from_secs(1),
                    timeout: None,
                    detectors: (0..8)
                        .map(|j| NewDetector {
                            name: format!("d{j}"),
                            key: format!("/detectors/{j}/value"),
                            ..Default::default()
                        })
                        .collect(),
                },
            )
            .await?;
        added += 1;
    }
    if added > 0 {
        tracing::info!(added, "simulated chambers registered");
    }
    Ok(())
}

pub async fn standalone(
    args: StandaloneArgs,
    telemetry: &chamberlain_telemetry::Telemetry,
) -> Result<(), anyhow::Error> {
    let mut egress = args.egress_allow.trim().to_owned();
    if args.simulate.is_some() {
        if !egress.is_empty() {
            egress.push(',');
        }
        egress.push_str(&format!("{}/32", args.simulate_listen.ip()));
    }
    let mut http = chamberlain_http::HttpClientConfig::default();
    if !egress.is_empty() {
        http = http
            .with_egress_allow(&egress)
            .map_err(|e| bad_setting("--egress-allow", "CHAMBERLAIN_EGRESS_ALLOW", &e))?;
    }
    args.metrics.serve(telemetry, 9460).await?;
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        anyhow::Error::new(ConfigError(format!(
            "invalid setting --data-dir (CHAMBERLAIN_DATA_DIR): cannot create {}: {e}",
            args.data_dir.display()
        )))
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            anyhow::Error::new(ConfigError(format!(
                "invalid setting --listen (CHAMBERLAIN_GATEWAY_LISTEN): cannot bind {}: {e}",
                args.listen
            )))
        })?;

    let path = args.data_dir.join("chamberlain.db");
    let store = Arc::new(SqliteStore::connect(&SqliteConfig::file(path.clone())).await?);
    store.migrate().await?;
    let clock: Arc<dyn Clock> = Arc::new(chamberlain_memory::SystemClock);
    let actor = administrator(&store, clock.clone()).await?;

    let db = api_stores(store.clone());
    let events = Arc::new(chamberlain_memory::MemoryEventBus::new(65_536));
    let changes = Arc::new(chamberlain_memory::MemoryChamberChanges::new(4096));
    let queue: Arc<dyn PollQueue> =
        Arc::new(chamberlain_memory::MemoryPollQueue::new(clock.clone()));
    let api = build_api(
        &db,
        changes.clone(),
        events.clone(),
        events.clone(),
        clock.clone(),
        WatchSettings::default(),
        Duration::from_secs(1),
        AuthSettings::default(),
    );
    // The in-process layer and the API share one authenticator, so revoking a token through
    // the API forgets its cached decision at once.
    let auth = Arc::new(api.auth.clone());

    let simulator = match args.simulate {
        Some(n) => {
            let config = chamberlain_simulator::SimulatorConfig::builder()
                .chambers(n)
                .detectors(8)
                .interval(Duration::from_secs(1))
                .bind(args.simulate_listen)
                .build()
                .map_err(|e| anyhow::Error::new(ConfigError(e.to_string())))?;
            let sim = chamberlain_simulator::Simulator::start(config)
                .await
                .map_err(|e| {
                    anyhow::Error::new(ConfigError(format!(
                        "invalid setting --simulate-listen (CHAMBERLAIN_SIMULATOR_LISTEN): {e}"
                    )))
                })?;
            register_simulated(&api, &actor, &sim, n).await?;
            Some(sim)
        }
        None => None,
    };

    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let mut scheduler_config =
        chamberlain_scheduler::SchedulerConfig::new(crate::holder_name("standalone"));
    scheduler_config.trace_polls = telemetry.tracing_exported();
    let scheduler = chamberlain_scheduler::Scheduler {
        chambers: store.clone(),
        ledger: store.clone(),
        health: store.clone(),
        queue: queue.clone(),
        lease: Arc::new(chamberlain_memory::MemoryLeaderLease::with_tokens_after(
            clock.clone(),
            store.checkpoint_token().await?,
        )),
        checkpoint: store.clone(),
        changes: changes.clone(),
        clock: clock.clone(),
        config: scheduler_config,
    };
    let scheduler = tokio::spawn(scheduler.run(until_stopped()));

    let worker = chamberlain_worker::Worker {
        handler: PollHandler {
            chambers: store.clone(),
            batches: store.clone(),
            readings: store.clone(),
            health: store.clone(),
            queue: queue.clone(),
            client: Arc::new(chamberlain_http::HttpChamberClient::new(&http)),
            events: events.clone(),
            clock: clock.clone(),
            settings: PollSettings::default(),
        },
        queue,
        config: chamberlain_worker::WorkerConfig {
            concurrency: usize::try_from(args.concurrency)
                .unwrap_or(chamberlain_worker::DEFAULT_CONCURRENCY),
            max_waiting: usize::try_from(args.max_waiting)
                .unwrap_or(chamberlain_worker::DEFAULT_MAX_WAITING),
            trace_polls: telemetry.tracing_exported(),
            ..chamberlain_worker::WorkerConfig::default()
        },
    };
    let worker = tokio::spawn(worker.run(until_stopped()));

    let alerter = chamberlain_alerter::Alerter {
        alerts: store.clone(),
        chambers: store.clone(),
        health: store.clone(),
        transmitters: store.clone(),
        feed: events.clone(),
        events: events.clone(),
        lease: Arc::new(chamberlain_memory::MemoryLeaderLease::new(clock.clone())),
        delivery: Arc::new(chamberlain_alerter::Destinations {
            webhook: Arc::new(chamberlain_http::WebhookClient::new(&http)),
            mqtt: Arc::new(chamberlain_mqtt::MqttClient::new(http.egress().clone())),
        }),
        clock: clock.clone(),
        config: chamberlain_alerter::AlerterConfig::new(crate::holder_name("standalone-alerter")),
    };
    let alerter = tokio::spawn(alerter.run(until_stopped()));

    // A random key: the identity never leaves this process.
    let key_bytes: Vec<u8> = (0..4)
        .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
        .collect();
    let identity_key = IdentityKey::new(key_bytes).map_err(|e| anyhow::anyhow!(e))?;
    let gateway = tokio::spawn(chamberlain_gateway::serve(
        api,
        chamberlain_gateway::GatewayConfig {
            max_message_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            identity_key,
            embedded_auth: Some(auth),
        },
        listener,
        until_stopped(),
    ));
    tracing::info!(
        api = %args.listen,
        data = %path.display(),
        simulated = args.simulate.unwrap_or(0),
        "chamberlain standalone running"
    );

    shutdown_signal().await;
    tracing::info!("stopping: draining polls in flight");
    let _ = stop.send(true);
    let _ = gateway.await;
    let report = worker.await.unwrap_or_default();
    let _ = scheduler.await;
    let _ = alerter.await;
    if let Some(sim) = simulator {
        drop(sim);
    }
    tracing::info!(?report, "chamberlain standalone stopped");
    Ok(())
}
