#![doc = include_str!("../README.md")]

mod codec;
pub mod request;
pub mod rules;
pub mod template;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::any;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic_types::{ErrorDetails, StatusExt};

use crate::codec::DynamicCodec;
use crate::rules::{Binding, RulesError};

/// The message for a path no rule serves (Envoy's route for it says the same).
pub const NO_SUCH_ROUTE: &str = "no such route: see docs/API.md for the JSON routes";

/// The largest body read by default (the gateway's largest message, 4 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Serves the JSON API by calling the gRPC API on a channel.
#[derive(Clone)]
pub struct Transcoder {
    inner: Arc<Inner>,
}

struct Inner {
    bindings: Vec<Binding>,
    pool: DescriptorPool,
    channel: Channel,
    max_body_bytes: usize,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("routes", &self.inner.bindings.len())
            .finish_non_exhaustive()
    }
}

/// The transcoder cannot start: its descriptor set does not describe a servable API.
#[derive(Debug, thiserror::Error)]
pub enum TranscoderError {
    #[error("the descriptor set does not decode: {0}")]
    Descriptor(#[from] prost_reflect::DescriptorError),
    #[error(transparent)]
    Rules(#[from] RulesError),
}

impl Transcoder {
    /// The API's routes (from `chamberlain_proto`'s descriptor set), calling `channel`.
    ///
    /// # Errors
    /// A [`TranscoderError`] if a rule cannot be served (a build defect, caught by the tests).
    pub fn new(channel: Channel) -> Result<Self, TranscoderError> {
        Self::from_descriptor_set(
            chamberlain_proto::FILE_DESCRIPTOR_SET,
            &chamberlain_proto::SERVICES,
            channel,
        )
    }

    /// The routes of `services` in an encoded descriptor set, calling `channel`.
    ///
    /// # Errors
    /// A [`TranscoderError`] if the set does not decode or a rule cannot be served.
    pub fn from_descriptor_set(
        descriptor_set: &[u8],
        services: &[&str],
        channel: Channel,
    ) -> Result<Self, TranscoderError> {
        let pool = DescriptorPool::decode(descriptor_set)?;
        let bindings = rules::bindings(&pool, services)?;
        Ok(Self {
            inner: Arc::new(Inner {
                bindings,
                pool,
                channel,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            }),
        })
    }

    /// How many HTTP routes the rules give.
    #[must_use]
    pub fn route_count(&self) -> usize {
        self.inner.bindings.len()
    }

    /// Every path under `/v1/`, to merge beside other routes.
    pub fn router(&self) -> Router {
        let transcoder = self.clone();
        let handler = any(move |request: Request<Body>| {
            let transcoder = transcoder.clone();
            async move { transcoder.call(request).await }
        });
        Router::new()
            .route("/v1", handler.clone())
            .route("/v1/{*rest}", handler)
    }

    /// Answers one HTTP request.
    pub async fn call(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        // A known path with another method is no route either, as through Envoy.
        let Some((binding, bound)) = rules::route(&self.inner.bindings, &parts.method, path) else {
            return self.error(&tonic::Status::not_found(NO_SUCH_ROUTE));
        };
        let body = match http_body_util::Limited::new(body, self.inner.max_body_bytes)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return self.error(&tonic::Status::invalid_argument(format!(
                    "the body cannot be read: {e} (at most {} bytes)",
                    self.inner.max_body_bytes
                )));
            }
        };
        let messages = match request::messages(binding, &bound, parts.uri.query(), &body) {
            Ok(messages) => messages,
            Err(refusal) => return self.error(&refused(&refusal)),
        };
        match self.forward(binding, &parts.headers, messages).await {
            Ok(response) => response,
            Err(status) => self.error(&status),
        }
    }

