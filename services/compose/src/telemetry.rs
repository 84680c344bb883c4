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
    /// 9464, alerter 9465), or for a further replica on the host the first free of the next
    /// nine 10 apart (9472, 9482, ...); the address is logged.
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
        let listener = match self.metrics_listen.as_deref().map(str::trim) {
            Some("off") => return Ok(()),
            Some(raw) => {
                let addr: SocketAddr = raw.parse().map_err(|_| {
                    bad(format!("{raw:?} is not an address such as 127.0.0.1:9462"))
                })?;
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| bad(format!("cannot bind {addr}: {e}")))?
            }
            None => default_listener(default_port).await.map_err(bad)?,
        };
        tracing::info!(listen = %listener.local_addr()?, "metrics at /metrics");
        tokio::spawn(chamberlain_telemetry::serve_metrics(
            listener,
            telemetry.prometheus(),
            // The port is let go as soon as the service stops taking work, so a replacement
            // started at once gets it while this process still drains.
            crate::shutdown::shutdown_signal(),
        ));
        Ok(())
    }
}

/// Replicas of one role on one host (two workers, say) each serve `/metrics` without a setting
/// of their own: the role's port, else the first free one of the next nine, 10 apart (9462,
/// 9472, 9482, ... for workers), so they never take another role's default. The address is
/// logged (`metrics at /metrics listen=...`).
pub const REPLICA_PORT_STRIDE: u16 = 10;
const REPLICA_PORTS: u16 = 10;

async fn default_listener(port: u16) -> Result<tokio::net::TcpListener, String> {
    let mut last = None;
    for k in 0..REPLICA_PORTS {
        let Some(port) = port.checked_add(k * REPLICA_PORT_STRIDE) else {
            break;
        };
        match tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(format!("127.0.0.1:{port}: {e}")),
        }
    }
    Err(format!(
        "no free port among 127.0.0.1:{port} and the next {} replica ports ({}); set one",
        REPLICA_PORTS - 1,
        last.unwrap_or_default()
    ))
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

#[cfg(test)]
mod tests {
    use super::{REPLICA_PORT_STRIDE, default_listener};

    /// A second replica on the host does not stop: it takes a replica port, 10 apart.
    #[tokio::test]
    async fn a_taken_default_port_gives_the_next_replica_port() {
        let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        if port > u16::MAX - 9 * REPLICA_PORT_STRIDE {
            return; // no room above this ephemeral port for the replica ports
        }
        let second = default_listener(port).await.unwrap();
        let got = second.local_addr().unwrap().port();
        assert_ne!(got, port);
        assert_eq!((got - port) % REPLICA_PORT_STRIDE, 0, "{port} -> {got}");
    }
}
