#![doc = include_str!("../README.md")]

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;

use chamberlain_domain::model::UserId;
use chamberlain_domain::ports::Clock;
use chamberlain_domain::usecases::{AuthError, Authenticator};
use chamberlain_grpc::identity::IDENTITY_HEADER;
use chamberlain_grpc::{ANONYMOUS_METHODS, IdentityKey};
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// Per-identity request rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

const fn at_least_one(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

/// Calls per user by default: 50 a second sustained, bursts of 100.
pub const DEFAULT_RATE_LIMIT: RateLimit = RateLimit {
    per_second: at_least_one(50),
    burst: at_least_one(100),
};

/// Sign-in attempts per client address by default: 1 a second sustained, bursts of 10.
pub const DEFAULT_SIGN_IN_LIMIT: RateLimit = RateLimit {
    per_second: at_least_one(1),
    burst: at_least_one(10),
};

impl RateLimit {
    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

/// Settings of the auth service.
#[derive(Debug, Clone)]
pub struct AuthServiceConfig {
    pub identity_key: IdentityKey,
    /// Calls per user.
    pub rate_limit: RateLimit,
    /// Sign-in attempts per client address.
    pub sign_in_limit: RateLimit,
}

/// The ext_authz `Check` implementation.
#[derive(Clone)]
pub struct AuthCheck {
    auth: Authenticator,
    key: IdentityKey,
    clock: Arc<dyn Clock>,
    per_user: Arc<DefaultKeyedRateLimiter<UserId>>,
    sign_ins: Arc<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for AuthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCheck").finish_non_exhaustive()
    }
}

/// A refusal. A gRPC caller reads Envoy's local reply body as its `grpc-message`, so it gets
/// the plain message; any other caller a `google.rpc.Status` JSON body.
fn denied(status: HttpStatusCode, grpc: Status, caller_speaks_grpc: bool) -> CheckResponse {
    let (content_type, body) = if caller_speaks_grpc {
        ("text/plain", grpc.message().to_owned())
    } else {
        (
            "application/json",
            format!(
                "{{\"code\":{},\"message\":{:?}}}",
                i32::from(grpc.code()),
                grpc.message()
            ),
        )
    };
    let mut http: DeniedHttpResponseBuilder = DeniedHttpResponseBuilder::new();
    // For gRPC callers Envoy derives grpc-status from the HTTP status (429 would read as
    // UNAVAILABLE); these headers make it the code the decision means.
    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    http.set_http_status(status)
        .add_header("content-type", content_type, None, false)
        .add_header(
            "grpc-status",
            i32::from(grpc.code()).to_string(),
            overwrite,
            false,
        )
        .add_header(
            "grpc-message",
            percent_encode(grpc.message()),
            overwrite,
            false,
        )
        .set_body(body);
    let mut response = CheckResponse::with_status(grpc);
    response.set_http_response(http.build());
    response
}

/// grpc-message is percent-encoded (the gRPC spec: everything outside printable ASCII and `%`).
fn percent_encode(message: &str) -> String {
    message
        .bytes()
        .map(|b| {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl AuthCheck {
    pub fn new(auth: Authenticator, clock: Arc<dyn Clock>, config: &AuthServiceConfig) -> Self {
        Self {
            auth,
            key: config.identity_key.clone(),
            clock,
            per_user: Arc::new(RateLimiter::keyed(config.rate_limit.quota())),
            sign_ins: Arc::new(RateLimiter::keyed(config.sign_in_limit.quota())),
        }
    }

    /// The decision for one request (what `Check` answers), for tests and the in-process layer;
    /// counted and timed by decision (`chamberlain_auth_checks_total{decision}`).
    pub async fn decide(&self, request: &CheckRequest) -> CheckResponse {
        let started = std::time::Instant::now();
        let (response, decision) = self.decision(request).await;
        let m = chamberlain_telemetry::instruments();
        let attributes = [opentelemetry::KeyValue::new("decision", decision)];
        m.auth_checks.add(1, &attributes);
        m.auth_duration
            .record(started.elapsed().as_secs_f64(), &attributes);
        response
    }

    async fn decision(&self, request: &CheckRequest) -> (CheckResponse, &'static str) {
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let path = http.map_or("", |h| h.path.as_str());
        let caller_speaks_grpc = request
            .get_client_headers()
            .and_then(|h| h.get("content-type"))
            .is_some_and(|t| t.starts_with("application/grpc"));
        let path = path.split('?').next().unwrap_or_default();
        if ANONYMOUS_METHODS.contains(&path) {
            let client = request.get_client_address().cloned().unwrap_or_default();
            if self.sign_ins.check_key(&client).is_err() {
                return (
                    denied(
                        HttpStatusCode::TooManyRequests,
                        Status::resource_exhausted("too many sign-in attempts; wait a moment"),
                        caller_speaks_grpc,
                    ),
                    "rate_limited",
                );
            }
            let mut ok = OkHttpResponseBuilder::new();
            ok.remove_header(IDENTITY_HEADER);
            let mut response = CheckResponse::with_status(Status::ok("anonymous sign-in"));
            response.set_http_response(ok.build());
            return (response, "anonymous");
        }
        let authorization = request
            .get_client_headers()
            .and_then(|h| h.get("authorization"))
            .map(String::as_str);
        match self.auth.authenticate(authorization).await {
            Ok(identity) => {
                if self.per_user.check_key(&identity.actor.user_id).is_err() {
                    return (
                        denied(
                            HttpStatusCode::TooManyRequests,
                            Status::resource_exhausted("rate limit exceeded; slow down"),
                            caller_speaks_grpc,
                        ),
                        "rate_limited",
                    );
                }
                let mut ok: OkHttpResponseBuilder = OkHttpResponseBuilder::new();
                ok.add_header(
                    IDENTITY_HEADER,
                    self.key.sign(&identity, self.clock.now()),
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                )
                .remove_header("authorization");
                let mut response = CheckResponse::with_status(Status::ok("authenticated"));
                response.set_http_response(ok.build());
                (response, "allowed")
            }
            Err(AuthError::Unauthenticated(why)) => (
                denied(
                    HttpStatusCode::Unauthorized,
                    Status::unauthenticated(why.to_string()),
                    caller_speaks_grpc,
                ),
                "unauthenticated",
            ),
            Err(AuthError::Unavailable { message }) => {
                tracing::warn!(error = %message, "token store unavailable; refusing");
                (
                    denied(
                        HttpStatusCode::ServiceUnavailable,
                        Status::unavailable("authentication unavailable; retry later"),
                        caller_speaks_grpc,
                    ),
                    "unavailable",
                )
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for AuthCheck {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.decide(request.get_ref()).await))
    }
}

/// Serves `Check` (and gRPC health) on `listener` until `shutdown` resolves.
///
/// # Errors
/// The transport's error if the server fails.
pub async fn serve(
    check: AuthCheck,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            "envoy.service.auth.v3.Authorization",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AuthorizationServer::new(check))
        .serve_with_incoming_shutdown(no_delay(listener), shutdown)
        .await
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
