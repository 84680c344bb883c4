//! Flag and column values as typed: durations, points in time and time ranges, detector specs
//! (`chambers add --detector` and the `detectors` column of an import share them).

use chamberlain_proto::v1;

use crate::failure::Failure;

/// A duration as typed (`5s`, `1m30s`, `500ms`), named `flag` in errors.
pub(crate) fn parse_duration(flag: &str, raw: &str) -> Result<prost_types::Duration, Failure> {
    let d = humantime::parse_duration(raw.trim())
        .map_err(|e| Failure::usage(format!("{flag}: {e} (e.g. 5s, 1m30s, 500ms)")))?;
    Ok(prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    })
}

/// A point in time: RFC 3339 (`2026-12-02T10:00:00Z`), `now`, or a duration ago (`1h`).
pub(crate) fn parse_time(flag: &str, raw: &str) -> Result<prost_types::Timestamp, Failure> {
    let raw = raw.trim();
    let now = time::OffsetDateTime::now_utc();
    let at = if raw == "now" {
        now
    } else if let Ok(at) =
        time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
    {
        at
    } else if let Ok(ago) = humantime::parse_duration(raw) {
        now - ago
    } else {
        return Err(Failure::usage(format!(
            "{flag}: {raw:?} is neither RFC 3339 (2026-12-02T10:00:00Z), `now`, nor a duration ago (1h)"
        )));
    };
    let nanos = at.unix_timestamp_nanos();
    Ok(prost_types::Timestamp {
        seconds: i64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    })
}

/// A time range: `--from` (default 1h ago) to `--to` (default now).
#[derive(Debug, Clone, clap::Args)]
pub struct Range {
    /// RFC 3339, `now`, or a duration ago (`1h`, `30m`).
    #[arg(long, default_value = "1h")]
    from: String,
    #[arg(long, default_value = "now")]
    to: String,
}

impl Range {
    pub(crate) fn parse(
        &self,
    ) -> Result<(prost_types::Timestamp, prost_types::Timestamp), Failure> {
        Ok((
            parse_time("--from", &self.from)?,
            parse_time("--to", &self.to)?,
        ))
    }
}

/// A detector written as `key=name[:unit]`: the key is everything before the last `=`.
pub(crate) fn detector_spec(spec: &str) -> Result<v1::NewDetector, String> {
    let (key, rest) = spec
        .trim()
        .rsplit_once('=')
        .ok_or_else(|| format!("{spec:?} is not key=name[:unit]"))?;
    let (name, unit) = rest.split_once(':').unwrap_or((rest, ""));
    if key.trim().is_empty() || name.trim().is_empty() {
        return Err(format!("{spec:?} is not key=name[:unit]"));
    }
    Ok(v1::NewDetector {
        key: key.trim().to_owned(),
        name: name.trim().to_owned(),
        unit: unit.trim().to_owned(),
        ..Default::default()
    })
}
