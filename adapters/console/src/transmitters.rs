//! Transmitters (admins): where readings and alerts are forwarded, webhook or MQTT; how their
//! deliveries are going; and the dead letters of deliveries given up. The same use cases as the
//! API.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chamberlain_domain::model::{PageRequest, PageSize, TransmitterId, every_page};
use chamberlain_domain::transmit::{DeliveryState, Destination, Transmitter};
use chamberlain_domain::usecases::{NewDestination, NewTransmitter, UseCaseError};
use serde::Deserialize;

use crate::Console;
use crate::forms::{Change, after_form};
use crate::pages::{Nav, Session, error_page, refusal, render};

/// Dead letters read for one transmitter's page (the newest are shown).
const DEAD_LETTERS_READ: u32 = 1000;

struct TransmitterRow {
    id: String,
    name: String,
    kind: &'static str,
    destination: String,
    forwards: String,
    /// `delivering`, `failing` or `idle`.
    state: &'static str,
    state_text: String,
    dead_letters: usize,
}

/// What was typed into the create form when it was refused (never the secret).
#[derive(Default)]
struct Typed {
    name: String,
    kind: String,
    url: String,
    broker: String,
    topic_prefix: String,
    readings: bool,
    alerts: bool,
}

#[derive(Template)]
#[template(path = "transmitters.html")]
struct TransmittersPage {
    nav: Nav,
    error: Option<String>,
    typed: Typed,
    transmitters: Vec<TransmitterRow>,
}

fn destination_text(t: &Transmitter) -> (&'static str, String) {
    match &t.destination {
        Destination::Webhook { url, .. } => ("webhook", url.to_string()),
        Destination::Mqtt {
            broker,
            topic_prefix,
        } => ("mqtt", format!("{broker} under {}", topic_prefix.as_str())),
    }
}

fn state_text(state: Option<&DeliveryState>) -> (&'static str, String) {
    let Some(s) = state else {
        return ("idle", "nothing to deliver yet".to_owned());
    };
    match (s.failing_since, s.last_delivered_at) {
        (Some(since), _) => (
            "failing",
            format!(
                "failing since {since}: {}",
                s.last_error.as_deref().unwrap_or("unknown error")
            ),
        ),
        (None, Some(at)) => ("delivering", format!("delivering; last delivery {at}")),
        (None, None) => ("idle", "nothing delivered yet".to_owned()),
    }
}

