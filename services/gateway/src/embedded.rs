//! [`EmbeddedAuthLayer`]: the authentication decision in-process, for the embedded mode where no
//! Envoy and no auth service run. Every call's `authorization` header goes to the same domain
//! use case the auth service runs ([`Authenticator::authenticate`]); the caller's [`Identity`]
//! is put in the request's extensions, where the API's methods read it. A refused token is
//! answered `UNAUTHENTICATED` without reaching the API; client-sent identity headers are
//! removed, so only this layer vouches for a caller.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chamberlain_domain::usecases::{AuthError, Authenticator};
use chamberlain_grpc::ANONYMOUS_METHODS;
use chamberlain_grpc::identity::IDENTITY_HEADER;
use http::{Request, Response};

/// The layer; `None` inside is the distributed mode (identity comes signed from Envoy's auth
/// service, checked by the gateway's verifier) and passes every call through untouched.
#[derive(Clone, Default)]
pub struct EmbeddedAuthLayer(pub Option<Arc<Authenticator>>);

impl std::fmt::Debug for EmbeddedAuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EmbeddedAuthLayer")
            .field(&self.0.is_some())
            .finish()
    }
}

impl<S> tower_layer::Layer<S> for EmbeddedAuthLayer {
    type Service = EmbeddedAuth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        EmbeddedAuth {
            inner,
            authenticator: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct EmbeddedAuth<S> {
    inner: S,
    authenticator: Option<Arc<Authenticator>>,
}

impl<S> std::fmt::Debug for EmbeddedAuth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedAuth").finish_non_exhaustive()
    }
}

impl<S, B> tower_service::Service<Request<B>> for EmbeddedAuth<S>
where
    S: tower_service::Service<Request<B>, Response = Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(authenticator) = self.authenticator.clone() else {
            return Box::pin(self.inner.call(request));
        };
        // The ready service serves this call; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            request.headers_mut().remove(IDENTITY_HEADER);
            if ANONYMOUS_METHODS.contains(&request.uri().path()) {
                return inner.call(request).await;
            }
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match authenticator.authenticate(authorization.as_deref()).await {
                Ok(identity) => {
                    request.headers_mut().remove(http::header::AUTHORIZATION);
                    request.extensions_mut().insert(identity);
                    inner.call(request).await
                }
                Err(AuthError::Unauthenticated(why)) => {
                    Ok(tonic::Status::unauthenticated(why.to_string()).into_http())
                }
                Err(AuthError::Unavailable { message }) => {
                    tracing::warn!(error = %message, "token store unavailable; refusing");
                    Ok(
                        tonic::Status::unavailable("authentication unavailable; retry later")
                            .into_http(),
                    )
                }
            }
        })
    }
}
