//! Live updates for the overview: server-sent events fed by the event bus, coalesced to at
//! most one update per visible chamber per second.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chamberlain_domain::model::ChamberId;
use chamberlain_domain::ports::DomainEvent;
use chamberlain_domain::usecases::{EventKind, WatchItem, WatchRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::Console;

/// How often a chamber's row may change.
const COALESCE: Duration = Duration::from_secs(1);
/// Chambers one live stream follows at most (a page shows 100).
const MAX_FOLLOWED: usize = 1000;

#[derive(Deserialize)]
pub(crate) struct LiveQuery {
    /// The chambers on the page, by id, separated by commas.
    #[serde(default)]
    chambers: String,
}

/// One chamber's row, as it changed.
#[derive(Debug, Default, Clone, Serialize)]
struct RowUpdate {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<&'static str>,
    /// The latest slot, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    slot: Option<i64>,
    /// Detector id → value (`null`: corrupted).
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    values: HashMap<String, Option<f64>>,
}

impl RowUpdate {
    fn merge(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::ReadingsWritten { readings, .. } => {
                for r in readings {
                    if self.slot.is_none_or(|s| r.slot.as_unix_millis() >= s) {
                        self.slot = Some(r.slot.as_unix_millis());
                        self.values
                            .insert(r.detector_id.to_string(), r.value.value());
                    }
                }
            }
            DomainEvent::HealthChanged { transition, .. } => {
                self.health = Some(transition.to.as_str());
            }
            _ => {}
        }
    }
}

fn chamber_of(event: &DomainEvent) -> Option<ChamberId> {
    match event {
        DomainEvent::ReadingsWritten { readings, .. } => readings.first().map(|r| r.chamber_id),
        DomainEvent::HealthChanged { transition, .. } => Some(transition.chamber_id),
        _ => None,
    }
}

pub(crate) async fn live(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<LiveQuery>,
) -> Response {
    let session = match console.session(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let followed: HashSet<ChamberId> = query
        .chambers
        .split(',')
        .filter_map(|id| ChamberId::parse(id.trim()).ok())
        .take(MAX_FOLLOWED)
        .collect();
    let watch = console
        .inner
        .api
        .watch
        .watch(
            &session.identity.actor,
            WatchRequest {
                kinds: vec![EventKind::Readings, EventKind::Health],
                ..WatchRequest::default()
            },
        )
        .await;
    let mut watch = match watch {
        Ok(w) => w,
        Err(e) => return crate::pages::refusal(&e),
    };
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(16);
    let mut closing = console.inner.closing.subscribe();
    if *closing.borrow() {
        return crate::pages::unavailable();
    }
    tokio::spawn(async move {
        let mut pending: HashMap<ChamberId, RowUpdate> = HashMap::new();
        let mut tick = tokio::time::interval(COALESCE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // The only change is to closing.
                _ = closing.changed() => return,
                item = watch.next() => match item {
                    Some(WatchItem::Event(event)) => {
                        if let Some(id) = chamber_of(&event).filter(|id| followed.contains(id)) {
                            pending
                                .entry(id)
                                .or_insert_with(|| RowUpdate { id: id.to_string(), ..RowUpdate::default() })
                                .merge(&event);
                        }
                    }
                    // Missed events: the page reloads its rows.
                    Some(WatchItem::Gap) => {
                        if tx.send(Ok(Event::default().event("gap").data("{}"))).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    for (_, update) in pending.drain() {
                        let Ok(data) = serde_json::to_string(&update) else { continue };
                        if tx.send(Ok(Event::default().event("chamber").data(data))).await.is_err() {
                            // The browser went away.
                            return;
                        }
                    }
                }
            }
        }
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
