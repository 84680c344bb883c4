//! Chambers (the polled devices) and their detectors (the measured channels).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Rule, ValidationError};
use crate::limits::{
    DEFAULT_POLL_TIMEOUT, LOWEST_POLL_INTERVAL_FLOOR, MAX_POLL_INTERVAL, MAX_URL_CHARS,
    MIN_POLL_INTERVAL, MIN_POLL_TIMEOUT,
};
use crate::model::{ChamberId, DetectorId, HealthPolicy, Name, OrganizationId, SectionId, Unit};
use crate::parse::{JsonPointer, MetricSelector};
use crate::time::{Timestamp, human_duration};

/// Where a chamber answers: an absolute `http` or `https` URL with a host, no credentials and
/// no fragment, at most 2,048 characters. Whether the address may be reached is the egress
/// guard's decision at fetch time, not this type's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EndpointUrl(url::Url);

impl EndpointUrl {
    /// # Errors
    /// `url`: [`Rule::Required`], [`Rule::TooLong`] or [`Rule::Format`] naming what is wrong.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let s = raw.trim();
        let bad = |why: &str| ValidationError::new("url", Rule::Format(why.into()));
        if s.is_empty() {
            return Err(ValidationError::new("url", Rule::Required));
        }
        let chars = s.chars().count();
        if chars > MAX_URL_CHARS {
            return Err(ValidationError::new(
                "url",
                Rule::TooLong {
                    max: MAX_URL_CHARS,
                    actual: chars,
                },
            ));
        }
        let url = url::Url::parse(s).map_err(|e| bad(&format!("must be an absolute URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("scheme must be http or https"));
        }
        if url.host().is_none() {
            return Err(bad("must name a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not contain credentials"));
        }
        if url.fragment().is_some() {
            return Err(bad("must not contain a fragment"));
        }
        Ok(Self(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn as_url(&self) -> &url::Url {
        &self.0
    }
}

impl TryFrom<String> for EndpointUrl {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, ValidationError> {
        Self::parse(&s)
    }
}

impl From<EndpointUrl> for String {
    fn from(u: EndpointUrl) -> String {
        u.0.into()
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a chamber's response is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// A JSON document; detector keys are JSON Pointers.
    Json,
    /// Prometheus text exposition; detector keys are metric names with optional labels.
    Prometheus,
}

impl ResponseFormat {
    /// # Errors
    /// `format`: [`Rule::Format`] unless `json` or `prometheus` (any case).
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "prometheus" | "prometheus_text" | "openmetrics" => Ok(Self::Prometheus),
            _ => Err(ValidationError::new(
                "format",
                Rule::Format("must be one of: json, prometheus".into()),
            )),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Prometheus => "prometheus",
        }
    }
}

impl fmt::Display for ResponseFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shortest interval this installation accepts: 1 s unless the operator lowered it (never
/// below 100 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalFloor(Duration);

impl IntervalFloor {
    /// # Errors
    /// `interval_floor`: [`Rule::OutOfRange`] outside 100 ms to 1 s.
    pub fn new(floor: Duration) -> Result<Self, ValidationError> {
        if floor < LOWEST_POLL_INTERVAL_FLOOR || floor > MIN_POLL_INTERVAL {
            return Err(ValidationError::new(
                "interval_floor",
                Rule::OutOfRange {
                    min: human_duration(LOWEST_POLL_INTERVAL_FLOOR),
                    max: human_duration(MIN_POLL_INTERVAL),
                    actual: human_duration(floor),
                },
            ));
        }
        Ok(Self(floor))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

impl Default for IntervalFloor {
    fn default() -> Self {
        Self(MIN_POLL_INTERVAL)
    }
}

/// How often a chamber is polled: whole milliseconds, from the floor (1 s by default) to 24 h.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct PollInterval(u64);

impl PollInterval {
    /// # Errors
    /// `interval`: [`Rule::OutOfRange`] outside floor..=24 h, [`Rule::Format`] when not a whole
    /// number of milliseconds.
    pub fn new(interval: Duration, floor: IntervalFloor) -> Result<Self, ValidationError> {
        if interval < floor.get() || interval > MAX_POLL_INTERVAL {
            return Err(ValidationError::new(
                "interval",
                Rule::OutOfRange {
                    min: human_duration(floor.get()),
                    max: human_duration(MAX_POLL_INTERVAL),
                    actual: format!("{interval:?}"),
                },
            ));
        }
        if !interval.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(ValidationError::new(
                "interval",
                Rule::Format("must be a whole number of milliseconds".into()),
            ));
        }
        Ok(Self(
            u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        ))
    }

    /// An interval in whole seconds with the default floor (handy in tests and fixtures).
    ///
    /// # Errors
    /// As [`PollInterval::new`].
    pub fn from_secs(secs: u64) -> Result<Self, ValidationError> {
        Self::new(Duration::from_secs(secs), IntervalFloor::default())
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl TryFrom<u64> for PollInterval {
    type Error = ValidationError;
    /// Milliseconds, checked against the lowest floor an operator can set; the configured floor
    /// is enforced where users submit intervals.
    fn try_from(ms: u64) -> Result<Self, ValidationError> {
        Self::new(
            Duration::from_millis(ms),
            IntervalFloor::new(LOWEST_POLL_INTERVAL_FLOOR).unwrap_or_default(),
        )
    }
}

impl From<PollInterval> for u64 {
    fn from(i: PollInterval) -> u64 {
        i.0
    }
}

impl fmt::Display for PollInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&human_duration(self.as_duration()))
    }
}

/// How long one poll may take: 100 ms up to the chamber's interval; by default
/// min(interval, 10 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PollTimeout(u64);

impl PollTimeout {
    /// # Errors
    /// `timeout`: [`Rule::OutOfRange`] outside 100 ms..=interval.
    pub fn new(timeout: Duration, interval: PollInterval) -> Result<Self, ValidationError> {
        let max = interval.as_duration();
        if timeout < MIN_POLL_TIMEOUT || timeout > max {
            return Err(ValidationError::new(
                "timeout",
                Rule::OutOfRange {
                    min: human_duration(MIN_POLL_TIMEOUT),
                    max: format!("the interval ({})", human_duration(max)),
                    actual: format!("{timeout:?}"),
                },
            ));
        }
        Ok(Self(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)))
    }

    /// The default for an interval: min(interval, 10 s).
    pub fn default_for(interval: PollInterval) -> Self {
        Self(
            interval
                .as_millis()
                .min(DEFAULT_POLL_TIMEOUT.as_millis() as u64),
        )
    }

    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

/// Whether the scheduler polls the chamber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChamberState {
    Active,
    Paused,
}

/// A polled device of one organization, in one section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chamber {
    pub id: ChamberId,
    pub organization_id: OrganizationId,
    pub section_id: SectionId,
    pub name: Name,
    pub endpoint: EndpointUrl,
    pub format: ResponseFormat,
    pub interval: PollInterval,
    pub timeout: PollTimeout,
    pub state: ChamberState,
    /// When failures change this chamber's health (the default unless overridden).
    pub health_policy: HealthPolicy,
    /// The moment from which slots are expected: creation, the last resume, or the last
    /// interval change. Slots on the grid before it are not owed.
    pub schedule_since: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Chamber {
    /// Cross-field rule: the timeout must fit in the interval (each value is valid by type).
    ///
    /// # Errors
    /// `chamber.timeout`: [`Rule::OutOfRange`] when the timeout exceeds the interval.
    pub fn check_timeout_fits(
        interval: PollInterval,
        timeout: PollTimeout,
    ) -> Result<(), ValidationError> {
        PollTimeout::new(timeout.as_duration(), interval)
            .map(|_| ())
            .map_err(|e| e.within("chamber"))
    }

    pub fn is_active(&self) -> bool {
        self.state == ChamberState::Active
    }
}

/// How a detector finds its value in the chamber's response; the kind follows the chamber's
/// [`ResponseFormat`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "key", rename_all = "snake_case")]
pub enum DetectorKey {
    /// A JSON Pointer such as `/detectors/0/value`.
    JsonPointer(JsonPointer),
    /// A metric name with optional labels, such as `temp_celsius{sensor="top"}`.
    Metric(MetricSelector),
}

impl DetectorKey {
    /// Parses a key in the syntax of the chamber's format.
    ///
    /// # Errors
    /// `key`: [`Rule::Format`] with the syntax rule that was broken.
    pub fn parse(format: ResponseFormat, raw: &str) -> Result<Self, ValidationError> {
        let field = |e: &dyn fmt::Display| {
            ValidationError::new("key", Rule::Format(format!("invalid {format} key: {e}")))
        };
        match format {
            ResponseFormat::Json => JsonPointer::parse(raw)
                .map(Self::JsonPointer)
                .map_err(|e| field(&e)),
            ResponseFormat::Prometheus => MetricSelector::parse(raw)
                .map(Self::Metric)
                .map_err(|e| field(&e)),
        }
    }

    /// The format this key reads.
    pub fn format(&self) -> ResponseFormat {
        match self {
            Self::JsonPointer(_) => ResponseFormat::Json,
            Self::Metric(_) => ResponseFormat::Prometheus,
        }
    }
}

impl fmt::Display for DetectorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::JsonPointer(p) => fmt::Display::fmt(p, f),
            Self::Metric(m) => fmt::Display::fmt(m, f),
        }
    }
}

