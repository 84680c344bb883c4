//! `chamberlain simulate`: the command-line face of the simulator.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use crate::body::Format;
use crate::config::{ConfigError, DEFAULT_BIND, SimulatorConfig};
use crate::report::SimulatorReport;
use crate::server::{Simulator, SimulatorError};

/// Flags of `chamberlain simulate`, each with a `CHAMBERLAIN_SIMULATE_*` environment variable.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct SimulateArgs {
    /// Number of chambers, served at /chambers/0 to /chambers/{N-1} (1 to 100000).
    #[arg(long, env = "CHAMBERLAIN_SIMULATE_CHAMBERS", default_value_t = 100)]
    pub chambers: u32,
    /// Detectors per chamber, d0 to d{M-1} (1 to 1000).
    #[arg(long, env = "CHAMBERLAIN_SIMULATE_DETECTORS", default_value_t = 4)]
    pub detectors: u32,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "CHAMBERLAIN_SIMULATE_BIND", default_value_t = DEFAULT_BIND)]
    pub bind: SocketAddr,
    /// Fixed latency of every answer, ms.
    #[arg(long, env = "CHAMBERLAIN_SIMULATE_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Extra latency drawn uniformly from 0 to this, ms.
    #[arg(long, env = "CHAMBERLAIN_SIMULATE_JITTER_MS", default_value_t = 0)]
    pub jitter_ms: u64,
    /// Fraction of requests answered 500 (0.0 to 1.0).
    #[arg(long, env = "CHAMBERLAIN_SIMULATE_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Fraction of the other requests answered with a corrupted body (0.0 to 1.0): garbage,
    /// a "NaN" value and a missing detector in turn.
    #[arg(long, env = "CHAMBERLAIN_SIMULATE_CORRUPT_RATE", default_value_t = 0.0)]
    pub corrupt_rate: f64,
    /// Interval at which every chamber is expected to be polled, ms; enables the missed-slot
    /// count.
    #[arg(long, env = "CHAMBERLAIN_SIMULATE_INTERVAL_MS")]
    pub interval_ms: Option<u64>,
    /// How long to run (for example 90s, 5m, 1h, 500ms; a bare number is seconds); until
    /// Ctrl-C if not given.
    #[arg(long, env = "CHAMBERLAIN_SIMULATE_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Seed of the draws that pick which requests fail and the jitter.
    #[arg(long, env = "CHAMBERLAIN_SIMULATE_SEED")]
    pub seed: Option<u64>,
}

impl SimulateArgs {
    /// The validated configuration these flags describe.
    ///
    /// # Errors
    /// [`ConfigError`] whose `setting` names the flag and its environment variable.
    pub fn config(&self) -> Result<SimulatorConfig, ConfigError> {
        let mut builder = SimulatorConfig::builder()
            .chambers(self.chambers)
            .detectors(self.detectors)
            .bind(self.bind)
            .latency(
                Duration::from_millis(self.latency_ms),
                Duration::from_millis(self.jitter_ms),
            )
            .error_rate(self.error_rate)
            .corrupt_rate(self.corrupt_rate);
        if let Some(interval) = self.interval_ms {
            builder = builder.interval(Duration::from_millis(interval));
        }
        if let Some(seed) = self.seed {
            builder = builder.seed(seed);
        }
        builder.build().map_err(|mut error| {
            if let Some(flag) = flag_of(&error.setting) {
                error.setting = flag.to_owned();
            }
            error
        })
    }
}

/// The flag and environment variable of a [`SimulatorConfig`] setting.
fn flag_of(setting: &str) -> Option<&'static str> {
    Some(match setting {
        "chambers" => "--chambers (CHAMBERLAIN_SIMULATE_CHAMBERS)",
        "detectors" => "--detectors (CHAMBERLAIN_SIMULATE_DETECTORS)",
        "latency" => "--latency-ms (CHAMBERLAIN_SIMULATE_LATENCY_MS)",
        "jitter" => "--jitter-ms (CHAMBERLAIN_SIMULATE_JITTER_MS)",
        "error_rate" => "--error-rate (CHAMBERLAIN_SIMULATE_ERROR_RATE)",
        "corrupt_rate" => "--corrupt-rate (CHAMBERLAIN_SIMULATE_CORRUPT_RATE)",
        "interval" => "--interval-ms (CHAMBERLAIN_SIMULATE_INTERVAL_MS)",
        _ => return None,
    })
}

