//! `chamberlain standalone`: the embedded default. One process, no servers to install: SQLite in
//! the data directory, the in-process queue and event bus, the scheduler, a worker, the alerter
//! and the gRPC API with the authentication decision in-process. `--simulate N` also serves N
//! simulated chambers and registers them, so a first run shows readings arriving.
//!
//! It restarts where it stopped: chambers, schedules and readings are in SQLite, and so is the
//! schedule watermark, so slots missed while stopped are recorded by the catch-up policy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::model::{Email, PageRequest, PageSize, Role, every_page};
use chamberlain_domain::ports::ChamberFilter;
use chamberlain_domain::usecases::{
    Actor, ApiSettings, ApiUseCases, ChamberAdmin, NewChamber, NewDetector, NewSection, NewUser,
};
use chamberlain_grpc::IdentityKey;
use chamberlain_sqlite::{SqliteConfig, SqliteStore};
use chamberlain_telemetry::Telemetry;
use chamberlain_transcoder::Transcoder;
use chamberlain_worker::WorkerConfig;
use tokio::sync::watch;

use crate::chamber_client;
use crate::embedded::Embedded;
use crate::settings::{
    ConfigError, DataDirArg, EgressArgs, GatewayLimitsArgs, GatewayListenArg, WorkerLimitsArgs,
    bad_setting,
};
use crate::shutdown::{holder_name, shutdown_signal};
use crate::telemetry::MetricsArgs;

/// The embedded mode's administrator, created on first start.
pub const ADMIN_EMAIL: &str = "admin@localhost";
/// The section the simulated chambers are registered in.
const SIMULATED_SECTION: &str = "simulated";

#[derive(Debug, clap::Args)]
pub struct StandaloneArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    #[command(flatten)]
    listen: GatewayListenArg,
    /// Where the web console and the JSON API answer: open http://<this address>/console/ in a
    /// browser; the JSON routes (docs/API.md) are those Envoy serves in the distributed mode.
    #[arg(
        long,
        env = "CHAMBERLAIN_HTTP_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    http_listen: SocketAddr,
    /// Also serve this many simulated chambers (8 detectors each, at 1 s) and register them
    /// once, in a section named "simulated" (the simulator's address is added to the egress
    /// allowlist).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    simulate: Option<u32>,
    /// Where the simulated chambers answer (kept across restarts: the registered URLs use it).
    #[arg(
        long,
        env = "CHAMBERLAIN_SIMULATOR_LISTEN",
        default_value = "127.0.0.2:9800"
    )]
    simulate_listen: SocketAddr,
    #[command(flatten)]
    egress: EgressArgs,
    #[command(flatten)]
    limits: WorkerLimitsArgs,
    #[command(flatten)]
    gateway_limits: GatewayLimitsArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// The organization and administrator of the embedded mode: created on the first start (and
/// a token printed once), found again afterwards.
async fn administrator(
    embedded: &Embedded,
    use_cases: &ApiUseCases,
) -> Result<Actor, anyhow::Error> {
    let email = Email::parse(ADMIN_EMAIL).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The account the first start created: the oldest with this address.
    let accounts = embedded.repositories().users.find_by_email(&email).await?;
    if let Some(user) = accounts.into_iter().min_by_key(|u| u.created_at) {
        return Ok(Actor {
            user_id: user.id,
            organization_id: user.organization_id,
            role: Role::Admin,
        });
    }
    // A password for the console, shown once with the token.
    let password: String = uuid::Uuid::new_v4().simple().to_string()[..20].to_owned();
    let (org, admin) = use_cases
        .users
        .create_organization(
            "Lab",
            NewUser {
                email: ADMIN_EMAIL.into(),
                display_name: "Administrator".into(),
                role: "admin".into(),
                password: Some(password.clone()),
            },
        )
        .await?;
    let actor = Actor {
        user_id: admin.id,
        organization_id: org.id,
        role: Role::Admin,
    };
    let issued = use_cases
        .auth
        .create_token(&actor, "standalone admin", None, None)
        .await?;
    #[allow(
        clippy::print_stdout,
        reason = "shown once to the operator who started it"
    )]
    {
        println!("created organization \"Lab\" with administrator {ADMIN_EMAIL}");
        println!("console sign-in (shown once, keep it): {ADMIN_EMAIL} / {password}");
        println!(
            "api token (shown once, keep it): {}",
            issued.secret.expose()
        );
    }
    Ok(actor)
}

