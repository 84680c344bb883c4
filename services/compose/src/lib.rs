#![doc = include_str!("../README.md")]

pub mod commands;
pub mod distributed;
pub mod embedded;
pub mod envoy;
pub mod settings;
mod shutdown;
mod storage;
pub mod telemetry;

pub use commands::{Command, run};
pub use distributed::Distributed;
pub use embedded::Embedded;
pub use shutdown::{holder_name, shutdown_signal};
pub use storage::{OpenStore, Storage};

use chamberlain_http::HttpClientConfig;

/// The outbound HTTP client's settings (chambers, webhooks) behind the operator's egress
/// allowlist plus `extra` networks.
///
/// # Errors
/// A [`settings::ConfigError`] naming `--egress-allow`.
pub fn chamber_client(
    egress: &settings::EgressArgs,
    extra: &[String],
) -> Result<HttpClientConfig, anyhow::Error> {
    Ok(HttpClientConfig::default().with_egress_policy(egress.policy(extra)?))
}

/// Where the alerter delivers: webhooks over HTTP and MQTT brokers, both behind the same egress
/// policy as the chamber client.
pub(crate) fn destinations(http: &HttpClientConfig) -> chamberlain_alerter::Destinations {
    chamberlain_alerter::Destinations {
        webhook: std::sync::Arc::new(chamberlain_http::WebhookClient::new(http)),
        mqtt: std::sync::Arc::new(chamberlain_mqtt::MqttClient::new(http.egress().clone())),
    }
}
