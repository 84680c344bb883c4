#![doc = include_str!("../README.md")]

mod embedded;
mod metrics;

pub use embedded::EmbeddedAuthLayer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::ports::Clock;
use chamberlain_domain::usecases::Identity;
use chamberlain_grpc::identity::IDENTITY_HEADER;
use chamberlain_grpc::{Api, IdentityKey};
use tokio::net::TcpListener;
use tonic::service::{Interceptor, InterceptorLayer};
use tonic::{Request, Status};

/// The largest request message accepted by default (4 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How long calls in flight may finish after a shutdown (live streams are then closed).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls are cut off after this long by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The largest request message accepted.
    pub max_message_bytes: usize,
    /// Every call is cut off after this long (`DEADLINE_EXCEEDED`); a client's shorter
    /// `grpc-timeout` wins.
    pub request_timeout: Duration,
    /// The key the auth service signs identities with.
    pub identity_key: IdentityKey,
    /// The embedded mode's in-process authentication (no Envoy, no auth service): bearer
    /// tokens checked by this use case on every call. `None` behind Envoy.
    pub embedded_auth: Option<Arc<chamberlain_domain::usecases::Authenticator>>,
}

/// Verifies the signed identity header and puts the [`Identity`] in the request's extensions.
#[derive(Clone)]
pub struct IdentityVerifier {
    key: IdentityKey,
    clock: Arc<dyn Clock>,
    /// In the embedded mode identity headers are never trusted: the token decides.
    embedded: bool,
}

impl std::fmt::Debug for IdentityVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityVerifier").finish_non_exhaustive()
    }
}

impl IdentityVerifier {
    pub fn new(key: IdentityKey, clock: Arc<dyn Clock>) -> Self {
        Self {
            key,
            clock,
            embedded: false,
        }
    }
}

impl Interceptor for IdentityVerifier {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if self.embedded {
            // The embedded layer inside vouches for callers and drops any such header.
            return Ok(request);
        }
        let Some(value) = request.metadata().get(IDENTITY_HEADER) else {
            // Anonymous: only SignIn answers; every other method refuses for want of a caller.
            return Ok(request);
        };
        let value = value
            .to_str()
            .map_err(|_| Status::unauthenticated("identity header is not text"))?;
        let identity: Identity = self.key.verify(value, self.clock.now()).map_err(|e| {
            tracing::warn!(problem = %e, "refused an identity that does not verify");
            Status::unauthenticated(e.to_string())
        })?;
        request.extensions_mut().insert(identity);
        Ok(request)
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes calls in flight.
///
/// # Errors
/// The transport's error if the server fails.
pub async fn serve(
    api: Api,
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let stopping = Arc::new(tokio::sync::Notify::new());
    let stopped = stopping.clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    for service in chamberlain_proto::SERVICES {
        health
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    // Both reflection versions (grpcio-reflection, grpcurl and others still speak v1alpha),
    // listing the API and grpc.health.v1.Health.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(chamberlain_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .inspect_err(|e| tracing::error!(error = %e, "reflection v1 unavailable"))
        .ok();
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .inspect_err(|e| tracing::error!(error = %e, "reflection v1alpha unavailable"))
        .ok();
    let mut verifier = IdentityVerifier::new(config.identity_key.clone(), api.clock.clone());
    verifier.embedded = config.embedded_auth.is_some();
    let services = api.services(config.max_message_bytes);
    let server = tonic::transport::Server::builder()
        .timeout(config.request_timeout)
        // One span per call, continuing the caller's (Envoy's) trace from `traceparent`.
        .trace_fn(|request| {
            let span = tracing::info_span!(
                "api.call",
                rpc.method = %request.uri().path(),
                otel.kind = "server"
            );
            chamberlain_telemetry::continue_trace_from_headers(&span, request.headers());
            span
        })
        .layer(metrics::ApiMetricsLayer)
        .layer(InterceptorLayer::new(verifier))
        .layer(EmbeddedAuthLayer(config.embedded_auth.clone()))
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(services.sections)
        .add_service(services.chambers)
        .add_service(services.batches)
        .add_service(services.readings)
        .add_service(services.polls)
        .add_service(services.auth)
        .add_service(services.users)
        .add_service(services.events)
        .add_service(services.alerts)
        .add_service(services.transmitters)
        .serve_with_incoming_shutdown(no_delay(listener), async {
            shutdown.await;
            stopping.notify_one();
        });
    // After the shutdown, calls in flight may finish for DRAIN_TIMEOUT; live streams never
    // finish by themselves, so the drain is bounded and the process exits.
    tokio::select! {
        served = server => served,
        () = async {
            stopped.notified().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => {
            tracing::info!(timeout_s = DRAIN_TIMEOUT.as_secs(), "calls still open after the drain; closing them");
            Ok(())
        }
    }
}

/// Accepted connections with Nagle's algorithm off: small replies leave at once instead of
/// waiting for the peer's delayed ACK (tens of milliseconds).
fn no_delay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
        if let Ok(s) = &stream
            && let Err(e) = s.set_nodelay(true)
        {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        stream
    })
}
