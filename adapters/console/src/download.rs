//! Readings downloaded as CSV: the same file as the API's `DownloadReadings` (the
//! `ReadingQueries::export_csv` use case), streamed page by page as it is read.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chamberlain_domain::model::ChamberId;
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
    let session = match console.session(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let Ok(id) = ChamberId::parse(&id) else {
        return (StatusCode::NOT_FOUND, "no such chamber").into_response();
    };
    let (from, to) = match range(&query, console.inner.clock.now()) {
        Ok(r) => r,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    let mut export = match console
        .inner
        .api
        .queries
        .export_csv(&session.identity.actor, ExportScope::Chamber(id), from, to)
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
    let filename = format!(
        "attachment; filename=\"chamber-{id}-{}.csv\"",
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
