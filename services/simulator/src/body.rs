//! Detector values and the response bodies that carry them.

use std::convert::Infallible;
use std::f64::consts::TAU;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::config::CorruptKind;
use crate::dice::mix;

/// The Prometheus metric every detector value is a sample of.
pub const METRIC_NAME: &str = "chamber_detector_value";

/// The two response formats a chamber speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `GET /chambers/{i}`:
    /// `{"chamber":i,"detectors":[{"name":"d0","value":21.374},...]}`.
    Json,
    /// `GET /chambers/{i}/metrics`: `chamber_detector_value{detector="d0"} 21.374`, one
    /// line per detector, after `# HELP` and `# TYPE`.
    Prometheus,
}

/// The value that detector `detector` of chamber `chamber` reports for the poll of slot
/// `slot_unix_ms`: `20 + 5·sin(2π·slot/period + phase)` with a period (1 to 5 minutes) and
/// phase of its own, rounded to 0.001.
///
/// The body carries exactly three decimals, so the value parsed from it is equal (`==`) to
/// this one. A request without a `chamberlain-slot` header is answered for the slot of its
/// arrival (unix ms).
pub fn expected_value(chamber: u32, detector: u32, slot_unix_ms: i64) -> f64 {
    expected_milli(chamber, detector, slot_unix_ms) as f64 / 1000.0
}

/// [`expected_value`] in thousandths.
fn expected_milli(chamber: u32, detector: u32, slot_unix_ms: i64) -> i64 {
    let hash = mix((u64::from(chamber) << 32) | u64::from(detector));
    let period_ms = 60_000 + (hash % 240_001) as i64;
    let phase = (hash >> 40) as f64 / (1u64 << 24) as f64 * TAU;
    let t = slot_unix_ms.rem_euclid(period_ms) as f64 / period_ms as f64;
    let value = 20.0 + 5.0 * (TAU * t + phase).sin();
    (value * 1000.0).round() as i64
}

/// The key that picks detector `detector`'s value out of a body of `format`: the JSON
/// pointer `/detectors/{detector}/value`, or the metric selector
/// `chamber_detector_value{detector="d{detector}"}`.
pub fn detector_key(format: Format, detector: u32) -> String {
    match format {
        Format::Json => format!("/detectors/{detector}/value"),
        Format::Prometheus => format!("{METRIC_NAME}{{detector=\"d{detector}\"}}"),
    }
}

/// The detector that a [`CorruptKind::NaN`] or [`CorruptKind::MissingDetector`] corruption
/// hits: the last one, so that leaving it out of the JSON array shifts no other detector's
/// index.
pub fn corrupted_detector(detectors: u32) -> u32 {
    detectors.saturating_sub(1)
}

/// What to write into one body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    pub(crate) chamber: u32,
    pub(crate) detectors: u32,
    pub(crate) slot_unix_ms: i64,
}

/// The body of a normal or corrupted answer.
pub(crate) fn render(format: Format, reading: Reading, corruption: Option<CorruptKind>) -> Vec<u8> {
    let per_detector = match format {
        Format::Json => 40,
        Format::Prometheus => 48,
    };
    let mut out = Vec::with_capacity(128 + reading.detectors as usize * per_detector);
    let target = corrupted_detector(reading.detectors);
    let nan = (corruption == Some(CorruptKind::NaN)).then_some(target);
    let missing = (corruption == Some(CorruptKind::MissingDetector)).then_some(target);
    match format {
        Format::Json => render_json(&mut out, reading, nan, missing),
        Format::Prometheus => render_prometheus(&mut out, reading, nan, missing),
    }
    if corruption == Some(CorruptKind::Garbage) {
        match format {
            // Truncated: the closing brackets are gone, so it is not a JSON document.
            Format::Json => out.truncate(out.len() / 2),
            // The Prometheus parser takes any UTF-8 line by line; only bytes that are not
            // UTF-8 make the whole body unusable.
            Format::Prometheus => {
                out.splice(0..0, *b"\xff\xfe<garbage>\x00");
            }
        }
    }
    out
}

