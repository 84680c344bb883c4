//! Live streams: `WatchReadings` and `WatchEvents`.
//!
//! Each subscriber gets a task that takes its [`Watch`] (the caller's organization's events,
//! narrowed by its filter) and queues messages into a bounded buffer without ever waiting:
//! what does not fit is dropped and counted by the domain's [`LagState`]; the count goes out
//! as a `Lagged` item as soon as there is room (ahead of any newer event), and a subscriber that stays behind past
//! [`WatchSettings::max_lag`] is sent a last `Lagged` item (ahead of anything still queued)
//! and `RESOURCE_EXHAUSTED`, and its task ends. Nothing here can
//! slow the event bus, the workers that publish to it, or any other subscriber.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chamberlain_domain::model::{ChamberId, DetectorId, HealthState, SectionId};
use chamberlain_domain::ports::{Clock, DomainEvent};
use chamberlain_domain::time::human_duration;
use chamberlain_domain::usecases::{
    EventKind, LagState, LagVerdict, Watch, WatchItem, WatchRequest, WatchSettings,
};
use chamberlain_proto::v1::{self, event_service_server::EventService};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::convert::{id, opt_id, ts};
use crate::readings::{poll, reading};
use crate::status::{from_use_case, invalid};
use crate::{Api, caller};

type Reply<T> = Result<Response<T>, Status>;

/// A subscriber's messages; or, ahead of whatever is queued, a last message (the final lagged
/// notice) and the status that ends its stream.
pub struct Outgoing<T> {
    queued: mpsc::Receiver<T>,
    ended: Option<oneshot::Receiver<(T, Status)>>,
    status: Option<Status>,
}

impl<T> std::fmt::Debug for Outgoing<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing").finish_non_exhaustive()
    }
}

impl<T> Stream for Outgoing<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(status) = this.status.take() {
            return Poll::Ready(Some(Err(status)));
        }
        if let Some(ended) = this.ended.as_mut() {
            match Pin::new(ended).poll(cx) {
                Poll::Ready(Ok((last, status))) => {
                    this.ended = None;
                    this.queued.close();
                    this.status = Some(status);
                    return Poll::Ready(Some(Ok(last)));
                }
                Poll::Ready(Err(_)) => this.ended = None,
                Poll::Pending => {}
            }
        }
        this.queued.poll_recv(cx).map(|m| m.map(Ok))
    }
}

/// How one stream's messages are made.
trait StreamItems: Send + 'static {
    type Item: Send + 'static;
    /// The message for an event; `None` to skip it.
    fn event(event: DomainEvent) -> Option<Self::Item>;
    fn lagged(missed: u64) -> Self::Item;
    fn gap() -> Self::Item;
}