/// Registers the simulated chambers that are not registered yet.
async fn register_simulated(
    admin: &ChamberAdmin,
    actor: &Actor,
    sim: &chamberlain_simulator::SimulatorHandle,
    n: u32,
) -> Result<(), anyhow::Error> {
    let page = PageRequest::first(PageSize::new(1000).unwrap_or_default());
    let sections = admin.list_sections(actor, page).await?;
    let section = match sections
        .items
        .into_iter()
        .find(|s| s.name.as_str() == SIMULATED_SECTION)
    {
        Some(s) => s,
        None => {
            admin
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
    let in_section = ChamberFilter {
        section_id: Some(section.id),
        state: None,
        ..ChamberFilter::default()
    };
    let size = PageSize::new(1000).unwrap_or_default();
    let existing: std::collections::HashSet<String> = every_page(size, |page| {
        admin.list_chambers(actor, in_section.clone(), page)
    })
    .await?
    .into_iter()
    .map(|c| c.name.as_str().to_owned())
    .collect();
    let mut added = 0;
    for i in 0..n {
        let name = format!("sim-{i:04}");
        if existing.contains(&name) {
            continue;
        }
        admin
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

pub async fn standalone(args: StandaloneArgs, telemetry: &Telemetry) -> Result<(), anyhow::Error> {
    let simulator_net = match args.simulate {
        Some(_) => vec![format!("{}/32", args.simulate_listen.ip())],
        None => Vec::new(),
    };
    let http = chamber_client(&args.egress, &simulator_net)?;
    args.metrics.serve(telemetry, 9460).await?;
    args.data_dir.create()?;
    let listener = args.listen.bind().await?;
    let grpc_address = listener.local_addr()?;
    let http_listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .map_err(|e| {
            bad_setting(
                "--http-listen",
                "CHAMBERLAIN_HTTP_LISTEN",
                format!("cannot bind {}: {e}", args.http_listen),
            )
        })?;
    let http_address = http_listener.local_addr()?;

    let path = args.data_dir.database_file();
    let store = Arc::new(SqliteStore::connect(&SqliteConfig::file(path.clone())).await?);
    let legacy = store.has_legacy_layout().await?;
    let embedded = Embedded::new(store.clone());
    let use_cases = embedded.use_cases(ApiSettings::default());
    let actor = administrator(&embedded, &use_cases).await?;
    // The in-process layer and the API share one authenticator, so revoking a token through
    // the API forgets its cached decision at once.
    let auth = Arc::new(use_cases.auth.clone());

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
                .map_err(|e| bad_setting("--simulate-listen", "CHAMBERLAIN_SIMULATOR_LISTEN", e))?;
            register_simulated(&use_cases.admin, &actor, &sim, n).await?;
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
        chamberlain_scheduler::SchedulerConfig::new(holder_name("standalone"));
    scheduler_config.trace_polls = telemetry.tracing_exported();
    let scheduler = tokio::spawn(
        embedded
            .scheduler(scheduler_config)
            .await?
            .run(until_stopped()),
    );

    let worker_config = args.limits.apply(WorkerConfig {
        trace_polls: telemetry.tracing_exported(),
        ..WorkerConfig::default()
    });
    let worker = tokio::spawn(
        embedded
            .worker(&http, worker_config)
            .await
            .run(until_stopped()),
    );

    let alerter = embedded.alerter(
        &http,
        chamberlain_alerter::AlerterConfig::new(holder_name("standalone-alerter")),
    );
    let alerter = tokio::spawn(alerter.run(until_stopped()));
    let conversion = legacy.then(|| tokio::spawn(convert_in_background(store, stop.subscribe())));

    // A random key: the identity never leaves this process.
    let key_bytes: Vec<u8> = (0..4)
        .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
        .collect();
    let identity_key = IdentityKey::new(key_bytes).map_err(|e| anyhow::anyhow!(e))?;
    let console = chamberlain_console::Console::new(
        use_cases.clone(),
        embedded.clock(),
        chamberlain_console::ConsoleSettings {
            // Per process: a form left open across a restart asks to be reloaded.
            csrf_key: (0..2)
                .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
                .collect(),
            secure_cookies: false,
            sign_in_limit: Some((
                Arc::new(chamberlain_memory::MemoryRateLimiter::default()),
                chamberlain_auth::DEFAULT_SIGN_IN_LIMIT,
            )),
            // The installation's operator is its first admin.
            queue_board: Some(embedded.queue_board([actor.user_id].into_iter().collect())),
        },
    );
    // The JSON API beside the console: each call transcoded to a gRPC call on this process's
    // own gRPC address, as Envoy does in the distributed mode.
    let json_api = Transcoder::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", loopback(grpc_address)))?
            .connect_lazy(),
    )?;
    let console = {
        let shutdown = until_stopped();
        let beside = json_api.router();
        tokio::spawn(async move { console.serve(http_listener, beside, shutdown).await })
    };
    let api = chamberlain_grpc::Api::new(use_cases, embedded.clock(), Duration::from_secs(1));
    let gateway = tokio::spawn(chamberlain_gateway::serve(
        api,
        chamberlain_gateway::GatewayConfig {
            max_message_bytes: args.gateway_limits.max_message_bytes,
            request_timeout: args.gateway_limits.request_timeout(),
            identity_key,
            embedded_auth: Some(auth),
        },
        listener,
        until_stopped(),
    ));
    #[allow(
        clippy::print_stdout,
        reason = "where to point a browser, on every start"
    )]
    {
        println!("console: http://{http_address}/console/");
    }
    tracing::info!(
        api = %args.listen.listen,
        console = %http_address,
        data = %path.display(),
        simulated = args.simulate.unwrap_or(0),
        "chamberlain standalone running"
    );

    shutdown_signal().await;
    tracing::info!("stopping: draining polls in flight");
    let _ = stop.send(true);
    let _ = gateway.await;
    let _ = console.await;
    let report = worker.await.unwrap_or_default();
    let _ = scheduler.await;
    let _ = alerter.await;
    if let Some(conversion) = conversion {
        let _ = conversion.await;
    }
    if let Some(sim) = simulator {
        drop(sim);
    }
    tracing::info!(?report, "chamberlain standalone stopped");
    Ok(())
}

/// Converts readings of the previous layout while the embedded mode runs, a chunk of one
/// chamber's polls per turn of the store's writer (live writes take their turns between
/// chunks), logging progress; a failed chunk (a busy database) is tried again after
/// [`CONVERSION_RETRY`]. Stops between chunks when the process stops, and goes on at the next
/// start.
async fn convert_in_background(store: Arc<SqliteStore>, mut stopped: watch::Receiver<bool>) {
    tracing::info!("converting readings of the previous layout in the background");
    let started = std::time::Instant::now();
    let mut logged = started;
    loop {
        let result = store
            .convert_legacy(
                chamberlain_sqlite::DEFAULT_CHUNK_POLLS,
                |p| {
                    if logged.elapsed() >= Duration::from_secs(30) {
                        logged = std::time::Instant::now();
                        tracing::info!(
                            moved = p.polls_moved,
                            of = p.polls_estimated,
                            "converting readings of the previous layout"
                        );
                    }
                },
                || *stopped.borrow(),
            )
            .await;
        match result {
            Ok(done) if done.finished => {
                tracing::info!(
                    polls = done.polls_moved,
                    readings = done.readings_moved,
                    orphan_readings = done.orphan_readings,
                    seconds = started.elapsed().as_secs(),
                    "readings of the previous layout converted"
                );
                return;
            }
            Ok(done) => {
                tracing::info!(
                    polls = done.polls_moved,
                    "conversion stopped; it goes on at the next start"
                );
                return;
            }
            Err(e) => tracing::warn!(
                error = %e,
                retry_in_s = CONVERSION_RETRY.as_secs(),
                "converting readings of the previous layout failed; trying again"
            ),
        }
        if tokio::time::timeout(CONVERSION_RETRY, stopped.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// How long the background conversion waits after a failed chunk.
const CONVERSION_RETRY: Duration = Duration::from_secs(30);

/// The address to dial for a listener: an unspecified IP (`0.0.0.0`, `::`) becomes loopback.
fn loopback(address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        let ip = match address {
            SocketAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, address.port())
    } else {
        address
    }
}
