//! The service commands of the `chamberlain` binary, each a short composition root: read its
//! settings (flags or `CHAMBERLAIN_*` variables, validated before any I/O), open the store,
//! build the ports of its mode, run until SIGTERM.

mod api;
mod pipeline;
mod standalone;

pub use api::{AdminTokenArgs, AuthArgs, BootstrapArgs, DescriptorSetArgs, GatewayArgs};
pub use pipeline::{AlerterArgs, SchedulerArgs, WorkerArgs};
pub use standalone::{ADMIN_EMAIL, StandaloneArgs};

use std::process::ExitCode;

use chamberlain_telemetry::Telemetry;

use crate::settings::ConfigError;
use crate::shutdown::shutdown_signal;
use crate::telemetry::LogFormatArg;

/// Every service command.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run everything in one process: SQLite in the data directory, the scheduler, a worker,
    /// the alerter and the gRPC API (the embedded default). `--simulate 20` also serves and
    /// registers 20 simulated chambers.
    Standalone(StandaloneArgs),
    /// Apply the database migrations, create the upcoming partitions, and convert readings
    /// stored in an earlier layout (in resumable chunks; idempotent).
    Migrate(pipeline::MigrateArgs),
    /// Serve a simulated chamber fleet on one address and report lateness, misses and
    /// duplicates of the polls it receives.
    Simulate(chamberlain_simulator::SimulateArgs),
    /// Turn due slots into poll jobs (one leader among any number of replicas).
    Scheduler(SchedulerArgs),
    /// Poll chambers: lease jobs, fetch, store readings and the ledger, acknowledge.
    Worker(WorkerArgs),
    /// Evaluate alert rules and forward readings and alerts to transmitters (one leader among
    /// any number of replicas).
    Alerter(AlerterArgs),
    /// Serve the gRPC API (behind Envoy, which asks `chamberlain auth` about every call).
    Gateway(GatewayArgs),
    /// Serve Envoy's external authorization (ext_authz v3) for the API.
    Auth(AuthArgs),
    /// Create an organization with its first admin and print an admin API token once.
    Bootstrap(BootstrapArgs),
    /// Print a new API token for an existing admin (needs the database): the way back in when
    /// the admin tokens are lost.
    AdminToken(AdminTokenArgs),
    /// Write the API's protobuf descriptor set, which Envoy's JSON transcoder loads.
    DescriptorSet(DescriptorSetArgs),
    /// Write Envoy's configuration for this deployment (listener, the gateway and auth
    /// replicas, the descriptor set, the collector), rendered from the built-in template.
    EnvoyConfig(crate::envoy::EnvoyConfigArgs),
}

impl Command {
    /// The service name its telemetry reports.
    fn service_name(&self) -> &'static str {
        match self {
            Self::Standalone(_) => "chamberlain-standalone",
            Self::Scheduler(_) => "chamberlain-scheduler",
            Self::Worker(_) => "chamberlain-worker",
            Self::Alerter(_) => "chamberlain-alerter",
            Self::Gateway(_) => "chamberlain-gateway",
            Self::Auth(_) => "chamberlain-auth",
            Self::Migrate(_)
            | Self::Simulate(_)
            | Self::Bootstrap(_)
            | Self::AdminToken(_)
            | Self::DescriptorSet(_)
            | Self::EnvoyConfig(_) => "chamberlain",
        }
    }
}

