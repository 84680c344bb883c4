#![doc = include_str!("../README.md")]

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::ports::{Admission, Bucket, Clock, Rate, RateLimiter};
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
use ipnet::IpNet;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

mod client;

pub use client::{client_address, parse_networks};

const fn rate(per_second: u32, burst: u32) -> Rate {
    const fn at_least_one(n: u32) -> NonZeroU32 {
        match NonZeroU32::new(n) {
            Some(n) => n,
            None => NonZeroU32::MIN,
        }
    }
    Rate {
        per_second: at_least_one(per_second),
        burst: at_least_one(burst),
    }
}

/// Calls per user by default: 50 a second sustained, bursts of 100.
pub const DEFAULT_USER_LIMIT: Rate = rate(50, 100);
/// Calls per organization by default (all its users and tokens): 200 a second, bursts of 400.
pub const DEFAULT_ORGANIZATION_LIMIT: Rate = rate(200, 400);
/// Sign-in attempts per client address by default: 1 a second sustained, bursts of 10.
pub const DEFAULT_SIGN_IN_LIMIT: Rate = rate(1, 10);
/// Calls refused as unauthenticated per client address by default: 10 a second, bursts of 20;
/// beyond, they are answered 429 instead of 401.
pub const DEFAULT_UNAUTHENTICATED_LIMIT: Rate = rate(10, 20);

/// The limits the auth service applies, each shared by every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub per_user: Rate,
    pub per_organization: Rate,
    /// Per client address.
    pub sign_in: Rate,
    /// Calls without a valid credential, per client address.
    pub unauthenticated: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_user: DEFAULT_USER_LIMIT,
            per_organization: DEFAULT_ORGANIZATION_LIMIT,
            sign_in: DEFAULT_SIGN_IN_LIMIT,
            unauthenticated: DEFAULT_UNAUTHENTICATED_LIMIT,
        }
    }
}

/// Settings of the auth service.
#[derive(Debug, Clone)]
pub struct AuthServiceConfig {
    pub identity_key: IdentityKey,
    pub limits: RateLimits,
    /// Proxies in front of Envoy whose `x-forwarded-for` entries are believed (see
    /// [`client_address`]); empty: the connection's peer is the client.
    pub trusted_proxies: Vec<IpNet>,
}

/// The shared limits, and this replica's own for when they cannot be reached (the limits then
/// hold per replica instead of failing every call).
#[derive(Clone)]
pub struct Limiters {
    shared: Arc<dyn RateLimiter>,
    local: Arc<dyn RateLimiter>,
    /// When the last warning about the shared limits was logged (one per 10 s at most).
    warned_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters").finish_non_exhaustive()
    }
}

impl Limiters {
    fn warn_now_and_then(&self, e: &chamberlain_domain::ports::AccessError) {
        let mut warned_at = self
            .warned_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *warned_at = Some(std::time::Instant::now());
            tracing::warn!(error = %e, "shared rate limits unavailable; limiting this replica alone");
        }
    }

    pub fn new(shared: Arc<dyn RateLimiter>, local: Arc<dyn RateLimiter>) -> Self {
        Self {
            shared,
            local,
            warned_at: Arc::default(),
        }
    }

    async fn admit(&self, buckets: &[Bucket]) -> Admission {
        match self.shared.admit(buckets).await {
            Ok(admission) => admission,
            Err(e) => {
                self.warn_now_and_then(&e);
                self.local
                    .admit(buckets)
                    .await
                    .unwrap_or(Admission::Admitted)
            }
        }
    }
}

/// The ext_authz `Check` implementation.
#[derive(Clone)]
pub struct AuthCheck {
    auth: Authenticator,
    key: IdentityKey,
    clock: Arc<dyn Clock>,
    limiters: Limiters,
    limits: RateLimits,
    trusted_proxies: Arc<[IpNet]>,
}

impl std::fmt::Debug for AuthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCheck").finish_non_exhaustive()
    }
}

