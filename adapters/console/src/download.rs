//! Readings downloaded as CSV: the same file as the API's `DownloadReadings` (the
//! `ReadingQueries::export_csv` use case), streamed page by page as it is read. Of a chamber or
//! a section over a range (`range=1h|24h|7d`, or `from` and `to`), or of a batch over its own
//! time unless a range is given.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{BatchId, ChamberId, SectionId};
use chamberlain_domain::usecases::ExportScope;

use crate::Console;
use crate::charts::{SeriesQuery, range};
use crate::pages::refusal;

/// The file's media type, as the API's download answers it.
const CSV: &str = "text/csv; charset=utf-8";

/// `GET /console/chambers/{id}/readings.csv?range=24h` (or `from` and `to`).
pub(crate) async fn chamber_csv(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<SeriesQuery>,
) -> Response {
    let Ok(id) = ChamberId::parse(&id) else {
        return (StatusCode::NOT_FOUND, "no such chamber").into_response();
    };
    download(
        &console,
        &headers,
        ExportScope::Chamber(id),
        &query,
        "chamber",
    )
    .await
}

/// `GET /console/sections/{id}/readings.csv?range=24h`: every chamber of the section.
pub(crate) async fn section_csv(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<SeriesQuery>,
) -> Response {
    let Ok(id) = SectionId::parse(&id) else {
        return (StatusCode::NOT_FOUND, "no such section").into_response();
    };
    download(
        &console,
        &headers,
        ExportScope::Section(id),
        &query,
        "section",
    )
    .await
}

/// `GET /console/batches/{id}/readings.csv`: over the batch's time unless a range is given.
pub(crate) async fn batch_csv(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<SeriesQuery>,
) -> Response {
    let Ok(id) = BatchId::parse(&id) else {
        return (StatusCode::NOT_FOUND, "no such batch").into_response();
    };
    download(&console, &headers, ExportScope::Batch(id), &query, "batch").await
}

async fn download(
    console: &Console,
    headers: &HeaderMap,
    scope: ExportScope,
    query: &SeriesQuery,
    what: &str,
) -> Response {
    let session = match console.session(headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let actor = &session.identity.actor;
    let now = console.inner.clock.now();
    let (from, to) = match (scope, query.is_empty()) {
        (ExportScope::Batch(id), true) => {
            match console.inner.api.admin.get_batch(actor, id).await {
                // A batch started this very millisecond has no slot yet: an empty file.
                Ok(b) => (
                    b.started_at,
                    b.ended_at.unwrap_or(now).max(Timestamp::from_unix_millis(
                        b.started_at.as_unix_millis() + 1,
                    )),
                ),
                Err(e) => return refusal(&e),
            }
        }
        _ => match range(query, now) {
            Ok(r) => r,
            Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
        },
    };
    let mut export = match console
        .inner
        .api
        .queries
        .export_csv(actor, scope, from, to)
        .await
    {
        Ok(export) => export,
        Err(e) => return refusal(&e),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    tokio::spawn(async move {
        loop {
            let chunk = match export.next_chunk().await {
                Ok(Some(text)) => Ok(text),
                Ok(None) => return,
                Err(e) => {
                    // The answer has begun: cutting it short tells the browser the download
                    // failed.
                    tracing::warn!(error = %e, "a CSV download failed");
                    Err(std::io::Error::other(e.to_string()))
                }
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    let id = match scope {
        ExportScope::Chamber(id) => id.to_string(),
        ExportScope::Section(id) => id.to_string(),
        ExportScope::Batch(id) => id.to_string(),
        ExportScope::Detector(id) => id.to_string(),
    };
    let filename = format!(
        "attachment; filename=\"{what}-{id}-{}.csv\"",
        from.to_rfc3339().replace(':', "")
    );
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(CSV)),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::try_from(filename)
                    .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
            ),
        ],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}
