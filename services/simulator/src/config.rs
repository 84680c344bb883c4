//! What the simulated fleet looks like and how it misbehaves, validated before anything binds.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::ports::Clock;

use chamberlain_memory::SystemClock;

/// The most chambers one simulator serves.
pub const MAX_CHAMBERS: u32 = 100_000;
/// The most detectors per chamber.
pub const MAX_DETECTORS: u32 = 1_000;
/// The longest latency (base plus jitter, or a [`ChamberBehaviour::Delay`]).
pub const MAX_LATENCY: Duration = Duration::from_secs(600);
/// The largest [`ChamberBehaviour::Oversized`] body.
pub const MAX_OVERSIZED_BYTES: u64 = 1 << 30;
/// The longest expected interval between a chamber's slots.
pub const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The default bind address: 127.0.0.2 on any free port, so that tests can allowlist exactly
/// 127.0.0.2/32 and still prove that 127.0.0.1 is refused.
pub const DEFAULT_BIND: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 0));

/// A setting that cannot be used: names the setting and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {setting}: {rule}")]
pub struct ConfigError {
    /// The setting, as named by the builder method (`chambers`, `error_rate`,
    /// `behaviour[7]`, ...) or, from [`run_cli`](crate::run_cli), by the flag.
    pub setting: String,
    /// The rule the value broke.
    pub rule: String,
}

impl ConfigError {
    fn new(setting: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            rule: rule.into(),
        }
    }
}

/// How a corrupted response is corrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CorruptKind {
    /// A body that cannot be parsed at all: truncated JSON, or (for Prometheus text, whose
    /// parser accepts any UTF-8) bytes that are not UTF-8.
    Garbage,
    /// The [corrupted detector](crate::corrupted_detector)'s value is `"NaN"`.
    NaN,
    /// The [corrupted detector](crate::corrupted_detector) is left out of the body.
    MissingDetector,
}

impl CorruptKind {
    /// The kinds in the order a `corrupt_rate` cycles through them.
    pub const ALL: [Self; 3] = [Self::Garbage, Self::NaN, Self::MissingDetector];
}

/// What one chamber does instead of answering normally (per-chamber overrides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChamberBehaviour {
    /// Answers with its detector values, subject to the fleet's latency and error and
    /// corrupt rates.
    Normal,
    /// Never answers: the request is held until the simulator shuts down (then 503), so the
    /// poller's timeout fires.
    Hang,
    /// Always answers `500 Internal Server Error`.
    ServerError,
    /// Always answers with this corruption.
    Corrupt(CorruptKind),
    /// Answers a valid body padded to at least `bytes` bytes, streamed with chunked
    /// transfer encoding (no `Content-Length`), so a size cap must trip while reading.
    Oversized {
        /// The least size of the body.
        bytes: u64,
    },
    /// Answers normally after this delay (instead of the fleet's latency).
    Delay(Duration),
}

/// A validated simulator configuration. Build one with [`SimulatorConfig::builder`].
#[derive(Clone)]
pub struct SimulatorConfig {
    pub(crate) chambers: u32,
    pub(crate) detectors: u32,
    pub(crate) bind: SocketAddr,
    pub(crate) latency: Duration,
    pub(crate) jitter: Duration,
    pub(crate) error_rate: f64,
    pub(crate) corrupt_rate: f64,
    pub(crate) interval: Option<Duration>,
    pub(crate) chamber_intervals: BTreeMap<u32, Duration>,
    pub(crate) behaviours: BTreeMap<u32, ChamberBehaviour>,
    pub(crate) seed: u64,
    pub(crate) clock: Arc<dyn Clock>,
}