/// `90s`, `5m`, `1h`, `500ms`, `1.5s`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 90s, 5m or 500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown unit '{other}': use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is out of range"))
}

/// Runs `chamberlain simulate`: starts the fleet, prints where it listens and its URL
/// patterns on stdout, serves until `shutdown` resolves (Ctrl-C) or `--duration` passes,
/// then prints the report and returns it.
///
/// # Errors
/// [`SimulatorError::Config`] naming the flag of an invalid setting, before anything binds;
/// [`SimulatorError::Bind`] if the address cannot be listened on.
pub async fn run_cli(
    args: SimulateArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<SimulatorReport, SimulatorError> {
    run_cli_with_output(args, shutdown, &mut std::io::stdout()).await
}

/// [`run_cli`], printing to `out` instead of stdout. Failures to write are ignored.
///
/// # Errors
/// As [`run_cli`].
pub async fn run_cli_with_output(
    args: SimulateArgs,
    shutdown: impl Future<Output = ()>,
    out: &mut impl Write,
) -> Result<SimulatorReport, SimulatorError> {
    let config = args.config()?;
    let handle = Simulator::start(config).await?;
    let addr = handle.addr();
    let json = handle.url_pattern(Format::Json);
    let prometheus = handle.url_pattern(Format::Prometheus);
    let report = handle.report_url();
    let _ = writeln!(
        out,
        "simulator listening on {addr}: {} chambers (0 to {}) x {} detectors (d0 to d{})\n  \
         JSON        {json}  value of detector j at /detectors/{{j}}/value\n  \
         Prometheus  {prometheus}  value of detector j at \
         chamber_detector_value{{detector=\"d{{j}}\"}}\n  \
         report      {report}\n  \
         headers     chamberlain-slot: <unix ms>, chamberlain-attempt: <n>",
        args.chambers,
        args.chambers.saturating_sub(1),
        args.detectors,
        args.detectors.saturating_sub(1),
    );
    match args.duration {
        Some(duration) => {
            let _ = writeln!(
                out,
                "running for {:.1} s (or until interrupted)",
                duration.as_secs_f64()
            );
        }
        None => {
            let _ = writeln!(out, "running until interrupted (Ctrl-C)");
        }
    }
    let _ = out.flush();
    let deadline = async {
        match args.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = deadline => {}
    }
    let report = handle.shutdown().await;
    let _ = write!(out, "{report}");
    let _ = out.flush();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn args(flags: &[&str]) -> SimulateArgs {
        Cli::try_parse_from(std::iter::once("simulate").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn defaults_and_flags() {
        let defaults = args(&[]);
        assert_eq!(defaults.chambers, 100);
        assert_eq!(defaults.bind, DEFAULT_BIND);
        assert_eq!(defaults.duration, None);
        let config = args(&[
            "--chambers",
            "10000",
            "--detectors=2",
            "--error-rate",
            "0.1",
            "--interval-ms",
            "1000",
            "--duration",
            "2m",
        ])
        .config()
        .unwrap();
        assert_eq!(config.chambers(), 10_000);
        assert_eq!(config.interval(5), Some(Duration::from_secs(1)));
    }

    #[test]
    fn invalid_settings_name_the_flag() {
        let error = args(&["--chambers", "0"]).config().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid setting --chambers (CHAMBERLAIN_SIMULATE_CHAMBERS): must be between 1 and 100000"
        );
        let error = args(&["--corrupt-rate", "2"]).config().unwrap_err();
        assert_eq!(
            error.setting,
            "--corrupt-rate (CHAMBERLAIN_SIMULATE_CORRUPT_RATE)"
        );
        let error = args(&["--interval-ms", "0"]).config().unwrap_err();
        assert_eq!(
            error.setting,
            "--interval-ms (CHAMBERLAIN_SIMULATE_INTERVAL_MS)"
        );
    }
}
