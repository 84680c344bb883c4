//! The Prometheus text exposition (format 0.0.4) of the process's OpenTelemetry metrics: a
//! [`ManualReader`] next to the OTLP one, collected on every scrape.

use std::fmt::Write as _;
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};

/// A [`ManualReader`] that can be registered with the meter provider and still collected.
#[derive(Debug, Clone)]
pub struct PrometheusReader(Arc<ManualReader>);

impl Default for PrometheusReader {
    fn default() -> Self {
        Self(Arc::new(
            ManualReader::builder()
                .with_temporality(Temporality::Cumulative)
                .build(),
        ))
    }
}

impl MetricReader for PrometheusReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// `chamberlain.polls.scheduled` → `chamberlain_polls_scheduled`.
pub fn metric_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels<'a>(
    attributes: impl Iterator<Item = &'a KeyValue>,
    extra: Option<(&str, &str)>,
) -> String {
    let mut parts: Vec<String> = attributes
        .map(|kv| {
            format!(
                "{}=\"{}\"",
                metric_name(kv.key.as_str()),
                escape(&kv.value.to_string())
            )
        })
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{}\"", escape(v)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Unit suffixes as Prometheus names them (`s` → `_seconds`); other units are left out.
fn unit_suffix(unit: &str) -> &'static str {
    match unit {
        "s" => "_seconds",
        "By" => "_bytes",
        _ => "",
    }
}

fn render_data<T: std::fmt::Display + Copy>(
    out: &mut String,
    base: &str,
    help: &str,
    data: &MetricData<T>,
) {
    let help = escape(help);
    match data {
        MetricData::Sum(sum) => {
            let (kind, name) = if sum.is_monotonic() {
                ("counter", format!("{base}_total"))
            } else {
                ("gauge", base.to_owned())
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for p in sum.data_points() {
                let _ = writeln!(out, "{name}{} {}", labels(p.attributes(), None), p.value());
            }
        }
        MetricData::Gauge(gauge) => {
            let _ = writeln!(out, "# HELP {base} {help}\n# TYPE {base} gauge");
            for p in gauge.data_points() {
                let _ = writeln!(out, "{base}{} {}", labels(p.attributes(), None), p.value());
            }
        }
        MetricData::Histogram(histogram) => {
            let _ = writeln!(out, "# HELP {base} {help}\n# TYPE {base} histogram");
            for p in histogram.data_points() {
                let mut cumulative = 0u64;
                let bounds: Vec<String> = p
                    .bounds()
                    .map(|b| b.to_string())
                    .chain(std::iter::once("+Inf".to_owned()))
                    .collect();
                for (bound, count) in bounds.iter().zip(p.bucket_counts()) {
                    cumulative += count;
                    let _ = writeln!(
                        out,
                        "{base}_bucket{} {cumulative}",
                        labels(p.attributes(), Some(("le", bound)))
                    );
                }
                let plain = labels(p.attributes(), None);
                let _ = writeln!(out, "{base}_sum{plain} {}", p.sum());
                let _ = writeln!(out, "{base}_count{plain} {}", p.count());
            }
        }
        MetricData::ExponentialHistogram(_) => {}
    }
}

impl PrometheusReader {
    /// Collects every instrument now and renders it as Prometheus text.
    pub fn render(&self) -> String {
        let mut rm = ResourceMetrics::default();
        let mut out = String::new();
        if let Err(e) = self.collect(&mut rm) {
            tracing::debug!(error = %e, "metrics not collected");
            return out;
        }
        for scope in rm.scope_metrics() {
            for metric in scope.metrics() {
                let base = format!(
                    "{}{}",
                    metric_name(metric.name()),
                    unit_suffix(metric.unit())
                );
                match metric.data() {
                    AggregatedMetrics::F64(d) => {
                        render_data(&mut out, &base, metric.description(), d)
                    }
                    AggregatedMetrics::U64(d) => {
                        render_data(&mut out, &base, metric.description(), d)
                    }
                    AggregatedMetrics::I64(d) => {
                        render_data(&mut out, &base, metric.description(), d)
                    }
                }
            }
        }
        out
    }
}
