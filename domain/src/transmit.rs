//! Transmitters: destinations an organization forwards its events to (a webhook, an MQTT
//! broker), what each one is sent, and how hard a delivery is tried before it is given up and
//! recorded as a dead letter. Sending is the [`DeliveryClient`](crate::ports::DeliveryClient)
//! port's business; this decides *what* and *how often*.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Rule, ValidationError};
use crate::model::{DeadLetterId, EndpointUrl, Name, OrganizationId, TransmitterId};
use crate::ports::DomainEvent;
use crate::time::Timestamp;

pub const MIN_SECRET_CHARS: usize = 16;
pub const MAX_SECRET_CHARS: usize = 256;
pub const MAX_TOPIC_PREFIX_CHARS: usize = 128;

/// The key a webhook's bodies are signed with (HMAC-SHA256). Never shown after it is set.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// # Errors
    /// `secret`: shorter than 16 or longer than 256 characters, or with control characters.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let chars = raw.chars().count();
        if chars < MIN_SECRET_CHARS {
            return Err(ValidationError::new(
                "secret",
                Rule::Format(format!("must be at least {MIN_SECRET_CHARS} characters")),
            ));
        }
        if chars > MAX_SECRET_CHARS {
            return Err(ValidationError::new(
                "secret",
                Rule::TooLong {
                    max: MAX_SECRET_CHARS,
                    actual: chars,
                },
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "secret",
                Rule::Format("must not contain control characters".into()),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl TryFrom<String> for WebhookSecret {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<WebhookSecret> for String {
    fn from(s: WebhookSecret) -> Self {
        s.0
    }
}

/// An MQTT broker address: `mqtt://host[:port]` (port 1883 by default).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MqttBroker {
    host: String,
    port: u16,
}

impl MqttBroker {
    pub const DEFAULT_PORT: u16 = 1883;

    /// # Errors
    /// `broker`: not an `mqtt://host[:port]` URL (no credentials, path or query).
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let bad = |why: &str| ValidationError::new("broker", Rule::Format(why.into()));
        let s = raw.trim();
        if s.is_empty() {
            return Err(ValidationError::new("broker", Rule::Required));
        }
        let url = url::Url::parse(s).map_err(|e| bad(&format!("must be a URL ({e})")))?;
        if url.scheme() != "mqtt" {
            return Err(bad("scheme must be mqtt"));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("must name a host"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not contain credentials"));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not have a path, query or fragment"));
        }
        Ok(Self {
            host: host.trim_matches(['[', ']']).to_owned(),
            port: url.port().unwrap_or(Self::DEFAULT_PORT),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for MqttBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "mqtt://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "mqtt://{}:{}", self.host, self.port)
        }
    }
}

impl TryFrom<String> for MqttBroker {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<MqttBroker> for String {
    fn from(b: MqttBroker) -> Self {
        b.to_string()
    }
}

/// Where an MQTT transmitter's topics start: `chamberlain/lab-1`, say. Topics are
/// `<prefix>/chambers/<chamber_id>/readings` and `<prefix>/chambers/<chamber_id>/alerts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicPrefix(String);

impl TopicPrefix {
    /// # Errors
    /// `topic_prefix`: empty, longer than 128 characters, with a wildcard (`+`, `#`), a NUL or
    /// control character, or a leading or trailing `/`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let bad = |why: &str| ValidationError::new("topic_prefix", Rule::Format(why.into()));
        if raw.is_empty() {
            return Err(ValidationError::new("topic_prefix", Rule::Required));
        }
        let chars = raw.chars().count();
        if chars > MAX_TOPIC_PREFIX_CHARS {
            return Err(ValidationError::new(
                "topic_prefix",
                Rule::TooLong {
                    max: MAX_TOPIC_PREFIX_CHARS,
                    actual: chars,
                },
            ));
        }
        if raw.contains(['+', '#']) {
            return Err(bad("must not contain the wildcards + or #"));
        }
        if raw.chars().any(char::is_control) {
            return Err(bad("must not contain control characters"));
        }
        if raw.starts_with('/') || raw.ends_with('/') || raw.contains("//") {
            return Err(bad("must not start or end with /, nor have an empty level"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TopicPrefix {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<TopicPrefix> for String {
    fn from(p: TopicPrefix) -> Self {
        p.0
    }
}

/// Where a transmitter sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Destination {
    /// An HTTP POST of each delivery's JSON body, signed with the secret.
    Webhook {
        url: EndpointUrl,
        secret: WebhookSecret,
    },
    /// An MQTT publish (QoS 1) of each delivery's JSON body to `<topic_prefix>/<topic>`.
    Mqtt {
        broker: MqttBroker,
        topic_prefix: TopicPrefix,
    },
}

/// What a transmitter is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    /// Every poll's stored readings.
    pub readings: bool,
    /// Alerts opened and resolved.
    pub alerts: bool,
}

impl Forwarded {
    /// # Errors
    /// `forward`: neither readings nor alerts.
    pub fn new(readings: bool, alerts: bool) -> Result<Self, ValidationError> {
        if !readings && !alerts {
            return Err(ValidationError::new(
                "forward",
                Rule::Inconsistent("forward readings, alerts or both".into()),
            ));
        }
        Ok(Self { readings, alerts })
    }
}

/// One organization's destination. Names are unique within an organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transmitter {
    pub id: TransmitterId,
    pub organization_id: OrganizationId,
    pub name: Name,
    pub destination: Destination,
    pub forwarded: Forwarded,
    pub created_at: Timestamp,
}

/// What a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    Readings,
    AlertOpened,
    AlertResolved,
}

impl DeliveryKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Readings => "readings",
            Self::AlertOpened => "alert_opened",
            Self::AlertResolved => "alert_resolved",
        }
    }

    /// # Errors
    /// `kind` when `s` is not one of [`DeliveryKind::as_str`]'s names.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "readings" => Ok(Self::Readings),
            "alert_opened" => Ok(Self::AlertOpened),
            "alert_resolved" => Ok(Self::AlertResolved),
            _ => Err(ValidationError::new(
                "kind",
                Rule::Format("must be readings, alert_opened or alert_resolved".into()),
            )),
        }
    }
}

