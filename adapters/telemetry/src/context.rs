//! W3C trace context between processes: written into a poll job by the scheduler and read by
//! the worker, and read from the `traceparent` header of an API call.

use std::collections::HashMap;

use chamberlain_domain::model::TraceContext;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace context of `span`, to carry in a job; `None` when the span is not traced (no
/// OpenTelemetry layer, or not sampled).
pub fn trace_context_of(span: &tracing::Span) -> Option<TraceContext> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    Some(TraceContext {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier.remove("tracestate").unwrap_or_default(),
    })
}

/// Makes `span` (not yet entered) a child of the carried context. An invalid context is
/// ignored: the span starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, context: &TraceContext) {
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_owned(), context.traceparent.clone());
    if !context.tracestate.is_empty() {
        carrier.insert("tracestate".to_owned(), context.tracestate.clone());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes `span` (not yet entered) a child of the call's `traceparent` header, if any (Envoy
/// sets one on every call it traces).
pub fn continue_trace_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}
