#![doc = include_str!("../README.md")]

mod context;
mod export;
mod http;
mod instruments;
mod prometheus;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use context::{continue_trace, continue_trace_from_headers, trace_context_of};
pub use export::{ExportHealth, QueueSettings, QueueingSpanProcessor, SpanCounts};

static EXPORT_HEALTH: std::sync::OnceLock<Arc<ExportHealth>> = std::sync::OnceLock::new();

/// Whether a poll should be traced now: traces are exported and the collector takes them (not
/// paused after a failed export). Services check it before making a poll's spans.
pub fn traces_wanted() -> bool {
    EXPORT_HEALTH.get().is_some_and(|h| h.wanted())
}
/// What the trace exporter sees: only Chamberlain's own spans and events (never the exporter's
/// own gRPC calls), nothing while the collector is failing (paused), nothing below `level`
/// (`CHAMBERLAIN_TRACE_LEVEL`: `info` by default, `debug` adds the `db` span of every repository
/// call), and below INFO only inside a span already traced: a query outside any traced work
/// makes no trace of its own, and costs nothing when nobody traces.
fn traced<S>(
    level: tracing::Level,
    meta: &tracing::Metadata<'_>,
    cx: &tracing_subscriber::layer::Context<'_, S>,
) -> bool
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !meta.target().starts_with("chamberlain") || *meta.level() > level || !traces_wanted() {
        return false;
    }
    *meta.level() <= tracing::Level::INFO || cx.lookup_current().is_some()
}

/// The most detailed spans exported: `CHAMBERLAIN_TRACE_LEVEL` (`info`, the default, or
/// `debug`).
///
/// # Errors
/// [`TelemetryError::Setting`] naming the variable for any other value.
pub fn trace_level(raw: Option<&str>) -> Result<tracing::Level, TelemetryError> {
    match raw.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
        None | Some("" | "info") => Ok(tracing::Level::INFO),
        Some("debug") => Ok(tracing::Level::DEBUG),
        Some(other) => Err(TelemetryError::Setting {
            name: "CHAMBERLAIN_TRACE_LEVEL",
            why: format!("{other:?} is not one of: info, debug"),
        }),
    }
}

pub use http::serve_metrics;
pub use instruments::{Instruments, instruments};
pub use prometheus::{PrometheusReader, metric_name};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One readable line per event (the default).
    #[default]
    Human,
    /// One JSON object per event, for log shippers.
    Json,
}

/// Whether human log lines are coloured: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (<https://no-color.org>). Files and pipes get plain text.
pub fn colour_logs(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// What a process sets up.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `service.name` when `OTEL_SERVICE_NAME` does not set one (`chamberlain-worker`, ...).
    pub service: &'static str,
    pub log_format: LogFormat,
    /// The log filter when `CHAMBERLAIN_LOG` is not set.
    pub default_filter: &'static str,
    /// How often metrics are pushed over OTLP (unless `OTEL_METRIC_EXPORT_INTERVAL` says).
    pub metrics_interval: Duration,
}