    async fn forward(
        &self,
        binding: &Binding,
        headers: &HeaderMap,
        messages: Vec<DynamicMessage>,
    ) -> Result<Response<Body>, tonic::Status> {
        let rpc = &binding.rpc;
        let path = http::uri::PathAndQuery::try_from(format!(
            "/{}/{}",
            rpc.parent_service().full_name(),
            rpc.name()
        ))
        .map_err(|e| tonic::Status::internal(format!("method path: {e}")))?;
        let codec = DynamicCodec {
            output: rpc.output(),
        };
        let mut grpc = tonic::client::Grpc::new(self.inner.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("the API is unavailable: {e}")))?;
        let request = tonic::Request::from_parts(
            metadata_from(headers),
            tonic::Extensions::default(),
            tokio_stream::iter(messages),
        );
        let options = self.print_options();
        if rpc.output().full_name() == HTTP_BODY {
            return http_body_reply(&mut grpc, request, path, codec, rpc.is_server_streaming())
                .await;
        }
        if rpc.is_server_streaming() {
            let reply = grpc.streaming(request, path, codec).await?;
            let (metadata, stream, _) = reply.into_parts();
            let mut first = true;
            let elements = stream.map(move |item| match item {
                Ok(message) => {
                    let separator = if std::mem::take(&mut first) { "" } else { "," };
                    let json = to_json(&message, &options);
                    Ok(Bytes::from(format!("{separator}{json}")))
                }
                Err(status) => {
                    // The reply has begun with 200: cutting the body short is how an HTTP
                    // client learns the stream failed.
                    tracing::debug!(code = ?status.code(), "a JSON stream ended with an error");
                    Err(std::io::Error::other(status.message().to_owned()))
                }
            });
            let body = tokio_stream::once(Ok(Bytes::from_static(b"[")))
                .chain(elements)
                .chain(tokio_stream::once(Ok(Bytes::from_static(b"]"))));
            Ok(json_response(
                StatusCode::OK,
                &metadata,
                Body::from_stream(body),
            ))
        } else {
            let reply = grpc.client_streaming(request, path, codec).await?;
            let (metadata, message, _) = reply.into_parts();
            Ok(json_response(
                StatusCode::OK,
                &metadata,
                Body::from(to_json(&message, &options)),
            ))
        }
    }

    fn print_options(&self) -> SerializeOptions {
        SerializeOptions::new()
            .use_proto_field_name(true)
            .skip_default_fields(false)
    }

    /// A `google.rpc.Status` body printed as replies are (every field: an empty `details` too,
    /// as Envoy prints the gateway's): the gateway's own when it sent one
    /// (`grpc-status-details-bin`), else its code and message.
    fn error(&self, status: &tonic::Status) -> Response<Body> {
        let descriptor = self
            .inner
            .pool
            .get_message_by_name("google.rpc.Status")
            .expect("the descriptor set holds google.rpc.Status");
        let sent = if status.details().is_empty() {
            None
        } else {
            DynamicMessage::decode(descriptor.clone(), status.details())
                .inspect_err(|e| tracing::debug!(error = %e, "undecodable status details"))
                .ok()
        };
        let message = sent.unwrap_or_else(|| {
            let mut message = DynamicMessage::new(descriptor);
            message.set_field_by_name("code", prost_reflect::Value::I32(status.code() as i32));
            message.set_field_by_name(
                "message",
                prost_reflect::Value::String(status.message().to_owned()),
            );
            message
        });
        json_response(
            http_status(status.code()),
            status.metadata(),
            Body::from(to_json(&message, &self.print_options())),
        )
    }
}

/// `INVALID_ARGUMENT` for a request that does not read, with a `google.rpc.BadRequest` naming
/// the field when there is one, as the gateway's own refusals do.
fn refused(refusal: &request::Refusal) -> tonic::Status {
    match &refusal.field {
        Some(field) => tonic::Status::with_error_details(
            Code::InvalidArgument,
            refusal.to_string(),
            ErrorDetails::with_bad_request_violation(field, &refusal.description),
        ),
        None => tonic::Status::invalid_argument(refusal.to_string()),
    }
}

/// A message as proto3 JSON. A whole `double` prints without a fraction (`100`, not `100.0`),
/// as protobuf's printer in Envoy does.
fn to_json(message: &DynamicMessage, options: &SerializeOptions) -> String {
    match message.serialize_with_options(serde_json::value::Serializer, options) {
        Ok(mut value) => {
            whole_numbers_without_fraction(&mut value);
            value.to_string()
        }
        Err(e) => {
            tracing::error!(error = %e, "a reply does not serialize as JSON");
            format!(
                r#"{{"code":13,"message":{}}}"#,
                serde_json::Value::String(format!("the reply does not serialize: {e}"))
            )
        }
    }
}

