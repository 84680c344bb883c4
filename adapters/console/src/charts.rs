//! A chamber's charts: each detector's values over a range, aggregated on the server into at
//! most [`MAX_POINTS`] buckets, as JSON for the page's script (uPlot draws them).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chamberlain_domain::Timestamp;
use chamberlain_domain::model::ChamberId;
use chamberlain_domain::ports::ReadingScope;
use serde::{Deserialize, Serialize};

use crate::Console;
use crate::pages::refusal;

/// Points per detector a chart is given at most.
pub(crate) const MAX_POINTS: i64 = 720;

#[derive(Deserialize)]
pub(crate) struct SeriesQuery {
    /// `1h`, `24h` or `7d`; or empty with `from` and `to`.
    #[serde(default)]
    range: String,
    /// RFC 3339.
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

impl SeriesQuery {
    /// Neither a named range nor `from` and `to`.
    pub(crate) fn is_empty(&self) -> bool {
        self.range.is_empty() && self.from.is_empty() && self.to.is_empty()
    }
}

#[derive(Serialize)]
struct DetectorInfo {
    id: String,
    name: String,
    unit: String,
}

/// Columns for uPlot: `t` in Unix seconds, then one value list per detector (`null` where a
/// bucket had no measured value).
#[derive(Serialize)]
struct Series {
    from: i64,
    to: i64,
    /// Bucket width, seconds.
    bucket: u64,
    detectors: Vec<DetectorInfo>,
    t: Vec<f64>,
    values: Vec<Vec<Option<f64>>>,
}

fn bad(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// The range asked for, ending now unless `from` and `to` are given.
pub(crate) fn range(
    query: &SeriesQuery,
    now: Timestamp,
) -> Result<(Timestamp, Timestamp), &'static str> {
    let hours = match query.range.as_str() {
        "1h" => Some(1),
        "24h" => Some(24),
        "7d" => Some(24 * 7),
        "" => None,
        _ => return Err("range: one of 1h, 24h, 7d (or from and to)"),
    };
    if let Some(hours) = hours {
        return Ok((
            Timestamp::from_unix_millis(now.as_unix_millis() - hours * 3_600_000),
            now,
        ));
    }
    let from = Timestamp::parse_rfc3339(&query.from).ok_or("from: an RFC 3339 time")?;
    let to = Timestamp::parse_rfc3339(&query.to).ok_or("to: an RFC 3339 time")?;
    if to <= from {
        return Err("to: must be after from");
    }
    Ok((from, to))
}

pub(crate) async fn series(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<SeriesQuery>,
) -> Response {
    let session = match console.session(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let Ok(id) = ChamberId::parse(&id) else {
        return bad("no such chamber");
    };
    let (from, to) = match range(&query, console.inner.clock.now()) {
        Ok(r) => r,
        Err(message) => return bad(message),
    };
    let api = &console.inner.api;
    let actor = &session.identity.actor;
    let view = match api.admin.chamber_view(actor, id).await {
        Ok(v) => v,
        Err(e) => return refusal(&e),
    };
    let span_secs = (to.as_unix_millis() - from.as_unix_millis()) / 1000;
    let interval = view.chamber.interval.as_duration().as_secs().max(1);
    let bucket = u64::try_from((span_secs + MAX_POINTS - 1) / MAX_POINTS)
        .unwrap_or(1)
        .max(interval);
    let aggregates = match api
        .queries
        .aggregate(
            actor,
            ReadingScope::Chamber(id),
            from,
            to,
            Duration::from_secs(bucket),
        )
        .await
    {
        Ok(a) => a,
        Err(e) => return refusal(&e),
    };
    let mut detectors = view.detectors;
    detectors.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    let times: BTreeSet<i64> = aggregates
        .iter()
        .map(|a| a.bucket_start.as_unix_millis())
        .collect();
    let column: HashMap<i64, usize> = times.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let row: HashMap<_, usize> = detectors
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id, i))
        .collect();
    let mut values = vec![vec![None; times.len()]; detectors.len()];
    for a in &aggregates {
        if let (Some(&r), Some(&c)) = (
            row.get(&a.detector_id),
            column.get(&a.bucket_start.as_unix_millis()),
        ) {
            values[r][c] = Some(a.mean);
        }
    }
    #[allow(clippy::cast_precision_loss, reason = "Unix seconds for the chart")]
    let t = times.iter().map(|ms| *ms as f64 / 1000.0).collect();
    Json(Series {
        from: from.as_unix_millis() / 1000,
        to: to.as_unix_millis() / 1000,
        bucket,
        detectors: detectors
            .into_iter()
            .map(|d| DetectorInfo {
                id: d.id.to_string(),
                name: d.name.as_str().to_owned(),
                unit: d.unit.as_str().to_owned(),
            })
            .collect(),
        t,
        values,
    })
    .into_response()
}