/// Starts the subscriber's task and returns its stream.
fn pump<I: StreamItems>(
    mut watch: Watch,
    settings: WatchSettings,
    clock: Arc<dyn Clock>,
) -> Outgoing<I::Item> {
    let capacity = settings.buffer.max(1);
    let (tx, queued) = mpsc::channel::<I::Item>(capacity);
    let (end, ended) = oneshot::channel();
    tokio::spawn(async move {
        let mut lag = LagState::default();
        loop {
            let item = tokio::select! {
                biased;
                () = tx.closed() => return, // the subscriber went away
                // Behind, with a notice to give: it goes out as soon as there is room.
                permit = tx.reserve(), if lag.pending_notice().is_some() => {
                    let Ok(permit) = permit else { return };
                    permit.send(I::lagged(lag.pending_notice().unwrap_or_default()));
                    lag.notice_queued();
                    lag.queued(tx.capacity(), capacity);
                    continue;
                }
                item = watch.next() => item,
            };
            let message = match item {
                Some(WatchItem::Event(event)) => match I::event(event) {
                    Some(m) => m,
                    None => continue,
                },
                Some(WatchItem::Gap) => I::gap(),
                None => {
                    let _ = end.send((
                        I::gap(),
                        Status::unavailable("the event feed closed; reconnect"),
                    ));
                    return;
                }
            };
            if let Some(missed) = lag.pending_notice() {
                match tx.try_send(I::lagged(missed)) {
                    Ok(()) => lag.notice_queued(),
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                }
            }
            // The notice goes first: while it is pending, events wait (are dropped) behind it.
            if lag.pending_notice().is_none() {
                match tx.try_send(message) {
                    Ok(()) => {
                        lag.queued(tx.capacity(), capacity);
                        continue;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                }
            }
            if let LagVerdict::Disconnect { missed, behind_for } =
                lag.dropped(clock.now(), &settings)
            {
                tracing::info!(
                    missed,
                    behind_ms = u64::try_from(behind_for.as_millis()).unwrap_or(u64::MAX),
                    "slow subscriber disconnected"
                );
                let unreported = lag.pending_notice().unwrap_or_default();
                let _ = end.send((
                    I::lagged(unreported),
                    Status::resource_exhausted(format!(
                        "subscriber fell behind for {} and missed {missed} events: \
                         disconnected; reconnect to resume",
                        human_duration(behind_for)
                    )),
                ));
                return;
            }
        }
    });
    Outgoing {
        queued,
        ended: Some(ended),
        status: None,
    }
}

fn poll_readings(event: &DomainEvent) -> Option<v1::PollReadings> {
    match event {
        DomainEvent::ReadingsWritten {
            routing,
            poll,
            readings,
        } => Some(v1::PollReadings {
            chamber_id: poll.chamber_id.to_string(),
            section_id: routing
                .section_id
                .map(|s| s.to_string())
                .unwrap_or_default(),
            slot: Some(ts(poll.slot)),
            readings: readings.iter().map(reading).collect(),
        }),
        _ => None,
    }
}

fn health(h: HealthState) -> i32 {
    (match h {
        HealthState::Unknown => v1::HealthState::Unknown,
        HealthState::Up => v1::HealthState::Up,
        HealthState::Degraded => v1::HealthState::Degraded,
        HealthState::Down => v1::HealthState::Down,
    }) as i32
}

struct ReadingItems;

impl StreamItems for ReadingItems {
    type Item = v1::WatchReadingsResponse;

    fn event(event: DomainEvent) -> Option<Self::Item> {
        poll_readings(&event).map(|r| v1::WatchReadingsResponse {
            item: Some(v1::watch_readings_response::Item::Readings(r)),
        })
    }

    fn lagged(missed: u64) -> Self::Item {
        v1::WatchReadingsResponse {
            item: Some(v1::watch_readings_response::Item::Lagged(v1::Lagged {
                missed,
            })),
        }
    }

    fn gap() -> Self::Item {
        v1::WatchReadingsResponse {
            item: Some(v1::watch_readings_response::Item::Gap(v1::Gap {})),
        }
    }
}

struct EventItems;

impl StreamItems for EventItems {
    type Item = v1::Event;

    fn event(event: DomainEvent) -> Option<Self::Item> {
        use v1::event::Kind;
        let routing = *event.routing();
        let kind = match &event {
            DomainEvent::ReadingsWritten { .. } => Kind::Readings(poll_readings(&event)?),
            DomainEvent::PollCompleted { entry, .. } => Kind::Poll(poll(entry)),
            DomainEvent::HealthChanged { transition, .. } => Kind::Health(v1::HealthChange {
                chamber_id: transition.chamber_id.to_string(),
                from: health(transition.from),
                to: health(transition.to),
                at: Some(ts(transition.at)),
                consecutive_failures: transition.consecutive_failures,
            }),
            DomainEvent::BatchStarted { batch, .. } => {
                Kind::BatchStarted(crate::batches::batch(batch.clone()))
            }
            DomainEvent::BatchEnded { batch, .. } => {
                Kind::BatchEnded(crate::batches::batch(batch.clone()))
            }
            DomainEvent::AlertOpened { alert, .. } => {
                Kind::AlertOpened(crate::alerts::alert(alert.as_ref().clone()))
            }
            DomainEvent::AlertResolved { alert, .. } => {
                Kind::AlertResolved(crate::alerts::alert(alert.as_ref().clone()))
            }
        };
        Some(v1::Event {
            section_id: routing
                .section_id
                .map(|s| s.to_string())
                .unwrap_or_default(),
            chamber_id: routing
                .chamber_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
            kind: Some(kind),
        })
    }

    fn lagged(missed: u64) -> Self::Item {
        v1::Event {
            kind: Some(v1::event::Kind::Lagged(v1::Lagged { missed })),
            ..v1::Event::default()
        }
    }

    fn gap() -> Self::Item {
        v1::Event {
            kind: Some(v1::event::Kind::Gap(v1::Gap {})),
            ..v1::Event::default()
        }
    }
}

fn watch_request(
    section_id: &str,
    chamber_id: &str,
    detector_ids: &[String],
    kinds: Vec<EventKind>,
) -> Result<WatchRequest, Status> {
    Ok(WatchRequest {
        section_id: opt_id("section_id", section_id, SectionId::parse)?,
        chamber_id: opt_id("chamber_id", chamber_id, ChamberId::parse)?,
        detector_ids: detector_ids
            .iter()
            .enumerate()
            .map(|(i, d)| id(&format!("detector_ids[{i}]"), d, DetectorId::parse))
            .collect::<Result<_, _>>()?,
        kinds,
    })
}

fn kinds(raw: &[i32]) -> Result<Vec<EventKind>, Status> {
    raw.iter()
        .enumerate()
        .map(|(i, k)| match v1::EventKind::try_from(*k) {
            Ok(v1::EventKind::Readings) => Ok(EventKind::Readings),
            Ok(v1::EventKind::Polls) => Ok(EventKind::Polls),
            Ok(v1::EventKind::Health) => Ok(EventKind::Health),
            Ok(v1::EventKind::Batches) => Ok(EventKind::Batches),
            Ok(v1::EventKind::Alerts) => Ok(EventKind::Alerts),
            Ok(v1::EventKind::Unspecified) | Err(_) => Err(invalid(
                &format!("kinds[{i}]"),
                "must be READINGS, POLLS, HEALTH or BATCHES",
            )),
        })
        .collect()
}

#[tonic::async_trait]
impl EventService for Api {
    type WatchReadingsStream = Outgoing<v1::WatchReadingsResponse>;
    type WatchEventsStream = Outgoing<v1::Event>;

    async fn watch_readings(
        &self,
        request: Request<v1::WatchReadingsRequest>,
    ) -> Reply<Self::WatchReadingsStream> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let wanted = watch_request(
            &r.section_id,
            &r.chamber_id,
            &r.detector_ids,
            vec![EventKind::Readings],
        )?;
        let watch = self
            .watch
            .watch(&actor, wanted)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(pump::<ReadingItems>(
            watch,
            self.watch.settings,
            self.clock.clone(),
        )))
    }

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let wanted = watch_request(
            &r.section_id,
            &r.chamber_id,
            &r.detector_ids,
            kinds(&r.kinds)?,
        )?;
        let watch = self
            .watch
            .watch(&actor, wanted)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(pump::<EventItems>(
            watch,
            self.watch.settings,
            self.clock.clone(),
        )))
    }
}