impl fmt::Debug for SimulatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatorConfig")
            .field("chambers", &self.chambers)
            .field("detectors", &self.detectors)
            .field("bind", &self.bind)
            .field("latency", &self.latency)
            .field("jitter", &self.jitter)
            .field("error_rate", &self.error_rate)
            .field("corrupt_rate", &self.corrupt_rate)
            .field("interval", &self.interval)
            .field("chamber_intervals", &self.chamber_intervals)
            .field("behaviours", &self.behaviours)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl Default for SimulatorConfig {
    /// 100 chambers of 4 detectors on [`DEFAULT_BIND`], no latency, no injected faults.
    fn default() -> Self {
        SimulatorConfigBuilder::default().unchecked()
    }
}

impl SimulatorConfig {
    /// A builder starting from the [defaults](SimulatorConfig::default).
    pub fn builder() -> SimulatorConfigBuilder {
        SimulatorConfigBuilder::default()
    }

    /// How many chambers: `/chambers/0` to `/chambers/{chambers - 1}`.
    pub fn chambers(&self) -> u32 {
        self.chambers
    }

    /// How many detectors each chamber has: `d0` to `d{detectors - 1}`.
    pub fn detectors(&self) -> u32 {
        self.detectors
    }

    /// Where the simulator listens (port 0: any free port).
    pub fn bind(&self) -> SocketAddr {
        self.bind
    }

    /// The fixed part of every normal answer's latency.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// The most extra latency, drawn uniformly from `0..=jitter` per request.
    pub fn jitter(&self) -> Duration {
        self.jitter
    }

    /// The fraction of requests answered `500`.
    pub fn error_rate(&self) -> f64 {
        self.error_rate
    }

    /// The fraction of the requests not answered `500` that get a corrupted body.
    pub fn corrupt_rate(&self) -> f64 {
        self.corrupt_rate
    }

    /// The interval expected between a chamber's slots, if known (for missed slots).
    pub fn interval(&self, chamber: u32) -> Option<Duration> {
        self.chamber_intervals
            .get(&chamber)
            .copied()
            .or(self.interval)
    }

    /// What the chamber does.
    pub fn behaviour(&self, chamber: u32) -> ChamberBehaviour {
        self.behaviours
            .get(&chamber)
            .copied()
            .unwrap_or(ChamberBehaviour::Normal)
    }

    /// The seed of the draws that decide errors, corruptions and jitter.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The wall clock that stamps arrivals (lateness is arrival minus slot).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

/// Builds a [`SimulatorConfig`]; [`build`](Self::build) validates every setting.
#[derive(Clone)]
pub struct SimulatorConfigBuilder {
    config: SimulatorConfig,
}

impl fmt::Debug for SimulatorConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SimulatorConfigBuilder")
            .field(&self.config)
            .finish()
    }
}

impl Default for SimulatorConfigBuilder {
    fn default() -> Self {
        Self {
            config: SimulatorConfig {
                chambers: 100,
                detectors: 4,
                bind: DEFAULT_BIND,
                latency: Duration::ZERO,
                jitter: Duration::ZERO,
                error_rate: 0.0,
                corrupt_rate: 0.0,
                interval: None,
                chamber_intervals: BTreeMap::new(),
                behaviours: BTreeMap::new(),
                seed: 0x5eed_c4a3_b3e1_a1d0,
                clock: Arc::new(SystemClock),
            },
        }
    }
}

impl SimulatorConfigBuilder {
    /// Number of chambers, 1 to [`MAX_CHAMBERS`] (default 100).
    pub fn chambers(mut self, chambers: u32) -> Self {
        self.config.chambers = chambers;
        self
    }

    /// Detectors per chamber, 1 to [`MAX_DETECTORS`] (default 4).
    pub fn detectors(mut self, detectors: u32) -> Self {
        self.config.detectors = detectors;
        self
    }

    /// Listen address (default [`DEFAULT_BIND`]).
    pub fn bind(mut self, bind: SocketAddr) -> Self {
        self.config.bind = bind;
        self
    }

    /// Latency of a normal answer: `base` plus a uniform draw from `0..=jitter`
    /// (default none); at most [`MAX_LATENCY`] together.
    pub fn latency(mut self, base: Duration, jitter: Duration) -> Self {
        self.config.latency = base;
        self.config.jitter = jitter;
        self
    }