async fn transmitters_page(
    console: &Console,
    session: &Session,
    error: Option<String>,
    typed: Typed,
) -> Result<TransmittersPage, UseCaseError> {
    let admin = &console.inner.api.transmitters;
    let actor = &session.identity.actor;
    let all = PageRequest::first(PageSize::new(1000).unwrap_or_default());
    let transmitters = admin.list(actor, all).await?.items;
    let states: HashMap<TransmitterId, DeliveryState> = admin
        .delivery_states(actor)
        .await?
        .into_iter()
        .map(|s| (s.transmitter_id, s))
        .collect();
    let mut letters: HashMap<TransmitterId, usize> = HashMap::new();
    let size = PageSize::new(1000).unwrap_or_default();
    for l in every_page(size, |page| admin.dead_letters(actor, None, page)).await? {
        *letters.entry(l.transmitter_id).or_default() += 1;
    }
    let mut rows: Vec<TransmitterRow> = transmitters
        .iter()
        .map(|t| {
            let (kind, destination) = destination_text(t);
            let (state, state_text) = state_text(states.get(&t.id));
            TransmitterRow {
                id: t.id.to_string(),
                name: t.name.as_str().to_owned(),
                kind,
                destination,
                forwards: match (t.forwarded.readings, t.forwarded.alerts) {
                    (true, true) => "readings and alerts",
                    (true, false) => "readings",
                    _ => "alerts",
                }
                .to_owned(),
                state,
                state_text,
                dead_letters: letters.get(&t.id).copied().unwrap_or(0),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(TransmittersPage {
        nav: session.nav(),
        error,
        typed,
        transmitters: rows,
    })
}

pub(crate) async fn transmitters(State(console): State<Console>, headers: HeaderMap) -> Response {
    let session = match console.session(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    match transmitters_page(&console, &session, None, Typed::default()).await {
        Ok(page) => render(&page),
        Err(e) => refusal(&e),
    }
}

#[derive(Deserialize)]
pub(crate) struct TransmitterForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    /// `webhook` or `mqtt`.
    #[serde(default)]
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    broker: String,
    #[serde(default)]
    topic_prefix: String,
    /// Checkboxes: present when ticked.
    #[serde(default)]
    readings: Option<String>,
    #[serde(default)]
    alerts: Option<String>,
}

crate::forms::csrf_forms!(TransmitterForm);

impl TransmitterForm {
    fn transmitter(&self) -> Result<NewTransmitter, UseCaseError> {
        let destination = match self.kind.as_str() {
            "webhook" => NewDestination::Webhook {
                url: self.url.clone(),
                secret: self.secret.clone(),
            },
            "mqtt" => NewDestination::Mqtt {
                broker: self.broker.clone(),
                topic_prefix: self.topic_prefix.clone(),
            },
            _ => {
                return Err(crate::pages::invalid("transmitter.kind", "webhook or mqtt"));
            }
        };
        Ok(NewTransmitter {
            name: self.name.clone(),
            destination,
            readings: self.readings.is_some(),
            alerts: self.alerts.is_some(),
        })
    }

    fn typed(self) -> Typed {
        Typed {
            readings: self.readings.is_some(),
            alerts: self.alerts.is_some(),
            name: self.name,
            kind: self.kind,
            url: self.url,
            broker: self.broker,
            topic_prefix: self.topic_prefix,
        }
    }
}

async fn after_change(
    console: &Console,
    session: &Session,
    result: Result<(), UseCaseError>,
    typed: Typed,
) -> Response {
    after_form(result, "/console/transmitters", async |reason| {
        transmitters_page(console, session, Some(reason), typed).await
    })
    .await
}

pub(crate) async fn create_transmitter(
    State(console): State<Console>,
    Change { session, form }: Change<TransmitterForm>,
) -> Response {
    let admin = &console.inner.api.transmitters;
    let result = match form.transmitter() {
        Ok(new) => admin.create(&session.identity.actor, new).await.map(drop),
        Err(e) => Err(e),
    };
    after_change(&console, &session, result, form.typed()).await
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

crate::forms::csrf_forms!(CsrfOnly);

fn transmitter_id(raw: &str) -> Result<TransmitterId, UseCaseError> {
    TransmitterId::parse(raw).map_err(|_| UseCaseError::NotFound {
        entity: "transmitter",
    })
}

pub(crate) async fn delete_transmitter(
    State(console): State<Console>,
    Path(id): Path<String>,
    Change { session, .. }: Change<CsrfOnly>,
) -> Response {
    let admin = &console.inner.api.transmitters;
    let result = match transmitter_id(&id) {
        Ok(id) => admin.delete(&session.identity.actor, id).await,
        Err(e) => Err(e),
    };
    after_change(&console, &session, result, Typed::default()).await
}

struct LetterRow {
    at: String,
    kind: String,
    topic: String,
    attempts: u32,
    error: String,
}

#[derive(Template)]
#[template(path = "transmitter.html")]
struct TransmitterPage {
    nav: Nav,
    row: TransmitterRow,
    letters: Vec<LetterRow>,
    /// Dead letters beyond those shown.
    more: bool,
}

pub(crate) async fn transmitter(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let session = match console.session(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let Ok(id) = TransmitterId::parse(&id) else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "No such transmitter in your organization.",
        );
    };
    match transmitter_page(&console, &session, id).await {
        Ok(page) => render(&page),
        Err(e) => refusal(&e),
    }
}

async fn transmitter_page(
    console: &Console,
    session: &Session,
    id: TransmitterId,
) -> Result<TransmitterPage, UseCaseError> {
    let admin = &console.inner.api.transmitters;
    let actor = &session.identity.actor;
    let t = admin.get(actor, id).await?;
    let state = admin
        .delivery_states(actor)
        .await?
        .into_iter()
        .find(|s| s.transmitter_id == id);
    let letters = admin
        .dead_letters(
            actor,
            Some(id),
            PageRequest::first(PageSize::new(DEAD_LETTERS_READ).unwrap_or_default()),
        )
        .await?;
    let more = letters.next.is_some();
    let mut letters = letters.items;
    letters.sort_by_key(|l| std::cmp::Reverse(l.at));
    let (kind, destination) = destination_text(&t);
    let (state, state_text) = state_text(state.as_ref());
    Ok(TransmitterPage {
        nav: session.nav(),
        row: TransmitterRow {
            id: t.id.to_string(),
            name: t.name.as_str().to_owned(),
            kind,
            destination,
            forwards: String::new(),
            state,
            state_text,
            dead_letters: letters.len(),
        },
        letters: letters
            .into_iter()
            .map(|l| LetterRow {
                at: l.at.to_string(),
                kind: l.delivery.kind.as_str().replace('_', " "),
                topic: l.delivery.topic,
                attempts: l.attempts,
                error: l.last_error,
            })
            .collect(),
        more,
    })
}
