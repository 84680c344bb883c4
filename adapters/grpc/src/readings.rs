//! `ReadingService` and `PollService` (readings.proto): readings (query, latest, aggregates, CSV
//! export) and the poll ledger (polls, coverage).

use std::pin::Pin;

use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{
    BatchId, ChamberId, DetectorId, LedgerEntry, PollOutcome, Reading, ReadingValue, SectionId,
};
use chamberlain_domain::ports::{LedgerQuery, ReadingCursor, ReadingQuery, ReadingScope};
use chamberlain_domain::usecases::CoverageScope;
use chamberlain_proto::v1::{
    self, poll_service_server::PollService, reading_selector::Scope,
    reading_service_server::ReadingService,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::convert::{dur, id, opt_ts, page, required_duration, timestamp, ts, until};
use crate::status::{from_use_case, invalid};
use crate::{Api, caller};

type Reply<T> = Result<Response<T>, Status>;

fn scope(selector: Option<&v1::ReadingSelector>) -> Result<ReadingScope, Status> {
    match selector.and_then(|s| s.scope.as_ref()) {
        Some(Scope::DetectorId(d)) => Ok(ReadingScope::Detector(id(
            "selector.detector_id",
            d,
            DetectorId::parse,
        )?)),
        Some(Scope::ChamberId(c)) => Ok(ReadingScope::Chamber(id(
            "selector.chamber_id",
            c,
            ChamberId::parse,
        )?)),
        Some(Scope::BatchId(b)) => Ok(ReadingScope::Batch(id(
            "selector.batch_id",
            b,
            BatchId::parse,
        )?)),
        None => Err(invalid(
            "selector",
            "one of detector_id, chamber_id or batch_id is required",
        )),
    }
}

pub(crate) fn reading(r: &Reading) -> v1::Reading {
    v1::Reading {
        chamber_id: r.chamber_id.to_string(),
        detector_id: r.detector_id.to_string(),
        slot: Some(ts(r.slot)),
        value: r.value.value(),
        corruption: match &r.value {
            ReadingValue::Corrupted(why) => why.to_string(),
            ReadingValue::Measured(_) => String::new(),
        },
        requested_at: Some(ts(r.requested_at)),
        received_at: Some(ts(r.received_at)),
        batch_id: r.batch_id.map(|b| b.to_string()).unwrap_or_default(),
    }
}

/// Reading page tokens: `<slot ms>.<detector id>`.
fn reading_cursor(token: &str) -> Option<ReadingCursor> {
    let (slot, detector) = token.split_once('.')?;
    Some(ReadingCursor {
        slot: Timestamp::from_unix_millis(slot.parse().ok()?),
        detector_id: DetectorId::parse(detector).ok()?,
    })
}

fn reading_token(c: Option<ReadingCursor>) -> String {
    c.map(|c| format!("{}.{}", c.slot.as_unix_millis(), c.detector_id))
        .unwrap_or_default()
}

fn detail(outcome: &PollOutcome) -> String {
    match outcome {
        PollOutcome::CorruptedValues { corrupted } => format!("{corrupted} values corrupted"),
        PollOutcome::ConnectionFailed { reason }
        | PollOutcome::Blocked { reason }
        | PollOutcome::Malformed { reason } => reason.clone(),
        PollOutcome::HttpStatus { status } => format!("HTTP {status}"),
        PollOutcome::TooLarge { limit_bytes } => format!("body over {limit_bytes} bytes"),
        _ => String::new(),
    }
}

pub(crate) fn poll(e: &LedgerEntry) -> v1::Poll {
    v1::Poll {
        chamber_id: e.poll.chamber_id.to_string(),
        slot: Some(ts(e.poll.slot)),
        outcome: e.outcome.code().to_owned(),
        detail: detail(&e.outcome),
        attempt: e.attempt,
        requested_at: opt_ts(e.requested_at),
        recorded_at: Some(ts(e.recorded_at)),
        latency: e.latency.map(dur),
        lateness: Some(dur(e.lateness)),
    }
}

use chamberlain_domain::usecases::{CsvExport, ExportScope};

#[tonic::async_trait]
impl ReadingService for Api {
    type ExportReadingsStream = Pin<Box<dyn Stream<Item = Result<v1::CsvChunk, Status>> + Send>>;
    type DownloadReadingsStream =
        Pin<Box<dyn Stream<Item = Result<chamberlain_proto::google_api::HttpBody, Status>> + Send>>;

    async fn query_readings(
        &self,
        request: Request<v1::QueryReadingsRequest>,
    ) -> Reply<v1::QueryReadingsResponse> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let query = ReadingQuery {
            scope: scope(r.selector.as_ref())?,
            from: timestamp("from", r.from.as_ref())?,
            to: until("to", r.to.as_ref(), self.clock.now())?,
            page: page(r.page.as_ref(), reading_cursor)?,
        };
        let p = self
            .queries
            .readings(&actor, &query)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::QueryReadingsResponse {
            readings: p.items.iter().map(reading).collect(),
            next_page_token: reading_token(p.next),
        }))
    }

    async fn latest_readings(
        &self,
        request: Request<v1::LatestReadingsRequest>,
    ) -> Reply<v1::LatestReadingsResponse> {
        let actor = caller(&request)?;
        let ids = request
            .get_ref()
            .chamber_ids
            .iter()
            .enumerate()
            .map(|(i, c)| id(&format!("chamber_ids[{i}]"), c, ChamberId::parse))
            .collect::<Result<Vec<_>, _>>()?;
        let latest = self
            .queries
            .latest(&actor, &ids)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::LatestReadingsResponse {
            chambers: latest
                .iter()
                .map(|l| v1::ChamberLatest {
                    chamber_id: l.chamber_id.to_string(),
                    slot: Some(ts(l.slot)),
                    readings: l.readings.iter().map(reading).collect(),
                })
                .collect(),
        }))
    }

    async fn aggregate_readings(
        &self,
        request: Request<v1::AggregateReadingsRequest>,
    ) -> Reply<v1::AggregateReadingsResponse> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let aggs = self
            .queries
            .aggregate(
                &actor,
                scope(r.selector.as_ref())?,
                timestamp("from", r.from.as_ref())?,
                until("to", r.to.as_ref(), self.clock.now())?,
                required_duration("bucket", r.bucket.as_ref())?,
            )
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::AggregateReadingsResponse {
            aggregates: aggs
                .into_iter()
                .map(|a| v1::Aggregate {
                    detector_id: a.detector_id.to_string(),
                    bucket_start: Some(ts(a.bucket_start)),
                    min: a.min,
                    max: a.max,
                    mean: a.mean,
                    count: a.count,
                })
                .collect(),
        }))
    }

    async fn export_readings(
        &self,
        request: Request<v1::ExportReadingsRequest>,
    ) -> Reply<Self::ExportReadingsStream> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let scope = match scope(r.selector.as_ref())? {
            ReadingScope::Chamber(id) => ExportScope::Chamber(id),
            ReadingScope::Batch(id) => ExportScope::Batch(id),
            ReadingScope::Detector(id) => ExportScope::Detector(id),
        };
        // The scope and range are checked before answering, so a bad request is an error
        // status, not a broken stream.
        let export = self
            .queries
            .export_csv(
                &actor,
                scope,
                timestamp("from", r.from.as_ref())?,
                until("to", r.to.as_ref(), self.clock.now())?,
            )
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(stream_csv(export, |text| v1::CsvChunk {
            data: text.into_bytes(),
        })))
    }

    async fn download_readings(
        &self,
        request: Request<v1::DownloadReadingsRequest>,
    ) -> Reply<Self::DownloadReadingsStream> {
        use v1::download_readings_request::Scope;
        let actor = caller(&request)?;
        let r = request.get_ref();
        let scope = match &r.scope {
            Some(Scope::ChamberId(v)) => {
                ExportScope::Chamber(id("chamber_id", v, ChamberId::parse)?)
            }
            Some(Scope::SectionId(v)) => {
                ExportScope::Section(id("section_id", v, SectionId::parse)?)
            }
            Some(Scope::BatchId(v)) => ExportScope::Batch(id("batch_id", v, BatchId::parse)?),
            Some(Scope::DetectorId(v)) => {
                ExportScope::Detector(id("detector_id", v, DetectorId::parse)?)
            }
            None => {
                return Err(invalid(
                    "scope",
                    "one of chamber_id, section_id, batch_id, detector_id is required",
                ));
            }
        };
        // The scope and range are checked before answering, so a bad request is an error
        // status, not a broken download.
        let export = self
            .queries
            .export_csv(
                &actor,
                scope,
                timestamp("from", r.from.as_ref())?,
                until("to", r.to.as_ref(), self.clock.now())?,
            )
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(stream_csv(export, |text| {
            chamberlain_proto::google_api::HttpBody {
                content_type: CSV_CONTENT_TYPE.to_owned(),
                data: text.into_bytes(),
                extensions: Vec::new(),
            }
        })))
    }
}

