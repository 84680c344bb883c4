//! Telemetry of the `chamberlain` processes: set up once at start, and the `/metrics` listener
//! every long-running service opens.

use std::net::SocketAddr;

use chamberlain_telemetry::{LogFormat, Telemetry, TelemetrySettings};

use crate::settings::{ConfigError, bad_setting};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    Human,
    Json,
}

/// The `/metrics` listener of a service.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Address of the Prometheus `/metrics` listener (`off` for none). Default: 127.0.0.1 and
    /// the service's own port (standalone 9460, scheduler 9461, worker 9462, gateway 9463, auth
    /// 9464, alerter 9465).
    #[arg(long = "metrics-listen", env = "CHAMBERLAIN_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

impl MetricsArgs {
    /// Binds the listener (before the service starts, so a taken port stops it at once) and
    /// serves `/metrics` from it in the background.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `CHAMBERLAIN_METRICS_LISTEN` when the address is not one or
    /// cannot be bound.
    pub async fn serve(
        &self,
        telemetry: &Telemetry,
        default_port: u16,
    ) -> Result<(), anyhow::Error> {
        let bad = |why: String| bad_setting("--metrics-listen", "CHAMBERLAIN_METRICS_LISTEN", why);
        let addr: SocketAddr = match self.metrics_listen.as_deref().map(str::trim) {
            Some("off") => return Ok(()),
            Some(raw) => raw
                .parse()
                .map_err(|_| bad(format!("{raw:?} is not an address such as 127.0.0.1:9462")))?,
            None => SocketAddr::from(([127, 0, 0, 1], default_port)),
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| bad(format!("cannot bind {addr}: {e}")))?;
        tracing::info!(listen = %listener.local_addr()?, "metrics at /metrics");
        tokio::spawn(chamberlain_telemetry::serve_metrics(
            listener,
            telemetry.prometheus(),
            std::future::pending(),
        ));
        Ok(())
    }
}

/// Sets up logs, traces and metrics for `service`.
///
/// # Errors
/// A [`ConfigError`] naming the bad `OTEL_*` setting.
pub fn init(service: &'static str, format: LogFormatArg) -> Result<Telemetry, anyhow::Error> {
    let mut settings = TelemetrySettings::new(service);
    settings.log_format = match format {
        LogFormatArg::Human => LogFormat::Human,
        LogFormatArg::Json => LogFormat::Json,
    };
    Telemetry::init(&settings).map_err(|e| anyhow::Error::new(ConfigError(e.to_string())))
}
