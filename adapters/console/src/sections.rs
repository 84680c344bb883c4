//! Sections and batches: the organization's rooms and the runs in them. Operators create,
//! rename and delete sections and start and end batches; a batch's page shows its coverage, its
//! chambers and its readings as a CSV download. The same use cases as the API.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chamberlain_domain::model::{BatchId, PageRequest, PageSize, Role, SectionId, every_page};
use chamberlain_domain::ports::ChamberFilter;
use chamberlain_domain::usecases::{CoverageScope, NewSection, UseCaseError};
use serde::Deserialize;

use crate::Console;
use crate::forms::{Change, after_form};
use crate::pages::{Nav, Session, error_page, percent_encode, refusal, render};

struct SectionRow {
    id: String,
    name: String,
    description: String,
}

struct BatchRow {
    id: String,
    name: String,
    section: String,
    started: String,
    ended: Option<String>,
}

/// What the user typed into a form that was refused, shown again with the reason.
#[derive(Default)]
struct Typed {
    /// Which form: `create`, `batch`, or a section's id (rename).
    form: String,
    name: String,
    description: String,
    section: String,
}

#[derive(Template)]
#[template(path = "sections.html")]
struct SectionsPage {
    nav: Nav,
    can_edit: bool,
    error: Option<String>,
    typed: Typed,
    sections: Vec<SectionRow>,
    batches: Vec<BatchRow>,
}

async fn sections_page(
    console: &Console,
    session: &Session,
    error: Option<String>,
    typed: Typed,
) -> Result<SectionsPage, UseCaseError> {
    let api = &console.inner.api;
    let actor = &session.identity.actor;
    let size = PageSize::new(1000).unwrap_or_default();
    let mut sections = every_page(size, |page| api.admin.list_sections(actor, page)).await?;
    sections.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    let names: std::collections::HashMap<SectionId, String> = sections
        .iter()
        .map(|s| (s.id, s.name.as_str().to_owned()))
        .collect();
    let batches = api
        .admin
        .list_batches(
            actor,
            None,
            PageRequest::first(PageSize::new(1000).unwrap_or_default()),
        )
        .await?;
    let mut batches = batches.items;
    // Open batches first, then the most recent.
    batches.sort_by_key(|b| (b.ended_at.is_some(), std::cmp::Reverse(b.started_at)));
    Ok(SectionsPage {
        nav: session.nav(),
        can_edit: actor.role >= Role::Operator,
        error,
        typed,
        batches: batches
            .into_iter()
            .map(|b| BatchRow {
                id: b.id.to_string(),
                name: b.name.as_str().to_owned(),
                section: names.get(&b.section_id).cloned().unwrap_or_default(),
                started: b.started_at.to_string(),
                ended: b.ended_at.map(|t| t.to_string()),
            })
            .collect(),
        sections: sections
            .into_iter()
            .map(|s| SectionRow {
                id: s.id.to_string(),
                name: s.name.as_str().to_owned(),
                description: s.description.as_str().to_owned(),
            })
            .collect(),
    })
}

pub(crate) async fn sections(State(console): State<Console>, headers: HeaderMap) -> Response {
    let session = match console.session(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    match sections_page(&console, &session, None, Typed::default()).await {
        Ok(page) => render(&page),
        Err(e) => refusal(&e),
    }
}

#[derive(Deserialize)]
pub(crate) struct SectionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    /// The section a batch starts in.
    #[serde(default)]
    section: String,
}

crate::forms::csrf_forms!(SectionForm, CsrfOnly);

/// After a change: back to the list, or the list again with the reason and what was typed.
async fn after_change(
    console: &Console,
    session: &Session,
    result: Result<(), UseCaseError>,
    typed: Typed,
) -> Response {
    after_form(result, "/console/sections", async |reason| {
        sections_page(console, session, Some(reason), typed).await
    })
    .await
}

fn section_id(raw: &str) -> Result<SectionId, UseCaseError> {
    SectionId::parse(raw).map_err(|_| UseCaseError::NotFound { entity: "section" })
}

impl SectionForm {
    fn section(&self) -> NewSection {
        NewSection {
            name: self.name.clone(),
            description: self.description.clone(),
        }
    }

    fn typed(self, form: String) -> Typed {
        Typed {
            form,
            name: self.name,
            description: self.description,
            section: self.section,
        }
    }
}

pub(crate) async fn create_section(
    State(console): State<Console>,
    Change { session, form }: Change<SectionForm>,
) -> Response {
    let result = console
        .inner
        .api
        .admin
        .create_section(&session.identity.actor, form.section())
        .await
        .map(drop);
    after_change(&console, &session, result, form.typed("create".into())).await
}

pub(crate) async fn rename_section(
    State(console): State<Console>,
    Path(id): Path<String>,
    Change { session, form }: Change<SectionForm>,
) -> Response {
    let admin = &console.inner.api.admin;
    let result = match section_id(&id) {
        Ok(section) => admin
            .update_section(&session.identity.actor, section, form.section())
            .await
            .map(drop),
        Err(e) => Err(e),
    };
    after_change(&console, &session, result, form.typed(id)).await
}