/// Below 10^15 protobuf prints a whole double as an integer; above, with an exponent, as
/// serde_json does.
fn whole_numbers_without_fraction(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
                && f.abs() < 1e15
            {
                #[allow(clippy::cast_possible_truncation, reason = "whole and below 10^15")]
                let whole = f as i64;
                *n = whole.into();
            }
        }
        serde_json::Value::Array(items) => {
            items.iter_mut().for_each(whole_numbers_without_fraction)
        }
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(whole_numbers_without_fraction)
        }
        _ => {}
    }
}

/// Headers a JSON caller sends that are not the call's metadata.
fn is_transport_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "host"
            | "content-type"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "accept"
            | "accept-encoding"
            | "cookie"
            | "expect"
    ) || name.starts_with("proxy-")
        || (name.starts_with("grpc-") && name != "grpc-timeout")
}

fn metadata_from(headers: &HeaderMap) -> MetadataMap {
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !is_transport_header(name) {
            kept.append(name.clone(), value.clone());
        }
    }
    MetadataMap::from_headers(kept)
}

/// A method returning `google.api.HttpBody` answers its `data` as the body, with its
/// `content_type`; a stream of them is one body, the first message's content type for all, as
/// Envoy does.
const HTTP_BODY: &str = "google.api.HttpBody";

async fn http_body_reply(
    grpc: &mut tonic::client::Grpc<Channel>,
    request: tonic::Request<tokio_stream::Iter<std::vec::IntoIter<DynamicMessage>>>,
    path: http::uri::PathAndQuery,
    codec: DynamicCodec,
    streaming: bool,
) -> Result<Response<Body>, tonic::Status> {
    fn part(message: &DynamicMessage, field: &str) -> Option<prost_reflect::Value> {
        message
            .get_field_by_name(field)
            .map(std::borrow::Cow::into_owned)
    }
    fn data(message: &DynamicMessage) -> Bytes {
        match part(message, "data") {
            Some(prost_reflect::Value::Bytes(bytes)) => bytes,
            _ => Bytes::new(),
        }
    }
    let content_type = |message: Option<&DynamicMessage>| {
        let declared = match message.and_then(|m| part(m, "content_type")) {
            Some(prost_reflect::Value::String(s)) if !s.is_empty() => s,
            _ => "application/octet-stream".to_owned(),
        };
        HeaderValue::try_from(declared)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
    };
    let (metadata, body, first) = if streaming {
        let (metadata, mut stream, _) = grpc.streaming(request, path, codec).await?.into_parts();
        // The first message decides the content type, so it is awaited before answering (an
        // error before it is an error status, not a broken body).
        let first = stream.next().await.transpose()?;
        let head = first.as_ref().map(data).unwrap_or_default();
        let rest = stream.map(|item| match item {
            Ok(message) => Ok(data(&message)),
            Err(status) => {
                tracing::debug!(code = ?status.code(), "a download ended with an error");
                Err(std::io::Error::other(status.message().to_owned()))
            }
        });
        let body = Body::from_stream(tokio_stream::once(Ok(head)).chain(rest));
        (metadata, body, first)
    } else {
        let (metadata, message, _) = grpc
            .client_streaming(request, path, codec)
            .await?
            .into_parts();
        let body = Body::from(data(&message));
        (metadata, body, Some(message))
    };
    let mut response = json_response(StatusCode::OK, &metadata, body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, content_type(first.as_ref()));
    Ok(response)
}

fn json_response(status: StatusCode, metadata: &MetadataMap, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in metadata.clone().into_headers() {
        if let Some(name) = name
            && !name.as_str().starts_with("grpc-")
            && !is_transport_header(&name)
        {
            headers.append(name, value);
        }
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The HTTP status Envoy gives a gRPC code (`Grpc::Utility::grpcToHttpStatus`).
#[must_use]
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a status code"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