/// The values a detector can plausibly report; a value outside is stored as a corrupted reading
/// (`implausible`). Either bound may be open.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PlausibleRange {
    min: Option<f64>,
    max: Option<f64>,
}

impl PlausibleRange {
    /// # Errors
    /// `range.min` / `range.max`: [`Rule::NotFinite`]; `range`: [`Rule::Inconsistent`] when
    /// min > max.
    pub fn new(min: Option<f64>, max: Option<f64>) -> Result<Self, ValidationError> {
        if min.is_some_and(|v| !v.is_finite()) {
            return Err(ValidationError::new("range.min", Rule::NotFinite));
        }
        if max.is_some_and(|v| !v.is_finite()) {
            return Err(ValidationError::new("range.max", Rule::NotFinite));
        }
        if let (Some(lo), Some(hi)) = (min, max)
            && lo > hi
        {
            return Err(ValidationError::new(
                "range",
                Rule::Inconsistent(format!("min ({lo}) must not exceed max ({hi})")),
            ));
        }
        Ok(Self { min, max })
    }

    /// No bounds: every finite value is plausible.
    pub const fn unbounded() -> Self {
        Self {
            min: None,
            max: None,
        }
    }

    pub const fn min(&self) -> Option<f64> {
        self.min
    }

    pub const fn max(&self) -> Option<f64> {
        self.max
    }