    /// Fraction of requests answered `500`, 0.0 to 1.0 (default 0).
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.config.error_rate = rate;
        self
    }

    /// Fraction of the other requests answered with a corrupted body, 0.0 to 1.0 (default
    /// 0). Successive corruptions cycle through [`CorruptKind::ALL`].
    pub fn corrupt_rate(mut self, rate: f64) -> Self {
        self.config.corrupt_rate = rate;
        self
    }

    /// The interval expected between every chamber's slots, for counting missed slots
    /// (default unknown: no missed-slot count).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.config.interval = Some(interval);
        self
    }

    /// The interval expected between one chamber's slots, overriding
    /// [`interval`](Self::interval).
    pub fn chamber_interval(mut self, chamber: u32, interval: Duration) -> Self {
        self.config.chamber_intervals.insert(chamber, interval);
        self
    }

    /// What one chamber does instead of answering normally.
    pub fn behaviour(mut self, chamber: u32, behaviour: ChamberBehaviour) -> Self {
        if behaviour == ChamberBehaviour::Normal {
            self.config.behaviours.remove(&chamber);
        } else {
            self.config.behaviours.insert(chamber, behaviour);
        }
        self
    }

    /// Seed of the draws that decide errors, corruptions and jitter.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// The wall clock that stamps arrivals (default the system clock). Tests pass a manual
    /// clock to make lateness exact.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.config.clock = clock;
        self
    }

    /// The configuration, if every setting is valid.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting that breaks its rule.
    pub fn build(self) -> Result<SimulatorConfig, ConfigError> {
        let config = self.config;
        if !(1..=MAX_CHAMBERS).contains(&config.chambers) {
            return Err(ConfigError::new(
                "chambers",
                format!("must be between 1 and {MAX_CHAMBERS}"),
            ));
        }
        if !(1..=MAX_DETECTORS).contains(&config.detectors) {
            return Err(ConfigError::new(
                "detectors",
                format!("must be between 1 and {MAX_DETECTORS}"),
            ));
        }
        if config.latency > MAX_LATENCY {
            return Err(ConfigError::new(
                "latency",
                format!("must be at most {} s", MAX_LATENCY.as_secs()),
            ));
        }
        if config.latency.saturating_add(config.jitter) > MAX_LATENCY {
            return Err(ConfigError::new(
                "jitter",
                format!(
                    "latency plus jitter must be at most {} s",
                    MAX_LATENCY.as_secs()
                ),
            ));
        }
        check_rate("error_rate", config.error_rate)?;
        check_rate("corrupt_rate", config.corrupt_rate)?;
        if let Some(interval) = config.interval {
            check_interval("interval", interval)?;
        }
        for (&chamber, &interval) in &config.chamber_intervals {
            let setting = format!("chamber_interval[{chamber}]");
            check_chamber(&setting, chamber, config.chambers)?;
            check_interval(&setting, interval)?;
        }
        for (&chamber, &behaviour) in &config.behaviours {
            let setting = format!("behaviour[{chamber}]");
            check_chamber(&setting, chamber, config.chambers)?;
            match behaviour {
                ChamberBehaviour::Oversized { bytes } if bytes > MAX_OVERSIZED_BYTES => {
                    return Err(ConfigError::new(
                        setting,
                        format!("oversized body must be at most {MAX_OVERSIZED_BYTES} bytes"),
                    ));
                }
                ChamberBehaviour::Delay(delay) if delay > MAX_LATENCY => {
                    return Err(ConfigError::new(
                        setting,
                        format!("delay must be at most {} s", MAX_LATENCY.as_secs()),
                    ));
                }
                _ => {}
            }
        }
        Ok(config)
    }

    fn unchecked(self) -> SimulatorConfig {
        self.config
    }
}

fn check_rate(setting: &str, rate: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(ConfigError::new(setting, "must be between 0.0 and 1.0"))
    }
}