/// One message for one transmitter: a JSON body and the topic it belongs to (relative to an
/// MQTT transmitter's prefix; a webhook sends it as a header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub kind: DeliveryKind,
    pub organization_id: OrganizationId,
    /// `chambers/<chamber_id>/readings` or `chambers/<chamber_id>/alerts`.
    pub topic: String,
    /// The event as JSON (the same form the event bus carries).
    pub body: String,
}

impl Delivery {
    /// The delivery `event` makes for a transmitter forwarding `what`, if any.
    pub fn for_event(event: &DomainEvent, what: Forwarded) -> Option<Self> {
        let (kind, chamber_id) = match event {
            DomainEvent::ReadingsWritten { poll, .. } if what.readings => {
                (DeliveryKind::Readings, poll.chamber_id)
            }
            DomainEvent::AlertOpened { alert, .. } if what.alerts => {
                (DeliveryKind::AlertOpened, alert.chamber_id)
            }
            DomainEvent::AlertResolved { alert, .. } if what.alerts => {
                (DeliveryKind::AlertResolved, alert.chamber_id)
            }
            _ => return None,
        };
        let leaf = if kind == DeliveryKind::Readings {
            "readings"
        } else {
            "alerts"
        };
        Some(Self {
            kind,
            organization_id: event.routing().organization_id,
            topic: format!("chambers/{chamber_id}/{leaf}"),
            body: serde_json::to_string(event).ok()?,
        })
    }
}

/// How often a delivery is tried, and how long to wait between tries: exponential backoff from
/// `first_backoff`, doubling, capped at `max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    first_backoff: Duration,
    max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 5 tries, waiting 1 s, 2 s, 4 s and 8 s between them.
    fn default() -> Self {
        Self {
            attempts: 5,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// # Errors
    /// `attempts` when 0 or above 20; `backoff` when the first wait is zero or above the cap.
    pub fn new(
        attempts: u32,
        first_backoff: Duration,
        max_backoff: Duration,
    ) -> Result<Self, ValidationError> {
        if !(1..=20).contains(&attempts) {
            return Err(ValidationError::new(
                "attempts",
                Rule::OutOfRange {
                    min: "1".into(),
                    max: "20".into(),
                    actual: attempts.to_string(),
                },
            ));
        }
        if first_backoff.is_zero() || first_backoff > max_backoff {
            return Err(ValidationError::new(
                "backoff",
                Rule::Inconsistent(
                    "the first wait must be above zero and not above the cap".into(),
                ),
            ));
        }
        Ok(Self {
            attempts,
            first_backoff,
            max_backoff,
        })
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait after failed try number `attempt` (1-based), or `None` when that was the last.
    pub fn backoff_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.attempts {
            return None;
        }
        let doublings = attempt.saturating_sub(1).min(30);
        Some(
            self.first_backoff
                .saturating_mul(1 << doublings)
                .min(self.max_backoff),
        )
    }
}

/// A delivery given up after its last try, kept so an operator can see what was lost and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: DeadLetterId,
    pub organization_id: OrganizationId,
    pub transmitter_id: TransmitterId,
    pub delivery: Delivery,
    pub attempts: u32,
    pub last_error: String,
    pub at: Timestamp,
}