pub(crate) async fn delete_section(
    State(console): State<Console>,
    Path(id): Path<String>,
    Change { session, .. }: Change<CsrfOnly>,
) -> Response {
    let admin = &console.inner.api.admin;
    let result = match section_id(&id) {
        Ok(section) => admin.delete_section(&session.identity.actor, section).await,
        Err(e) => Err(e),
    };
    after_change(&console, &session, result, Typed::default()).await
}

pub(crate) async fn start_batch(
    State(console): State<Console>,
    Change { session, form }: Change<SectionForm>,
) -> Response {
    let admin = &console.inner.api.admin;
    let result = match SectionId::parse(&form.section) {
        Ok(section) => admin
            .start_batch(&session.identity.actor, section, form.section())
            .await
            .map(drop),
        Err(_) => Err(crate::pages::invalid("section", "choose a section")),
    };
    after_change(&console, &session, result, form.typed("batch".into())).await
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn end_batch(
    State(console): State<Console>,
    Path(id): Path<String>,
    Change { session, .. }: Change<CsrfOnly>,
) -> Response {
    let Ok(batch) = BatchId::parse(&id) else {
        return refusal(&UseCaseError::NotFound { entity: "batch" });
    };
    match console
        .inner
        .api
        .admin
        .end_batch(&session.identity.actor, batch)
        .await
    {
        Ok(_) => Redirect::to(&format!("/console/batches/{batch}")).into_response(),
        Err(e) => refusal(&e),
    }
}

struct ChamberLink {
    id: String,
    name: String,
}

#[derive(Template)]
#[template(path = "batch.html")]
struct BatchPage {
    nav: Nav,
    can_edit: bool,
    id: String,
    name: String,
    description: String,
    section: String,
    started: String,
    ended: Option<String>,
    coverage: String,
    chambers: Vec<ChamberLink>,
    /// The chamber whose charts are shown (chosen with `?chamber=`, else the first), and the
    /// series of its detectors over the batch's time.
    charted: Option<(String, String)>,
    series_url: String,
}

#[derive(Deserialize)]
pub(crate) struct BatchQuery {
    #[serde(default)]
    chamber: String,
}

pub(crate) async fn batch(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<BatchQuery>,
) -> Response {
    let session = match console.session(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let Ok(id) = BatchId::parse(&id) else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "No such batch in your organization.",
        );
    };
    match batch_page(&console, &session, id, &query.chamber).await {
        Ok(page) => render(&page),
        Err(e) => refusal(&e),
    }
}

async fn batch_page(
    console: &Console,
    session: &Session,
    id: BatchId,
    chosen: &str,
) -> Result<BatchPage, UseCaseError> {
    let api = &console.inner.api;
    let actor = &session.identity.actor;
    let batch = api.admin.get_batch(actor, id).await?;
    let section = api.admin.get_section(actor, batch.section_id).await?;
    let now = console.inner.clock.now();
    let end = batch.ended_at.unwrap_or(now);
    let coverage = if batch.started_at < end {
        let c = api
            .queries
            .coverage(actor, CoverageScope::Batch(id), batch.started_at, end)
            .await?;
        format!(
            "{:.2} % of {} slots read ({} failed, {} missed)",
            c.ratio() * 100.0,
            c.slots,
            c.failed,
            c.missed
        )
    } else {
        "no slots yet".to_owned()
    };
    let chambers = api
        .admin
        .list_chambers(
            actor,
            ChamberFilter {
                section_id: Some(batch.section_id),
                ..ChamberFilter::default()
            },
            PageRequest::first(PageSize::new(1000).unwrap_or_default()),
        )
        .await?;
    let mut chambers: Vec<ChamberLink> = chambers
        .items
        .into_iter()
        .map(|c| ChamberLink {
            id: c.id.to_string(),
            name: c.name.as_str().to_owned(),
        })
        .collect();
    chambers.sort_by(|a, b| a.name.cmp(&b.name));
    let charted = (batch.started_at < end)
        .then(|| {
            chambers
                .iter()
                .find(|c| c.id == chosen)
                .or_else(|| chambers.first())
        })
        .flatten()
        .map(|c| (c.id.clone(), c.name.clone()));
    let series_url = charted.as_ref().map_or_else(String::new, |(chamber, _)| {
        format!(
            "/console/chambers/{chamber}/series?from={}&to={}",
            percent_encode(&batch.started_at.to_rfc3339()),
            percent_encode(&end.to_rfc3339())
        )
    });
    Ok(BatchPage {
        nav: session.nav(),
        can_edit: actor.role >= Role::Operator,
        id: id.to_string(),
        name: batch.name.as_str().to_owned(),
        description: batch.description.as_str().to_owned(),
        section: section.name.as_str().to_owned(),
        started: batch.started_at.to_string(),
        ended: batch.ended_at.map(|t| t.to_string()),
        coverage,
        chambers,
        charted,
        series_url,
    })
}