/// 429 / `RESOURCE_EXHAUSTED` with when to retry (`retry-after`, whole seconds, at least 1).
fn rate_limited(message: &str, retry_after: Duration, caller_speaks_grpc: bool) -> CheckResponse {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = denied(
        HttpStatusCode::TooManyRequests,
        Status::resource_exhausted(format!("{message}; retry in {}s", seconds.max(1))),
        caller_speaks_grpc,
    );
    if let Some(http) = response.http_response.as_mut()
        && let envoy_types::ext_authz::v3::pb::HttpResponse::DeniedResponse(d) = http
    {
        d.headers.push(
            envoy_types::pb::envoy::config::core::v3::HeaderValueOption {
                header: Some(envoy_types::pb::envoy::config::core::v3::HeaderValue {
                    key: "retry-after".into(),
                    value: seconds.max(1).to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    }
    response
}

/// A refusal. A gRPC caller reads Envoy's local reply body as its `grpc-message`, so it gets
/// the plain message; any other caller a `google.rpc.Status` JSON body, printed as Envoy prints
/// the gateway's (every field, `details` empty).
fn denied(status: HttpStatusCode, grpc: Status, caller_speaks_grpc: bool) -> CheckResponse {
    let (content_type, body) = if caller_speaks_grpc {
        ("text/plain", grpc.message().to_owned())
    } else {
        (
            "application/json",
            serde_json::json!({
                "code": i32::from(grpc.code()),
                "message": grpc.message(),
                "details": [],
            })
            .to_string(),
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
    pub fn new(
        auth: Authenticator,
        clock: Arc<dyn Clock>,
        limiters: Limiters,
        config: &AuthServiceConfig,
    ) -> Self {
        Self {
            auth,
            key: config.identity_key.clone(),
            clock,
            limiters,
            limits: config.limits,
            trusted_proxies: config.trusted_proxies.clone().into(),
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
        let client = client_address(
            request.get_client_address().map(String::as_str),
            request
                .get_client_headers()
                .and_then(|h| h.get("x-forwarded-for"))
                .map(String::as_str),
            &self.trusted_proxies,
        )
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        tracing::debug!(
            peer = ?request.get_client_address(),
            forwarded_for = ?request.get_client_headers().and_then(|h| h.get("x-forwarded-for")),
            client,
            "client address"
        );
        if ANONYMOUS_METHODS.contains(&path) {
            let bucket = Bucket {
                key: format!("sign-in:{client}"),
                rate: self.limits.sign_in,
            };
            if let Admission::Refused { retry_after, .. } = self.limiters.admit(&[bucket]).await {
                return (
                    rate_limited(
                        "too many sign-in attempts from your address",
                        retry_after,
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
                let buckets = [
                    Bucket {
                        key: format!("user:{}", identity.actor.user_id),
                        rate: self.limits.per_user,
                    },
                    Bucket {
                        key: format!("organization:{}", identity.actor.organization_id),
                        rate: self.limits.per_organization,
                    },
                ];
                if let Admission::Refused {
                    bucket,
                    retry_after,
                } = self.limiters.admit(&buckets).await
                {
                    let whose = if bucket == 0 {
                        "your user's"
                    } else {
                        "your organization's"
                    };
                    return (
                        rate_limited(
                            &format!("{whose} rate limit exceeded; slow down"),
                            retry_after,
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
            Err(AuthError::Unauthenticated(why)) => {
                let bucket = Bucket {
                    key: format!("unauthenticated:{client}"),
                    rate: self.limits.unauthenticated,
                };
                if let Admission::Refused { retry_after, .. } = self.limiters.admit(&[bucket]).await
                {
                    return (
                        rate_limited(
                            "too many unauthenticated calls from your address",
                            retry_after,
                            caller_speaks_grpc,
                        ),
                        "rate_limited",
                    );
                }
                (
                    denied(
                        HttpStatusCode::Unauthorized,
                        Status::unauthenticated(why.to_string()),
                        caller_speaks_grpc,
                    ),
                    "unauthenticated",
                )
            }
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