/// How a transmitter's deliveries are going, as its forwarder last wrote it down: at once when
/// deliveries start or stop failing, otherwise every few seconds at most, so a busy transmitter
/// costs the store little.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    pub transmitter_id: TransmitterId,
    pub organization_id: OrganizationId,
    /// When the last delivery went through.
    pub last_delivered_at: Option<Timestamp>,
    /// Since when every try has failed; `None` while deliveries go through.
    pub failing_since: Option<Timestamp>,
    /// Why the last failed try failed (kept after deliveries recover, for the record).
    pub last_error: Option<String>,
    /// When this was written down.
    pub updated_at: Timestamp,
}

impl DeliveryState {
    /// Nothing delivered or tried yet.
    pub fn new(transmitter: &Transmitter, now: Timestamp) -> Self {
        Self {
            transmitter_id: transmitter.id,
            organization_id: transmitter.organization_id,
            last_delivered_at: None,
            failing_since: None,
            last_error: None,
            updated_at: now,
        }
    }

    /// A delivery went through at `at`; true when this ends a run of failures.
    pub fn delivered(&mut self, at: Timestamp) -> bool {
        self.last_delivered_at = Some(at);
        self.failing_since.take().is_some()
    }

    /// A try failed at `at` for `reason`; true when this starts a run of failures.
    pub fn failed(&mut self, at: Timestamp, reason: &str) -> bool {
        self.last_error = Some(reason.to_owned());
        if self.failing_since.is_none() {
            self.failing_since = Some(at);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stops_after_the_last_try() {
        let p = RetryPolicy::new(5, Duration::from_secs(1), Duration::from_secs(5)).unwrap();
        let waits: Vec<_> = (1..=5).map(|a| p.backoff_after(a)).collect();
        assert_eq!(
            waits,
            [
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(5)),
                None
            ]
        );
        assert_eq!(
            RetryPolicy::new(0, Duration::from_secs(1), Duration::from_secs(1))
                .unwrap_err()
                .field,
            "attempts"
        );
        assert_eq!(
            RetryPolicy::new(3, Duration::from_secs(2), Duration::from_secs(1))
                .unwrap_err()
                .field,
            "backoff"
        );
    }

    #[test]
    fn destinations_are_validated_naming_the_field() {
        assert_eq!(WebhookSecret::parse("short").unwrap_err().field, "secret");
        assert!(WebhookSecret::parse("0123456789abcdef").is_ok());
        assert_eq!(
            format!("{:?}", WebhookSecret::parse("0123456789abcdef").unwrap()),
            "WebhookSecret(..)"
        );
        let broker = MqttBroker::parse("mqtt://127.0.0.1").unwrap();
        assert_eq!((broker.host(), broker.port()), ("127.0.0.1", 1883));
        assert_eq!(broker.to_string(), "mqtt://127.0.0.1:1883");
        assert_eq!(
            MqttBroker::parse("mqtt://[::1]:1999").unwrap().host(),
            "::1"
        );
        for bad in [
            "",
            "http://x",
            "mqtt://u:p@x",
            "mqtt://x/topic",
            "not a url",
        ] {
            assert_eq!(MqttBroker::parse(bad).unwrap_err().field, "broker", "{bad}");
        }
        assert!(TopicPrefix::parse("chamberlain/lab-1").is_ok());
        for bad in ["", "a/+/b", "a/#", "/a", "a/", "a//b"] {
            assert_eq!(
                TopicPrefix::parse(bad).unwrap_err().field,
                "topic_prefix",
                "{bad}"
            );
        }
        assert_eq!(Forwarded::new(false, false).unwrap_err().field, "forward");
    }
}
