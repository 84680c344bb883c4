//! `chamberlain alerter`: evaluates alert rules and forwards readings and alerts to the
//! organizations' transmitters (one leader among any number of replicas).

use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::ports::Clock;
use chamberlain_domain::transmit::RetryPolicy;

use crate::api::open;
use crate::{DatabaseArgs, RedisArgs, bad_setting, holder_name, shutdown_signal};

#[derive(Debug, clap::Args)]
pub struct AlerterArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// CIDRs webhooks and MQTT brokers may be reached in although private, loopback,
    /// link-local... (comma-separated, as for the worker).
    #[arg(long, env = "CHAMBERLAIN_EGRESS_ALLOW", default_value = "")]
    egress_allow: String,
    /// Seconds between reloads of alert rules and transmitters (API changes take effect
    /// within this).
    #[arg(long, env = "CHAMBERLAIN_ALERTER_RELOAD_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    reload_secs: u64,
    /// Tries per delivery before it is dead-lettered.
    #[arg(long, env = "CHAMBERLAIN_TRANSMIT_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    attempts: u32,
    /// Milliseconds before the second try; each further wait doubles, up to the cap.
    #[arg(long, env = "CHAMBERLAIN_TRANSMIT_BACKOFF_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    backoff_ms: u64,
    /// The longest wait between tries, in milliseconds.
    #[arg(long, env = "CHAMBERLAIN_TRANSMIT_MAX_BACKOFF_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    max_backoff_ms: u64,
    #[command(flatten)]
    metrics: crate::telemetry::MetricsArgs,
    /// Deliveries queued per transmitter before new ones are dropped.
    #[arg(long, env = "CHAMBERLAIN_TRANSMIT_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    queue: u64,
}

pub async fn alerter(
    args: AlerterArgs,
    telemetry: &chamberlain_telemetry::Telemetry,
) -> Result<(), anyhow::Error> {
    let redis = args.redis.config()?;
    let retry = RetryPolicy::new(
        args.attempts,
        Duration::from_millis(args.backoff_ms),
        Duration::from_millis(args.max_backoff_ms),
    )
    .map_err(|e| bad_setting("--backoff-ms", "CHAMBERLAIN_TRANSMIT_BACKOFF_MS", &e))?;
    let mut http = chamberlain_http::HttpClientConfig::default();
    if !args.egress_allow.trim().is_empty() {
        http = http
            .with_egress_allow(&args.egress_allow)
            .map_err(|e| bad_setting("--egress-allow", "CHAMBERLAIN_EGRESS_ALLOW", &e))?;
    }
    args.metrics.serve(telemetry, 9465).await?;
    let db = open(&args.database).await?;
    let clock: Arc<dyn Clock> = Arc::new(chamberlain_memory::SystemClock);
    let bus = Arc::new(chamberlain_redis::RedisEventBus::connect(&redis, 65_536).await?);
    let mut config = chamberlain_alerter::AlerterConfig::new(holder_name("alerter"));
    config.reload_every = Duration::from_secs(args.reload_secs);
    config.forward = chamberlain_alerter::ForwardSettings {
        retry,
        lane_capacity: usize::try_from(args.queue).unwrap_or(1024),
    };
    let alerter = chamberlain_alerter::Alerter {
        alerts: db.alerts.clone(),
        chambers: db.chambers.clone(),
        health: db.health.clone(),
        transmitters: db.transmitters.clone(),
        feed: bus.clone(),
        events: bus,
        lease: Arc::new(
            chamberlain_redis::RedisLeaderLease::connect_named(&redis, clock.clone(), "alerter")
                .await?,
        ),
        delivery: Arc::new(chamberlain_alerter::Destinations {
            webhook: Arc::new(chamberlain_http::WebhookClient::new(&http)),
            mqtt: Arc::new(chamberlain_mqtt::MqttClient::new(http.egress().clone())),
        }),
        clock,
        config,
    };
    tracing::info!(holder = %alerter.config.holder, "alerter starting");
    alerter.run(shutdown_signal()).await;
    tracing::info!("alerter stopped");
    Ok(())
}