    pub fn contains(&self, value: f64) -> bool {
        self.min.is_none_or(|lo| value >= lo) && self.max.is_none_or(|hi| value <= hi)
    }
}

/// One measured channel of a chamber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    pub id: DetectorId,
    pub chamber_id: ChamberId,
    pub organization_id: OrganizationId,
    pub name: Name,
    pub alias: Option<Name>,
    pub unit: Unit,
    pub key: DetectorKey,
    pub range: PlausibleRange,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn endpoint_urls_must_be_plain_http() {
        assert!(EndpointUrl::parse("http://10.0.0.5:8080/metrics").is_ok());
        assert!(EndpointUrl::parse("https://chamber-7.lab.example/api/v1/state").is_ok());
        for (bad, why) in [
            ("", "is required"),
            ("ftp://x/y", "scheme must be http or https"),
            ("http://user:pw@x/", "must not contain credentials"),
            ("http://x/#frag", "must not contain a fragment"),
            ("/relative", "must be an absolute URL"),
        ] {
            let err = EndpointUrl::parse(bad).unwrap_err();
            assert_eq!(err.field, "url");
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
        let long = format!("http://x/{}", "a".repeat(MAX_URL_CHARS));
        assert!(matches!(
            EndpointUrl::parse(&long).unwrap_err().rule,
            Rule::TooLong { .. }
        ));
    }

    #[test]
    fn intervals_respect_the_floor_and_the_ceiling() {
        let floor = IntervalFloor::default();
        assert!(PollInterval::new(Duration::from_secs(1), floor).is_ok());
        assert!(PollInterval::new(Duration::from_secs(86_400), floor).is_ok());
        let err = PollInterval::new(Duration::from_millis(500), floor).unwrap_err();
        assert_eq!(
            err.to_string(),
            "interval: must be between 1s and 24h (got 500ms)"
        );
        assert!(PollInterval::new(Duration::from_secs(86_401), floor).is_err());
        let lowered = IntervalFloor::new(Duration::from_millis(100)).unwrap();
        assert!(PollInterval::new(Duration::from_millis(100), lowered).is_ok());
        assert!(IntervalFloor::new(Duration::from_millis(50)).is_err());
        assert!(PollInterval::new(Duration::from_micros(1_000_500), floor).is_err());
    }

    #[test]
    fn timeouts_default_to_ten_seconds_capped_by_the_interval() {
        let one_s = PollInterval::from_secs(1).unwrap();
        let one_m = PollInterval::from_secs(60).unwrap();
        assert_eq!(
            PollTimeout::default_for(one_s).as_duration(),
            Duration::from_secs(1)
        );
        assert_eq!(
            PollTimeout::default_for(one_m).as_duration(),
            Duration::from_secs(10)
        );
        let err = PollTimeout::new(Duration::from_secs(2), one_s).unwrap_err();
        assert_eq!(err.field, "timeout");
        assert!(PollTimeout::new(Duration::from_millis(99), one_m).is_err());
        assert!(Chamber::check_timeout_fits(one_s, PollTimeout::default_for(one_m)).is_err());
    }

    #[test]
    fn ranges_refuse_non_finite_and_inverted_bounds() {
        assert_eq!(
            PlausibleRange::new(Some(f64::NAN), None).unwrap_err().field,
            "range.min"
        );
        assert_eq!(
            PlausibleRange::new(None, Some(f64::INFINITY))
                .unwrap_err()
                .field,
            "range.max"
        );
        assert!(PlausibleRange::new(Some(5.0), Some(1.0)).is_err());
        let r = PlausibleRange::new(Some(-40.0), Some(125.0)).unwrap();
        assert!(r.contains(-40.0) && r.contains(125.0) && !r.contains(125.1));
        assert!(PlausibleRange::unbounded().contains(f64::MAX));
    }

    #[test]
    fn detector_keys_follow_the_chamber_format() {
        assert!(DetectorKey::parse(ResponseFormat::Json, "/detectors/0/value").is_ok());
        let err = DetectorKey::parse(ResponseFormat::Json, "temperature").unwrap_err();
        assert_eq!(err.field, "key");
        assert!(DetectorKey::parse(ResponseFormat::Prometheus, "temp{sensor=\"top\"}").is_ok());
        assert!(DetectorKey::parse(ResponseFormat::Prometheus, "/temperature").is_err());
    }

    proptest! {
        #[test]
        fn value_types_never_panic(s in ".*", ms in any::<u64>(), lo in any::<f64>(), hi in any::<f64>()) {
            let _ = EndpointUrl::parse(&s);
            let _ = ResponseFormat::parse(&s);
            let _ = DetectorKey::parse(ResponseFormat::Json, &s);
            let _ = DetectorKey::parse(ResponseFormat::Prometheus, &s);
            if let Ok(i) = PollInterval::new(Duration::from_millis(ms), IntervalFloor::default()) {
                prop_assert!(i.as_duration() >= MIN_POLL_INTERVAL && i.as_duration() <= MAX_POLL_INTERVAL);
                let t = PollTimeout::default_for(i);
                prop_assert!(t.as_duration() <= i.as_duration() && t.as_duration() >= MIN_POLL_TIMEOUT);
            }
            if let Ok(r) = PlausibleRange::new(Some(lo), Some(hi)) {
                prop_assert!(r.contains(lo) && r.contains(hi));
            }
        }

        #[test]
        fn accepted_urls_round_trip(host in "[a-z][a-z0-9]{0,10}(-[a-z0-9]{1,8})?", port in 1u16.., path in "[a-z0-9/]{0,30}") {
            let raw = format!("http://{host}:{port}/{path}");
            let url = EndpointUrl::parse(&raw).unwrap();
            prop_assert_eq!(EndpointUrl::parse(url.as_str()).unwrap(), url);
        }
    }
}
