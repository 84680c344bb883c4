//! [`HttpClientConfig`]: how the chamber client connects, paces and caps, validated before any
//! I/O. Every refused value is a [`ValidationError`] naming its setting.

use std::num::NonZeroU32;
use std::time::Duration;

use chamberlain_domain::limits::{
    DEFAULT_RESPONSE_BODY_CAP, MAX_RESPONSE_BODY_CAP, MIN_RESPONSE_BODY_CAP,
};
use chamberlain_domain::time::human_duration;
use chamberlain_domain::{Rule, ValidationError};
use http::HeaderValue;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use chamberlain_domain::egress::EgressPolicy;

/// How long opening a connection (resolving, TCP, TLS) may take unless configured. Each
/// request's own timeout caps it too.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds of the connect timeout.
pub const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(10);
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections kept per host unless configured: as many as a worker's fetches in
/// flight by default, so one host serving many chambers by path (a hub, or the simulator at
/// 10,000 chambers) is never reconnected to for a request beyond the pool.
pub const DEFAULT_POOL_MAX_IDLE_PER_HOST: usize = 512;
pub const MAX_POOL_MAX_IDLE_PER_HOST: usize = 1024;
/// How long an idle pooled connection is kept unless configured.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const MIN_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bounds of per-host pacing.
pub const MAX_HOST_CONCURRENCY: u32 = 1024;
pub const MAX_HOST_REQUESTS_PER_SECOND: u32 = 100_000;

/// The `user-agent` sent unless configured: `chamberlain/<version>`.
pub const DEFAULT_USER_AGENT: &str = concat!("chamberlain/", env!("CARGO_PKG_VERSION"));

/// Per-host pacing, keyed by the URL's `host:port`: off unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostPacing {
    /// At most this many requests in flight to one host:port; more wait their turn.
    pub max_concurrent: Option<NonZeroU32>,
    /// At most this many requests started per second to one host:port (a burst of that many,
    /// then evenly spaced); more wait their turn.
    pub requests_per_second: Option<NonZeroU32>,
}

impl HostPacing {
    pub fn is_off(&self) -> bool {
        self.max_concurrent.is_none() && self.requests_per_second.is_none()
    }
}

/// How the HTTP chamber client behaves. [`HttpClientConfig::default`] is the defaults of
/// DESIGN.md; the `with_*` methods refuse values out of bounds, so every value held is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpClientConfig {
    connect_timeout: Duration,
    body_cap: usize,
    egress: EgressPolicy,
    pacing: HostPacing,
    pool_max_idle_per_host: usize,
    pool_idle_timeout: Duration,
    user_agent: HeaderValue,
    tls_roots: Vec<CertificateDer<'static>>,
}

impl Default for HttpClientConfig {
    /// 3 s to connect, a 1 MiB body cap, nothing allowlisted, no pacing, 512 idle connections
    /// per host kept 90 s, `chamberlain/<version>`, the Mozilla roots (webpki-roots) only.
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            body_cap: DEFAULT_RESPONSE_BODY_CAP,
            egress: EgressPolicy::default(),
            pacing: HostPacing::default(),
            pool_max_idle_per_host: DEFAULT_POOL_MAX_IDLE_PER_HOST,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            user_agent: HeaderValue::from_static(DEFAULT_USER_AGENT),
            tls_roots: Vec::new(),
        }
    }
}

fn out_of_range(field: &'static str, min: String, max: String, actual: String) -> ValidationError {
    ValidationError::new(field, Rule::OutOfRange { min, max, actual })
}

fn whole_millis(field: &'static str, d: Duration) -> Result<(), ValidationError> {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            Rule::Format("must be a whole number of milliseconds".into()),
        ))
    }
}