impl TelemetrySettings {
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            log_format: LogFormat::Human,
            default_filter: "info,sqlx::postgres::notice=warn",
            metrics_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter cannot be built from the `OTEL_EXPORTER_OTLP_*` settings.
    #[error("invalid setting OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    Exporter(String),
    /// A telemetry setting has a value it cannot take.
    #[error("invalid setting {name}: {why}")]
    Setting { name: &'static str, why: String },
    /// A global subscriber was already installed.
    #[error("logging was already set up: {0}")]
    AlreadyInitialized(String),
}

/// The process's telemetry; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meters: SdkMeterProvider,
    prometheus: PrometheusReader,
    spans: Option<Arc<SpanCounts>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("otlp", &self.tracer.is_some())
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

/// Whether the standard variables ask for OTLP export.
fn otlp_requested() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// `service.name` and the other attributes from `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES`, with `default` as the name when neither sets one.
fn resource(default: &'static str) -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|s| {
            s.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    if named {
        Resource::builder().build()
    } else {
        Resource::builder().with_service_name(default).build()
    }
}

impl Telemetry {
    /// Sets up logging (to stderr), metrics (always served as Prometheus text; pushed over OTLP
    /// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set) and traces (exported over OTLP when it is
    /// set). Call once, inside the Tokio runtime.
    ///
    /// # Errors
    /// [`TelemetryError::Exporter`] for unusable `OTEL_EXPORTER_OTLP_*` settings;
    /// [`TelemetryError::Setting`] for a bad `CHAMBERLAIN_TRACE_LEVEL`;
    /// [`TelemetryError::AlreadyInitialized`] on a second call.
    pub fn init(settings: &TelemetrySettings) -> Result<Self, TelemetryError> {
        let otlp = otlp_requested();
        let trace_level = trace_level(std::env::var("CHAMBERLAIN_TRACE_LEVEL").ok().as_deref())?;
        let resource = resource(settings.service);
        let exporter_error = |e: &dyn std::fmt::Display| TelemetryError::Exporter(e.to_string());

        let prometheus = PrometheusReader::default();
        let mut meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(prometheus.clone());
        if otlp {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_timeout(Duration::from_secs(3))
                .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
                .build()
                .map_err(|e| exporter_error(&e))?;
            let mut reader = PeriodicReader::builder(exporter);
            // The standard OTEL_METRIC_EXPORT_INTERVAL (milliseconds) wins when set.
            if std::env::var("OTEL_METRIC_EXPORT_INTERVAL").is_err() {
                reader = reader.with_interval(settings.metrics_interval);
            }
            meters = meters.with_reader(reader.build());
        }
        let meters = meters.build();
        opentelemetry::global::set_meter_provider(meters.clone());
        // Every process's own counters are on /metrics from the start, at 0.
        instruments().spans_dropped.add(0, &[]);
        instruments().traces_skipped.add(0, &[]);
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

        let (tracer, spans) = if otlp {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(Duration::from_secs(3))
                .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
                .build()
                .map_err(|e| exporter_error(&e))?;
            let processor = QueueingSpanProcessor::new(
                exporter,
                tokio::runtime::Handle::current(),
                QueueSettings::default(),
                Arc::new(|n| instruments().spans_dropped.add(n, &[])),
            );
            let spans = processor.counts();
            let _ = EXPORT_HEALTH.set(processor.health());
            let provider = SdkTracerProvider::builder()
                .with_resource(resource)
                .with_span_processor(processor)
                .build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            (Some(provider), Some(spans))
        } else {
            (None, None)
        };

        let filter = EnvFilter::try_from_env("CHAMBERLAIN_LOG")
            .unwrap_or_else(|_| EnvFilter::new(settings.default_filter));
        let logs = match settings.log_format {
            LogFormat::Human => tracing_subscriber::fmt::layer()
                .with_ansi(colour_logs(
                    std::io::IsTerminal::is_terminal(&std::io::stderr()),
                    std::env::var_os("NO_COLOR").as_deref(),
                ))
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .boxed(),
        };
        let traces = tracer.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(settings.service))
                .with_filter(tracing_subscriber::filter::DynFilterFn::new(
                    move |meta, cx| traced(trace_level, meta, cx),
                ))
        });
        tracing_subscriber::registry()
            .with(logs)
            .with(traces)
            .try_init()
            .map_err(|e| TelemetryError::AlreadyInitialized(e.to_string()))?;
        Ok(Self {
            tracer,
            meters,
            prometheus,
            spans,
        })
    }

    /// Whether spans are exported (OTLP was asked for).
    pub fn tracing_exported(&self) -> bool {
        self.tracer.is_some()
    }

    /// The Prometheus view of this process's metrics (for `/metrics`).
    pub fn prometheus(&self) -> PrometheusReader {
        self.prometheus.clone()
    }

    /// Spans exported and dropped so far (`None` without OTLP).
    pub fn span_counts(&self) -> Option<Arc<SpanCounts>> {
        self.spans.clone()
    }

    /// Exports what is buffered and stops the exporters. Blocks for at most a few seconds
    /// (an unreachable collector is given up on): call it from `spawn_blocking`.
    pub fn shutdown(self) {
        if let Some(tracer) = &self.tracer {
            let _ = tracer.force_flush();
            if let Err(e) = tracer.shutdown() {
                tracing::debug!(error = %e, "trace exporter not shut down cleanly");
            }
        }
        let _ = self.meters.force_flush();
        let _ = self.meters.shutdown();
        if let Some(spans) = &self.spans {
            let dropped = spans.dropped.load(std::sync::atomic::Ordering::Relaxed);
            if dropped > 0 {
                eprintln!(
                    "telemetry: {dropped} spans were dropped (collector slow or unreachable)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::{TelemetryError, colour_logs, trace_level};

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour_logs(true, None));
        assert!(colour_logs(true, Some(OsStr::new(""))));
        assert!(!colour_logs(true, Some(OsStr::new("1"))));
        assert!(
            !colour_logs(false, None),
            "a file or a pipe gets plain text"
        );
    }

    #[test]
    fn trace_level_is_info_unless_debug_is_asked_and_names_the_variable_when_wrong() {
        assert_eq!(trace_level(None).unwrap(), tracing::Level::INFO);
        assert_eq!(trace_level(Some("")).unwrap(), tracing::Level::INFO);
        assert_eq!(trace_level(Some(" Debug ")).unwrap(), tracing::Level::DEBUG);
        let err = trace_level(Some("trace")).unwrap_err();
        assert!(matches!(
            err,
            TelemetryError::Setting {
                name: "CHAMBERLAIN_TRACE_LEVEL",
                ..
            }
        ));
        assert!(
            err.to_string()
                .contains("\"trace\" is not one of: info, debug"),
            "{err}"
        );
    }
}