fn check_interval(setting: &str, interval: Duration) -> Result<(), ConfigError> {
    if interval < Duration::from_millis(1) || interval > MAX_INTERVAL {
        return Err(ConfigError::new(
            setting,
            format!(
                "must be between 1 ms and {} days",
                MAX_INTERVAL.as_secs() / 86_400
            ),
        ));
    }
    Ok(())
}

fn check_chamber(setting: &str, chamber: u32, chambers: u32) -> Result<(), ConfigError> {
    if chamber < chambers {
        Ok(())
    } else {
        Err(ConfigError::new(
            setting,
            format!("no chamber {chamber}: chambers are 0 to {}", chambers - 1),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting_of(builder: SimulatorConfigBuilder) -> String {
        builder.build().map(|_| ()).unwrap_err().setting
    }

    #[test]
    fn defaults_are_valid() {
        let config = SimulatorConfig::builder().build().unwrap();
        assert_eq!(config.chambers(), 100);
        assert_eq!(config.detectors(), 4);
        assert_eq!(config.bind(), "127.0.0.2:0".parse().unwrap());
        assert_eq!(config.behaviour(3), ChamberBehaviour::Normal);
        assert_eq!(config.interval(3), None);
    }

    #[test]
    fn errors_name_the_setting() {
        let b = SimulatorConfig::builder;
        assert_eq!(setting_of(b().chambers(0)), "chambers");
        assert_eq!(setting_of(b().chambers(MAX_CHAMBERS + 1)), "chambers");
        assert_eq!(setting_of(b().detectors(0)), "detectors");
        assert_eq!(setting_of(b().detectors(1001)), "detectors");
        assert_eq!(setting_of(b().error_rate(1.01)), "error_rate");
        assert_eq!(setting_of(b().error_rate(f64::NAN)), "error_rate");
        assert_eq!(setting_of(b().corrupt_rate(-0.1)), "corrupt_rate");
        assert_eq!(
            setting_of(b().latency(Duration::from_secs(601), Duration::ZERO)),
            "latency"
        );
        assert_eq!(
            setting_of(b().latency(Duration::from_secs(600), Duration::from_secs(1))),
            "jitter"
        );
        assert_eq!(setting_of(b().interval(Duration::ZERO)), "interval");
        assert_eq!(
            setting_of(b().chambers(5).behaviour(5, ChamberBehaviour::Hang)),
            "behaviour[5]"
        );
        assert_eq!(
            setting_of(b().behaviour(
                1,
                ChamberBehaviour::Oversized {
                    bytes: MAX_OVERSIZED_BYTES + 1
                }
            )),
            "behaviour[1]"
        );
        assert_eq!(
            setting_of(b().chambers(5).chamber_interval(9, Duration::from_secs(1))),
            "chamber_interval[9]"
        );
        let error = b().chambers(0).build().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid setting chambers: must be between 1 and 100000"
        );
    }

    #[test]
    fn limits_are_inclusive() {
        let config = SimulatorConfig::builder()
            .chambers(MAX_CHAMBERS)
            .detectors(MAX_DETECTORS)
            .error_rate(1.0)
            .corrupt_rate(0.0)
            .latency(Duration::from_secs(300), Duration::from_secs(300))
            .build()
            .unwrap();
        assert_eq!(config.chambers(), MAX_CHAMBERS);
    }

    #[test]
    fn chamber_settings_override_the_fleet() {
        let config = SimulatorConfig::builder()
            .chambers(4)
            .interval(Duration::from_secs(1))
            .chamber_interval(2, Duration::from_secs(5))
            .behaviour(1, ChamberBehaviour::ServerError)
            .behaviour(3, ChamberBehaviour::Hang)
            .behaviour(3, ChamberBehaviour::Normal)
            .build()
            .unwrap();
        assert_eq!(config.interval(0), Some(Duration::from_secs(1)));
        assert_eq!(config.interval(2), Some(Duration::from_secs(5)));
        assert_eq!(config.behaviour(1), ChamberBehaviour::ServerError);
        assert_eq!(config.behaviour(3), ChamberBehaviour::Normal);
    }
}