/// Runs a service command with its telemetry, and says how the process exits: 0 done, 2 a bad
/// setting (the message names it), 1 any other failure.
pub async fn run(command: Command, log_format: LogFormatArg) -> ExitCode {
    let result = async {
        let telemetry = crate::telemetry::init(command.service_name(), log_format)?;
        let result = dispatch(command, &telemetry).await;
        // Flushing may wait on an unreachable collector for a few seconds: off the runtime.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        result
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chamberlain: {e:#}");
            if e.is::<ConfigError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn dispatch(command: Command, telemetry: &Telemetry) -> Result<(), anyhow::Error> {
    match command {
        Command::Standalone(args) => standalone::standalone(args, telemetry).await,
        Command::Migrate(args) => pipeline::migrate(args).await,
        Command::Scheduler(args) => pipeline::scheduler(args, telemetry).await,
        Command::Worker(args) => pipeline::worker(args, telemetry).await,
        Command::Alerter(args) => pipeline::alerter(args, telemetry).await,
        Command::Gateway(args) => api::gateway(args, telemetry).await,
        Command::Auth(args) => api::auth(args, telemetry).await,
        Command::Bootstrap(args) => api::bootstrap(args).await,
        Command::AdminToken(args) => api::admin_token(args).await,
        Command::DescriptorSet(args) => api::descriptor_set(&args),
        Command::EnvoyConfig(args) => crate::envoy::envoy_config(&args),
        Command::Simulate(args) => chamberlain_simulator::run_cli(args, shutdown_signal())
            .await
            .map(|_report| ())
            .map_err(|e| match e {
                chamberlain_simulator::SimulatorError::Config(c) => {
                    anyhow::Error::new(ConfigError(c.to_string()))
                }
                other => anyhow::Error::new(other),
            }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::{CommandFactory, Parser};

    use super::Command;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    /// What a setting is, wherever it appears: flag, help, default.
    type Definition = (Option<String>, String, Vec<String>);

    /// Every `CHAMBERLAIN_*` variable a service command reads has one definition: the same
    /// flag, help and default in every command that takes it (a setting declared twice drifts:
    /// before the settings were shared, `CHAMBERLAIN_EGRESS_ALLOW` had three help texts).
    #[test]
    fn every_setting_has_one_definition_across_the_commands() {
        let cli = Cli::command();
        let mut seen: BTreeMap<String, (String, Definition)> = BTreeMap::new();
        let mut shared = 0;
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                    continue;
                };
                let definition: Definition = (
                    arg.get_long().map(str::to_owned),
                    arg.get_help().map(ToString::to_string).unwrap_or_default(),
                    arg.get_default_values()
                        .iter()
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect(),
                );
                match seen.get(env) {
                    Some((first, earlier)) => {
                        // Two listeners share the flag `--listen` under different variables;
                        // a variable is one setting.
                        assert_eq!(
                            earlier,
                            &definition,
                            "{env} differs between `{first}` and `{}`",
                            sub.get_name()
                        );
                        shared += 1;
                    }
                    None => {
                        seen.insert(env.to_owned(), (sub.get_name().to_owned(), definition));
                    }
                }
            }
        }
        assert!(
            shared >= 20,
            "settings shared by several commands were checked ({shared})"
        );
        for env in [
            "CHAMBERLAIN_DATA_DIR",
            "CHAMBERLAIN_EGRESS_ALLOW",
            "CHAMBERLAIN_WORKER_CONCURRENCY",
            "CHAMBERLAIN_WORKER_MAX_WAITING",
            "CHAMBERLAIN_GATEWAY_LISTEN",
            "CHAMBERLAIN_GATEWAY_MAX_MESSAGE_BYTES",
        ] {
            assert!(seen.contains_key(env), "{env} is a setting");
        }
    }

    /// Defaults come from the services' own `Config`s and the domain's limits, not literals.
    #[test]
    fn defaults_are_the_services_own() {
        let cli = Cli::try_parse_from(["chamberlain", "worker"]).unwrap();
        let Command::Worker(args) = cli.command else {
            panic!("a worker command")
        };
        let debug = format!("{args:?}");
        let config = chamberlain_worker::WorkerConfig::default();
        for expected in [
            format!("concurrency: {}", config.concurrency),
            format!("max_waiting: {}", config.max_waiting),
            format!("visibility_secs: {}", config.visibility.as_secs()),
            format!(
                "body_cap: {}",
                chamberlain_domain::limits::DEFAULT_RESPONSE_BODY_CAP
            ),
        ] {
            assert!(debug.contains(&expected), "{expected} in {debug}");
        }
    }
}