/// The download's media type (CSV with a header line).
pub const CSV_CONTENT_TYPE: &str = "text/csv; charset=utf-8";

/// An export's chunks as a stream of `wrap`ped messages, read as the client takes them; an
/// error ends the stream with its status.
fn stream_csv<T: Send + 'static>(
    mut export: CsvExport,
    wrap: fn(String) -> T,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<T, Status>>(4);
    tokio::spawn(async move {
        loop {
            let message = match export.next_chunk().await {
                Ok(Some(text)) => Ok(wrap(text)),
                Ok(None) => return,
                Err(e) => Err(from_use_case(e)),
            };
            let failed = message.is_err();
            if tx.send(message).await.is_err() || failed {
                return; // the client went away, or the export failed
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl PollService for Api {
    async fn list_polls(
        &self,
        request: Request<v1::ListPollsRequest>,
    ) -> Reply<v1::ListPollsResponse> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let query = LedgerQuery {
            chamber_id: id("chamber_id", &r.chamber_id, ChamberId::parse)?,
            from: timestamp("from", r.from.as_ref())?,
            to: until("to", r.to.as_ref(), self.clock.now())?,
            failures_only: r.failures_only,
            page: page(r.page.as_ref(), |t| {
                t.parse().ok().map(Timestamp::from_unix_millis)
            })?,
        };
        let p = self
            .queries
            .ledger(&actor, &query)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::ListPollsResponse {
            polls: p.items.iter().map(poll).collect(),
            next_page_token: p
                .next
                .map(|t| t.as_unix_millis().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn get_coverage(&self, request: Request<v1::GetCoverageRequest>) -> Reply<v1::Coverage> {
        use v1::get_coverage_request::Scope as S;
        let actor = caller(&request)?;
        let r = request.get_ref();
        let scope = match r.scope.as_ref() {
            Some(S::ChamberId(c)) => CoverageScope::Chamber(id("chamber_id", c, ChamberId::parse)?),
            Some(S::BatchId(b)) => CoverageScope::Batch(id("batch_id", b, BatchId::parse)?),
            None => return Err(invalid("scope", "chamber_id or batch_id is required")),
        };
        let c = self
            .queries
            .coverage(
                &actor,
                scope,
                timestamp("from", r.from.as_ref())?,
                until("to", r.to.as_ref(), self.clock.now())?,
            )
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::Coverage {
            slots: c.slots,
            read: c.read,
            failed: c.failed,
            missed: c.missed,
            ratio: c.ratio(),
        }))
    }
}