impl HttpClientConfig {
    /// # Errors
    /// `http_connect_timeout`: [`Rule::OutOfRange`] outside 10 ms to 60 s, [`Rule::Format`]
    /// when not whole milliseconds.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Result<Self, ValidationError> {
        const FIELD: &str = "http_connect_timeout";
        if !(MIN_CONNECT_TIMEOUT..=MAX_CONNECT_TIMEOUT).contains(&timeout) {
            return Err(out_of_range(
                FIELD,
                human_duration(MIN_CONNECT_TIMEOUT),
                human_duration(MAX_CONNECT_TIMEOUT),
                format!("{timeout:?}"),
            ));
        }
        whole_millis(FIELD, timeout)?;
        self.connect_timeout = timeout;
        Ok(self)
    }

    /// # Errors
    /// `http_body_cap`: [`Rule::OutOfRange`] outside 1 KiB to 64 MiB.
    pub fn with_body_cap(mut self, bytes: usize) -> Result<Self, ValidationError> {
        if !(MIN_RESPONSE_BODY_CAP..=MAX_RESPONSE_BODY_CAP).contains(&bytes) {
            return Err(out_of_range(
                "http_body_cap",
                format!("{MIN_RESPONSE_BODY_CAP} bytes (1 KiB)"),
                format!("{MAX_RESPONSE_BODY_CAP} bytes (64 MiB)"),
                bytes.to_string(),
            ));
        }
        self.body_cap = bytes;
        Ok(self)
    }

    /// The egress allowlist as a comma-separated list of CIDRs, such as
    /// `127.0.0.2/32,10.20.0.0/16` (see [`EgressPolicy::parse`]).
    ///
    /// # Errors
    /// `egress_allow`: [`Rule::Format`] naming the item that is not a CIDR.
    pub fn with_egress_allow(self, list: &str) -> Result<Self, ValidationError> {
        Ok(self.with_egress_policy(EgressPolicy::parse(list)?))
    }

    #[must_use]
    pub fn with_egress_policy(mut self, policy: EgressPolicy) -> Self {
        self.egress = policy;
        self
    }

    /// At most `n` requests in flight per host:port.
    ///
    /// # Errors
    /// `http_host_max_concurrent`: [`Rule::OutOfRange`] outside 1 to 1,024.
    pub fn with_max_concurrent_per_host(mut self, n: u32) -> Result<Self, ValidationError> {
        self.pacing.max_concurrent = Some(
            NonZeroU32::new(n)
                .filter(|n| n.get() <= MAX_HOST_CONCURRENCY)
                .ok_or_else(|| {
                    out_of_range(
                        "http_host_max_concurrent",
                        "1".into(),
                        MAX_HOST_CONCURRENCY.to_string(),
                        n.to_string(),
                    )
                })?,
        );
        Ok(self)
    }

    /// At most `n` requests started per second per host:port.
    ///
    /// # Errors
    /// `http_host_requests_per_second`: [`Rule::OutOfRange`] outside 1 to 100,000.
    pub fn with_requests_per_second_per_host(mut self, n: u32) -> Result<Self, ValidationError> {
        self.pacing.requests_per_second = Some(
            NonZeroU32::new(n)
                .filter(|n| n.get() <= MAX_HOST_REQUESTS_PER_SECOND)
                .ok_or_else(|| {
                    out_of_range(
                        "http_host_requests_per_second",
                        "1".into(),
                        MAX_HOST_REQUESTS_PER_SECOND.to_string(),
                        n.to_string(),
                    )
                })?,
        );
        Ok(self)
    }

    /// Idle keep-alive connections kept per host (0 turns keep-alive off).
    ///
    /// # Errors
    /// `http_pool_max_idle_per_host`: [`Rule::OutOfRange`] above 1,024.
    pub fn with_pool_max_idle_per_host(mut self, n: usize) -> Result<Self, ValidationError> {
        if n > MAX_POOL_MAX_IDLE_PER_HOST {
            return Err(out_of_range(
                "http_pool_max_idle_per_host",
                "0".into(),
                MAX_POOL_MAX_IDLE_PER_HOST.to_string(),
                n.to_string(),
            ));
        }
        self.pool_max_idle_per_host = n;
        Ok(self)
    }

    /// How long an idle pooled connection is kept.
    ///
    /// # Errors
    /// `http_pool_idle_timeout`: [`Rule::OutOfRange`] outside 1 s to 1 h, [`Rule::Format`] when
    /// not whole milliseconds.
    pub fn with_pool_idle_timeout(mut self, timeout: Duration) -> Result<Self, ValidationError> {
        const FIELD: &str = "http_pool_idle_timeout";
        if !(MIN_POOL_IDLE_TIMEOUT..=MAX_POOL_IDLE_TIMEOUT).contains(&timeout) {
            return Err(out_of_range(
                FIELD,
                human_duration(MIN_POOL_IDLE_TIMEOUT),
                human_duration(MAX_POOL_IDLE_TIMEOUT),
                format!("{timeout:?}"),
            ));
        }
        whole_millis(FIELD, timeout)?;
        self.pool_idle_timeout = timeout;
        Ok(self)
    }

    /// # Errors
    /// `http_user_agent`: [`Rule::Required`] when empty, [`Rule::Format`] when it cannot be
    /// sent as a header value (control characters, non-ASCII).
    pub fn with_user_agent(mut self, user_agent: &str) -> Result<Self, ValidationError> {
        const FIELD: &str = "http_user_agent";
        let user_agent = user_agent.trim();
        if user_agent.is_empty() {
            return Err(ValidationError::new(FIELD, Rule::Required));
        }
        if !user_agent
            .bytes()
            .all(|b| b == b' ' || b.is_ascii_graphic())
        {
            return Err(ValidationError::new(
                FIELD,
                Rule::Format("must be printable ASCII".into()),
            ));
        }
        self.user_agent = HeaderValue::from_str(user_agent).map_err(|_| {
            ValidationError::new(FIELD, Rule::Format("must be printable ASCII".into()))
        })?;
        Ok(self)
    }

    /// Certificate authorities trusted for `https` chambers besides the Mozilla roots (a lab's
    /// own CA), as PEM text holding one or more `CERTIFICATE` blocks.
    ///
    /// # Errors
    /// `http_tls_ca`: [`Rule::Format`] when the text holds no certificate, or one that cannot
    /// serve as a trust anchor.
    pub fn with_tls_root_certificates_pem(mut self, pem: &str) -> Result<Self, ValidationError> {
        let bad = |why: String| ValidationError::new("http_tls_ca", Rule::Format(why));
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("is not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(bad("holds no PEM CERTIFICATE block".into()));
        }
        let mut check = rustls::RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            check
                .add(cert.clone())
                .map_err(|e| bad(format!("certificate {} cannot be trusted: {e}", i + 1)))?;
        }
        self.tls_roots = certs;
        Ok(self)
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub fn body_cap(&self) -> usize {
        self.body_cap
    }

    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }

    pub fn pacing(&self) -> HostPacing {
        self.pacing
    }

    pub fn pool_max_idle_per_host(&self) -> usize {
        self.pool_max_idle_per_host
    }

    pub fn pool_idle_timeout(&self) -> Duration {
        self.pool_idle_timeout
    }

    pub fn user_agent(&self) -> &HeaderValue {
        &self.user_agent
    }

    /// The operator's extra TLS roots (none by default).
    pub fn tls_root_certificates(&self) -> &[CertificateDer<'static>] {
        &self.tls_roots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_limits_table() {
        let c = HttpClientConfig::default();
        assert_eq!(c.connect_timeout(), Duration::from_secs(3));
        assert_eq!(c.body_cap(), 1024 * 1024);
        assert!(c.egress().allowlist().is_empty());
        assert!(c.pacing().is_off());
        assert_eq!(c.pool_max_idle_per_host(), DEFAULT_POOL_MAX_IDLE_PER_HOST);
        assert_eq!(c.pool_idle_timeout(), Duration::from_secs(90));
        assert_eq!(
            c.user_agent().to_str().unwrap(),
            format!("chamberlain/{}", env!("CARGO_PKG_VERSION"))
        );
        assert!(c.tls_root_certificates().is_empty());
    }

    #[test]
    fn tls_roots_are_pem_certificates() {
        let ca = include_str!("../tests/fixtures/ca.pem");
        let c = HttpClientConfig::default()
            .with_tls_root_certificates_pem(ca)
            .unwrap();
        assert_eq!(c.tls_root_certificates().len(), 1);
        for bad in [
            "",
            "not pem at all",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            include_str!("../tests/fixtures/chamber.key"),
        ] {
            let err = HttpClientConfig::default()
                .with_tls_root_certificates_pem(bad)
                .unwrap_err();
            assert_eq!(err.field, "http_tls_ca", "{bad:?}: {err}");
        }
    }

    #[test]
    fn values_in_bounds_are_kept() {
        let c = HttpClientConfig::default()
            .with_connect_timeout(Duration::from_millis(250))
            .and_then(|c| c.with_body_cap(1024))
            .and_then(|c| c.with_body_cap(64 * 1024 * 1024))
            .and_then(|c| c.with_egress_allow("127.0.0.2/32,10.20.0.0/16"))
            .and_then(|c| c.with_max_concurrent_per_host(2))
            .and_then(|c| c.with_requests_per_second_per_host(50))
            .and_then(|c| c.with_pool_max_idle_per_host(0))
            .and_then(|c| c.with_pool_idle_timeout(Duration::from_secs(5)))
            .and_then(|c| c.with_user_agent("lab-poller/2 (ops@lab.example)"))
            .unwrap();
        assert_eq!(c.connect_timeout(), Duration::from_millis(250));
        assert_eq!(c.body_cap(), 64 * 1024 * 1024);
        assert_eq!(c.egress().allowlist().len(), 2);
        assert_eq!(c.pacing().max_concurrent.map(NonZeroU32::get), Some(2));
        assert_eq!(
            c.pacing().requests_per_second.map(NonZeroU32::get),
            Some(50)
        );
        assert_eq!(c.pool_max_idle_per_host(), 0);
        assert_eq!(c.pool_idle_timeout(), Duration::from_secs(5));
        assert_eq!(c.user_agent(), "lab-poller/2 (ops@lab.example)");
    }

    #[test]
    fn refused_values_name_their_setting() {
        let c = HttpClientConfig::default;
        let cases: Vec<(Result<HttpClientConfig, ValidationError>, &str)> = vec![
            (
                c().with_connect_timeout(Duration::from_millis(9)),
                "http_connect_timeout",
            ),
            (
                c().with_connect_timeout(Duration::from_secs(61)),
                "http_connect_timeout",
            ),
            (
                c().with_connect_timeout(Duration::from_micros(1500)),
                "http_connect_timeout",
            ),
            (c().with_body_cap(1023), "http_body_cap"),
            (c().with_body_cap(64 * 1024 * 1024 + 1), "http_body_cap"),
            (c().with_egress_allow("10.0.0.0/8,bogus"), "egress_allow"),
            (
                c().with_max_concurrent_per_host(0),
                "http_host_max_concurrent",
            ),
            (
                c().with_max_concurrent_per_host(1025),
                "http_host_max_concurrent",
            ),
            (
                c().with_requests_per_second_per_host(0),
                "http_host_requests_per_second",
            ),
            (
                c().with_pool_max_idle_per_host(1025),
                "http_pool_max_idle_per_host",
            ),
            (
                c().with_pool_idle_timeout(Duration::from_millis(999)),
                "http_pool_idle_timeout",
            ),
            (c().with_user_agent("  "), "http_user_agent"),
            (c().with_user_agent("bad\nagent"), "http_user_agent"),
            (c().with_user_agent("chämberlain"), "http_user_agent"),
        ];
        for (result, field) in cases {
            let err = result.unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        assert_eq!(
            c().with_body_cap(10).unwrap_err().to_string(),
            "http_body_cap: must be between 1024 bytes (1 KiB) and 67108864 bytes (64 MiB) (got 10)"
        );
    }
}