fn render_json(out: &mut Vec<u8>, reading: Reading, nan: Option<u32>, missing: Option<u32>) {
    out.extend_from_slice(b"{\"chamber\":");
    push_u64(out, u64::from(reading.chamber));
    out.extend_from_slice(b",\"detectors\":[");
    let mut first = true;
    for detector in 0..reading.detectors {
        if missing == Some(detector) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(b"{\"name\":\"d");
        push_u64(out, u64::from(detector));
        out.extend_from_slice(b"\",\"value\":");
        if nan == Some(detector) {
            out.extend_from_slice(b"\"NaN\"");
        } else {
            push_milli(
                out,
                expected_milli(reading.chamber, detector, reading.slot_unix_ms),
            );
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

fn render_prometheus(out: &mut Vec<u8>, reading: Reading, nan: Option<u32>, missing: Option<u32>) {
    out.extend_from_slice(
        b"# HELP chamber_detector_value Current value of a simulated detector.\n\
          # TYPE chamber_detector_value gauge\n",
    );
    for detector in 0..reading.detectors {
        if missing == Some(detector) {
            continue;
        }
        out.extend_from_slice(b"chamber_detector_value{detector=\"d");
        push_u64(out, u64::from(detector));
        out.extend_from_slice(b"\"} ");
        if nan == Some(detector) {
            out.extend_from_slice(b"NaN");
        } else {
            push_milli(
                out,
                expected_milli(reading.chamber, detector, reading.slot_unix_ms),
            );
        }
        out.push(b'\n');
    }
}

/// Writes `n` in decimal.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Writes `milli / 1000` with exactly three decimals.
fn push_milli(out: &mut Vec<u8>, milli: i64) {
    if milli < 0 {
        out.push(b'-');
    }
    let abs = milli.unsigned_abs();
    push_u64(out, abs / 1000);
    let frac = abs % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// A body padded to at least `bytes` bytes, as [`SimBody::Padded`] streams it.
pub(crate) fn oversized(format: Format, reading: Reading, bytes: u64) -> SimBody {
    let mut prefix = render(format, reading, None);
    let (chunk, suffix): (&Bytes, &'static [u8]) = match format {
        Format::Json => {
            prefix.pop(); // the closing brace
            prefix.extend_from_slice(b",\"padding\":\"");
            (padding_chunk(b"xxxxxxxx", &JSON_PADDING), b"\"}")
        }
        Format::Prometheus => (
            padding_chunk(
                b"# padding xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
                &PROMETHEUS_PADDING,
            ),
            b"\n",
        ),
    };
    let fixed = (prefix.len() + suffix.len()) as u64;
    SimBody::Padded {
        prefix: Some(Bytes::from(prefix)),
        remaining: bytes.saturating_sub(fixed),
        chunk: chunk.clone(),
        suffix: Some(Bytes::from_static(suffix)),
    }
}

/// Size of one frame of padding.
const PADDING_CHUNK: usize = 64 * 1024;
static JSON_PADDING: OnceLock<Bytes> = OnceLock::new();
static PROMETHEUS_PADDING: OnceLock<Bytes> = OnceLock::new();

/// [`PADDING_CHUNK`] bytes of `pattern` repeated (built once). Any prefix of the Prometheus
/// chunk is comment lines, so a cut anywhere leaves the body well-formed.
fn padding_chunk<'a>(pattern: &[u8], cell: &'a OnceLock<Bytes>) -> &'a Bytes {
    cell.get_or_init(|| {
        Bytes::from(
            pattern
                .iter()
                .copied()
                .cycle()
                .take(PADDING_CHUNK)
                .collect::<Vec<u8>>(),
        )
    })
}

/// A response body: in one piece, or streamed without a known length.
#[derive(Debug)]
pub(crate) enum SimBody {
    /// The whole body (sent with `Content-Length`).
    Full(Option<Bytes>),
    /// `prefix`, then `remaining` bytes of repeated `chunk`, then `suffix`, with chunked
    /// transfer encoding.
    Padded {
        prefix: Option<Bytes>,
        remaining: u64,
        chunk: Bytes,
        suffix: Option<Bytes>,
    },
}

impl SimBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = match self.get_mut() {
            Self::Full(bytes) => bytes.take(),
            Self::Padded {
                prefix,
                remaining,
                chunk,
                suffix,
            } => prefix.take().or_else(|| {
                if *remaining > 0 {
                    let n = (*remaining).min(chunk.len() as u64);
                    *remaining -= n;
                    Some(chunk.slice(..n as usize))
                } else {
                    suffix.take()
                }
            }),
        };
        Poll::Ready(next.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Padded {
                prefix,
                remaining,
                suffix,
                ..
            } => prefix.is_none() && *remaining == 0 && suffix.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Padded { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> Reading {
        Reading {
            chamber: 7,
            detectors: 3,
            slot_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn values_are_deterministic_thousandths_in_range() {
        for chamber in [0, 1, 99_999] {
            for detector in [0, 1, 999] {
                for slot in [-5_000, 0, 1_000, 1_700_000_000_000] {
                    let value = expected_value(chamber, detector, slot);
                    assert_eq!(value, expected_value(chamber, detector, slot));
                    assert!((15.0..=25.0).contains(&value), "{value}");
                    assert_eq!((value * 1000.0).round() / 1000.0, value);
                }
            }
        }
        assert_ne!(expected_value(0, 0, 0), expected_value(0, 1, 0));
        assert_ne!(expected_value(0, 0, 0), expected_value(0, 0, 10_000));
    }

    #[test]
    fn milli_is_written_with_three_decimals() {
        let written = |milli| {
            let mut out = Vec::new();
            push_milli(&mut out, milli);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(written(21_374), "21.374");
        assert_eq!(written(21_070), "21.070");
        assert_eq!(written(5), "0.005");
        assert_eq!(written(-1_500), "-1.500");
        assert_eq!(written(0), "0.000");
        let mut out = Vec::new();
        push_u64(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn json_body_shape() {
        let r = reading();
        let body = String::from_utf8(render(Format::Json, r, None)).unwrap();
        let expected = format!(
            "{{\"chamber\":7,\"detectors\":[{{\"name\":\"d0\",\"value\":{}}},{{\"name\":\"d1\",\"value\":{}}},{{\"name\":\"d2\",\"value\":{}}}]}}",
            expected_value(7, 0, r.slot_unix_ms),
            expected_value(7, 1, r.slot_unix_ms),
            expected_value(7, 2, r.slot_unix_ms),
        );
        // Display of the f64 drops trailing zeros; compare the parsed documents.
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        let wanted: serde_json::Value = serde_json::from_str(&expected).unwrap();
        assert_eq!(parsed, wanted);
    }

    #[test]
    fn corruptions_hit_the_last_detector() {
        let r = reading();
        let nan = String::from_utf8(render(Format::Json, r, Some(CorruptKind::NaN))).unwrap();
        assert!(nan.contains("{\"name\":\"d2\",\"value\":\"NaN\"}"), "{nan}");
        let missing =
            String::from_utf8(render(Format::Json, r, Some(CorruptKind::MissingDetector))).unwrap();
        assert!(
            missing.contains("\"d1\"") && !missing.contains("\"d2\""),
            "{missing}"
        );
        assert!(missing.ends_with("}]}"), "{missing}");
        let prom =
            String::from_utf8(render(Format::Prometheus, r, Some(CorruptKind::NaN))).unwrap();
        assert!(
            prom.contains("chamber_detector_value{detector=\"d2\"} NaN\n"),
            "{prom}"
        );
        let garbage = render(Format::Prometheus, r, Some(CorruptKind::Garbage));
        assert!(std::str::from_utf8(&garbage).is_err());
    }

    #[test]
    fn padded_body_streams_at_least_the_size() {
        let mut body = oversized(Format::Json, reading(), 200_000);
        assert_eq!(body.size_hint().exact(), None);
        let mut all = Vec::new();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            all.extend_from_slice(frame.data_ref().unwrap());
        }
        assert!(body.is_end_stream());
        assert_eq!(all.len(), 200_000);
        let parsed: serde_json::Value = serde_json::from_slice(&all).unwrap();
        assert_eq!(parsed["chamber"], 7);
    }

    #[test]
    fn detector_keys() {
        assert_eq!(detector_key(Format::Json, 3), "/detectors/3/value");
        assert_eq!(
            detector_key(Format::Prometheus, 3),
            "chamber_detector_value{detector=\"d3\"}"
        );
    }
}
