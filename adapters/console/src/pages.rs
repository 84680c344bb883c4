//! The console's pages: each reads the caller's session, calls the API's use cases, and renders
//! a compiled template. Refusals are pages too, without internals.

use std::collections::HashMap;
use std::time::Duration;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chamberlain_domain::Timestamp;
use chamberlain_domain::alerting::AlertCondition;
use chamberlain_domain::model::{AlertId, DetectorId, every_page};
use chamberlain_domain::model::{
    ChamberId, ChamberState, ExpiryReason, HealthState, PageRequest, PageSize, PollOutcome, Role,
    SectionId,
};
use chamberlain_domain::ports::{AlertFilter, ChamberFilter, LedgerQuery};
use chamberlain_domain::usecases::{
    Actor, ApiUseCases, AuthError, ChamberPatch, Identity, Refusal, SignInError, UseCaseError,
};
use serde::Deserialize;

use crate::Console;
use crate::session::{
    cleared_cookie, csrf_matches, csrf_token, same_origin, session_cookie, session_token,
};

/// Chambers on one overview page.
const OVERVIEW_PAGE: u32 = 100;

/// A signed-in caller.
pub(crate) struct Session {
    pub(crate) identity: Identity,
    token: String,
    csrf: String,
    user: String,
}

/// What every signed-in page shows in its header.
pub(crate) struct Nav {
    pub(crate) user: String,
    pub(crate) role: String,
    pub(crate) csrf: String,
}

impl Session {
    pub(crate) fn nav(&self) -> Nav {
        Nav {
            user: self.user.clone(),
            role: self.identity.actor.role.to_string(),
            csrf: self.csrf.clone(),
        }
    }
}

pub(crate) fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The page could not be shown; try again.",
            )
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
}

pub(crate) fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let html = ErrorPage { title, message }
        .render()
        .unwrap_or_else(|_| title.to_owned());
    (status, Html(html)).into_response()
}

/// A use case's refusal as a page: the reason the API would give, never a driver's error.
pub(crate) fn refusal(e: &UseCaseError) -> Response {
    match e {
        UseCaseError::Forbidden(f) => {
            error_page(StatusCode::FORBIDDEN, "Not allowed", &f.to_string())
        }
        UseCaseError::NotFound { entity } => error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            &format!("No such {entity} in your organization."),
        ),
        UseCaseError::Unavailable { message } => {
            tracing::warn!(error = %message, "console: storage unavailable");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The data cannot be read right now; try again in a moment.",
            )
        }
        other => error_page(StatusCode::BAD_REQUEST, "Refused", &other.to_string()),
    }
}

impl Console {
    /// The answer to a sign-in attempt past the client address's limit, if it is. A limiter
    /// that cannot answer lets the attempt through (the password check still stands).
    async fn sign_in_refused(&self, peer: Option<std::net::SocketAddr>) -> Option<Response> {
        let (limiter, rate) = self.inner.settings.sign_in_limit.as_ref()?;
        let client = peer.map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string());
        let bucket = chamberlain_domain::ports::Bucket {
            key: format!("console-sign-in:{client}"),
            rate: *rate,
        };
        let chamberlain_domain::ports::Admission::Refused { retry_after, .. } =
            limiter.admit(&[bucket]).await.ok()?
        else {
            return None;
        };
        let mut response = error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts",
            "Too many sign-in attempts from your address; wait a moment and try again.",
        );
        if let Ok(value) =
            axum::http::HeaderValue::from_str(&(retry_after.as_secs() + 1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        Some(response)
    }

    /// The caller's session, or the answer for a caller without one: to the sign-in page.
    pub(crate) async fn session(&self, headers: &HeaderMap) -> Result<Session, Response> {
        let to_sign_in = || Redirect::to("/console/sign-in").into_response();
        let Some(token) = session_token(headers) else {
            return Err(to_sign_in());
        };
        match self.inner.api.auth.authenticate(Some(&token)).await {
            Ok(identity) => {
                let user = self
                    .inner
                    .api
                    .users
                    .who_am_i(&identity.actor)
                    .await
                    .map(|u| u.display_name.as_str().to_owned())
                    .unwrap_or_default();
                Ok(Session {
                    csrf: csrf_token(&self.inner.settings.csrf_key, &token),
                    identity,
                    token,
                    user,
                })
            }
            Err(AuthError::Unauthenticated(_)) => {
                let mut response = to_sign_in();
                response
                    .headers_mut()
                    .insert(header::SET_COOKIE, cleared_cookie());
                Err(response)
            }
            Err(AuthError::Unavailable { message }) => {
                tracing::warn!(error = %message, "console: authentication unavailable");
                Err(error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    "Signing in cannot be checked right now; try again in a moment.",
                ))
            }
        }
    }

    /// The session of a state-changing request: same origin, and its CSRF token.
    pub(crate) async fn session_for_change(
        &self,
        headers: &HeaderMap,
        csrf: &str,
    ) -> Result<Session, Response> {
        if !same_origin(headers) {
            return Err(error_page(
                StatusCode::FORBIDDEN,
                "Refused",
                "This request did not come from the console.",
            ));
        }
        let session = match self.session(headers).await {
            Ok(s) => s,
            Err(_) => {
                return Err(error_page(
                    StatusCode::FORBIDDEN,
                    "Signed out",
                    "Your session has ended; sign in again.",
                ));
            }
        };
        if !csrf_matches(&self.inner.settings.csrf_key, &session.token, csrf) {
            return Err(error_page(
                StatusCode::FORBIDDEN,
                "Refused",
                "The form has expired; reload the page and try again.",
            ));
        }
        Ok(session)
    }
}

/// The server is stopping.
pub(crate) fn unavailable() -> Response {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "The console is restarting; try again in a moment.",
    )
}

pub(crate) async fn to_console() -> Redirect {
    Redirect::to("/console/")
}

pub(crate) async fn not_found(State(console): State<Console>, headers: HeaderMap) -> Response {
    match console.session(&headers).await {
        Ok(_) => error_page(StatusCode::NOT_FOUND, "Not found", "There is no such page."),
        Err(to_sign_in) => to_sign_in,
    }
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    email: String,
    message: Option<String>,
    ask_organization: bool,
    organizations: Vec<(String, String)>,
}

pub(crate) async fn sign_in_form(State(console): State<Console>, headers: HeaderMap) -> Response {
    if console.session(&headers).await.is_ok() {
        return Redirect::to("/console/").into_response();
    }
    render(&SignInPage {
        email: String::new(),
        message: None,
        ask_organization: false,
        organizations: Vec::new(),
    })
}

#[derive(Deserialize)]
pub(crate) struct SignInForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    organization: String,
}

pub(crate) async fn sign_in(
    State(console): State<Console>,
    request: axum::extract::Request,
) -> Response {
    use axum::extract::FromRequest as _;
    // The connection's peer (absent when the router is called without a listener).
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let headers = request.headers().clone();
    let Ok(Form(form)) = Form::<SignInForm>::from_request(request, &console).await else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Refused",
            "The sign-in form was incomplete.",
        );
    };
    if !same_origin(&headers) {
        return error_page(
            StatusCode::FORBIDDEN,
            "Refused",
            "This request did not come from the console.",
        );
    }
    if let Some(refused) = console.sign_in_refused(peer).await {
        return refused;
    }
    let page = |message: &str, organizations: Vec<(String, String)>| {
        let mut response = render(&SignInPage {
            email: form.email.clone(),
            message: Some(message.to_owned()),
            ask_organization: !organizations.is_empty(),
            organizations,
        });
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response
    };
    let auth = &console.inner.api.auth;
    match auth
        .sign_in(&form.email, &form.password, Some(&form.organization))
        .await
    {
        Ok(issued) => {
            let now = console.inner.clock.now();
            let max_age = issued.token.expires_at.map_or(0, |t| {
                u64::try_from((t.as_unix_millis() - now.as_unix_millis()) / 1000).unwrap_or(0)
            });
            let mut response = Redirect::to("/console/").into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                session_cookie(
                    issued.secret.expose(),
                    max_age,
                    console.inner.settings.secure_cookies,
                ),
            );
            response
        }
        Err(SignInError::ChooseOrganization(choices)) => page(
            "Your address has an account in several organizations: choose one.",
            choices
                .into_iter()
                .map(|c| (c.id.to_string(), c.name.as_str().to_owned()))
                .collect(),
        ),
        Err(SignInError::Auth(AuthError::Unauthenticated(Refusal::UserDisabled))) => {
            page("This account is disabled.", Vec::new())
        }
        Err(SignInError::Auth(AuthError::Unauthenticated(_))) => {
            page("Wrong e-mail or password.", Vec::new())
        }
        Err(SignInError::Auth(AuthError::Unavailable { message })) => {
            tracing::warn!(error = %message, "console: sign-in unavailable");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "Signing in is not possible right now; try again in a moment.",
            )
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn sign_out(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match console.session_for_change(&headers, &form.csrf).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    if let Err(e) = console
        .inner
        .api
        .auth
        .revoke_token(&session.identity.actor, session.identity.token_id)
        .await
    {
        tracing::warn!(error = %e, "console: session token not revoked at sign-out");
    }
    let mut response = Redirect::to("/console/sign-in").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cleared_cookie());
    response
}

/// The overview's filter, as its form sends it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct OverviewFilter {
    #[serde(default)]
    name: String,
    #[serde(default)]
    health: String,
    #[serde(default)]
    section: String,
    #[serde(default)]
    after: String,
}

impl OverviewFilter {
    fn any(&self) -> bool {
        !(self.name.is_empty() && self.health.is_empty() && self.section.is_empty())
    }

    fn next_link(&self, after: ChamberId) -> String {
        let mut link = format!("/console/?after={after}");
        for (key, value) in [
            ("name", &self.name),
            ("health", &self.health),
            ("section", &self.section),
        ] {
            if !value.is_empty() {
                link.push_str(&format!("&{key}={}", percent_encode(value)));
            }
        }
        link
    }
}

pub(crate) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

struct ValueCell {
    detector: String,
    name: String,
    value: String,
    unit: String,
}

struct OverviewRow {
    id: String,
    name: String,
    section: String,
    health: &'static str,
    paused: bool,
    age: String,
    /// The latest slot, Unix milliseconds (the page's script keeps the age current).
    slot: String,
    values: Vec<ValueCell>,
    open_alerts: usize,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Nav,
    filter: OverviewFilter,
    healths: Vec<&'static str>,
    sections: Vec<(String, String)>,
    rows: Vec<OverviewRow>,
    next: Option<String>,
}

/// How long ago, in words.
fn age(now: Timestamp, then: Option<Timestamp>) -> String {
    let Some(then) = then else {
        return "never".into();
    };
    let secs = (now.as_unix_millis() - then.as_unix_millis()).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 && d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{s:.3} s")
    }
}

pub(crate) async fn overview(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(filter): Query<OverviewFilter>,
) -> Response {
    let session = match console.session(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    match overview_page(&console, &session, filter).await {
        Ok(page) => render(&page),
        Err(e) => refusal(&e),
    }
}

async fn overview_page(
    console: &Console,
    session: &Session,
    filter: OverviewFilter,
) -> Result<OverviewPage, UseCaseError> {
    let api = &console.inner.api;
    let actor = &session.identity.actor;
    let size = PageSize::new(1000).unwrap_or_default();
    let sections: Vec<(String, String)> =
        every_page(size, |page| api.admin.list_sections(actor, page))
            .await?
            .into_iter()
            .map(|s| (s.id.to_string(), s.name.as_str().to_owned()))
            .collect();
    let section_names: HashMap<String, String> = sections.iter().cloned().collect();
    let chamber_filter = ChamberFilter {
        section_id: SectionId::parse(&filter.section).ok(),
        name_contains: Some(filter.name.trim().to_owned()).filter(|n| !n.is_empty()),
        health: HealthState::parse(&filter.health),
        ..ChamberFilter::default()
    };
    let page = api
        .admin
        .list_chamber_views(
            actor,
            chamber_filter,
            PageRequest {
                after: ChamberId::parse(&filter.after).ok(),
                size: PageSize::new(OVERVIEW_PAGE).unwrap_or_default(),
            },
        )
        .await?;
    let (views, next) = (page.items, page.next);
    let ids: Vec<ChamberId> = views.iter().map(|v| v.chamber.id).collect();
    let latest = if ids.is_empty() {
        Vec::new()
    } else {
        api.queries.latest(actor, &ids).await?
    };
    let mut open_alerts: HashMap<ChamberId, usize> = HashMap::new();
    let alerts = api
        .alerts
        .list_alerts(
            actor,
            AlertFilter {
                open_only: true,
                ..AlertFilter::default()
            },
            PageRequest::first(PageSize::new(1000).unwrap_or_default()),
        )
        .await?;
    for alert in alerts.items {
        *open_alerts.entry(alert.chamber_id).or_default() += 1;
    }
    let now = console.inner.clock.now();
    let rows = views
        .into_iter()
        .map(|mut v| {
            v.detectors
                .sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
            let last = latest.iter().find(|l| l.chamber_id == v.chamber.id);
            let values = v
                .detectors
                .iter()
                .map(|d| ValueCell {
                    detector: d.id.to_string(),
                    name: d.name.as_str().to_owned(),
                    value: last
                        .and_then(|l| l.readings.iter().find(|r| r.detector_id == d.id))
                        .map_or_else(
                            || "–".to_owned(),
                            |r| {
                                r.value
                                    .value()
                                    .map_or_else(|| "corrupted".into(), |x| x.to_string())
                            },
                        ),
                    unit: d.unit.as_str().to_owned(),
                })
                .collect();
            OverviewRow {
                id: v.chamber.id.to_string(),
                name: v.chamber.name.as_str().to_owned(),
                section: section_names
                    .get(&v.chamber.section_id.to_string())
                    .cloned()
                    .unwrap_or_default(),
                health: v.health.unwrap_or(HealthState::Unknown).as_str(),
                paused: v.chamber.state == ChamberState::Paused,
                age: age(now, last.map(|l| l.slot)),
                slot: last.map_or_else(String::new, |l| l.slot.as_unix_millis().to_string()),
                values,
                open_alerts: open_alerts.get(&v.chamber.id).copied().unwrap_or(0),
            }
        })
        .collect();
    Ok(OverviewPage {
        nav: session.nav(),
        next: next.map(|after| filter.next_link(after)),
        filter,
        healths: HealthState::ALL.iter().map(|h| h.as_str()).collect(),
        sections,
        rows,
    })
}

struct DetectorRow {
    id: String,
    name: String,
    value: String,
    unit: String,
    key: String,
    min: String,
    max: String,
}

struct LedgerRow {
    slot: String,
    code: &'static str,
    outcome: String,
    latency: String,
    lateness: String,
}

#[derive(Template)]
#[template(path = "chamber.html")]
struct ChamberPage {
    nav: Nav,
    id: String,
    name: String,
    health: &'static str,
    paused: bool,
    message: Option<String>,
    detectors: Vec<DetectorRow>,
    age: String,
    url: String,
    format: String,
    interval: String,
    interval_seconds: String,
    timeout: String,
    timeout_seconds: String,
    degraded_after: u32,
    down_after_failures: u32,
    down_after: String,
    down_after_seconds: u64,
    can_edit: bool,
    ledger: Vec<LedgerRow>,
    /// (id, name, condition).
    rules: Vec<(String, String, String)>,
    /// (id, name) of the chamber's detectors, for rule conditions.
    detector_choices: Vec<(String, String)>,
    ranges: Vec<(&'static str, &'static str)>,
    range: String,
    from: String,
    to: String,
    series_url: String,
    /// The same range's readings as a CSV file.
    csv_url: String,
    live: bool,
    coverage: Vec<CoverageCell>,
}

struct CoverageCell {
    class: &'static str,
    title: String,
}

/// Which chart range a chamber's page shows.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ChartRange {
    #[serde(default)]
    range: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

fn describe(outcome: &PollOutcome) -> String {
    match outcome {
        PollOutcome::Ok => "ok".into(),
        PollOutcome::CorruptedValues { corrupted } => format!("{corrupted} values corrupted"),
        PollOutcome::Timeout => "timed out".into(),
        PollOutcome::ConnectionFailed { reason } => format!("connection failed: {reason}"),
        PollOutcome::Blocked { reason } => format!("blocked: {reason}"),
        PollOutcome::HttpStatus { status } => format!("HTTP {status}"),
        PollOutcome::TooLarge { limit_bytes } => format!("body over {limit_bytes} bytes"),
        PollOutcome::Malformed { reason } => format!("malformed: {reason}"),
        PollOutcome::Missed => "missed (not scheduled)".into(),
        PollOutcome::Expired {
            reason: ExpiryReason::Late,
        } => "expired (delivered too late)".into(),
        PollOutcome::Expired {
            reason: ExpiryReason::StoreBehind,
        } => "expired (the store was behind)".into(),
        PollOutcome::Cancelled => "cancelled".into(),
    }
}

pub(crate) async fn chamber(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(chart): Query<ChartRange>,
) -> Response {
    let session = match console.session(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let Ok(id) = ChamberId::parse(&id) else {
        return refusal(&UseCaseError::NotFound { entity: "chamber" });
    };
    match chamber_page(&console, &session, id, None, chart).await {
        Ok(page) => render(&page),
        Err(e) => refusal(&e),
    }
}

async fn chamber_page(
    console: &Console,
    session: &Session,
    id: ChamberId,
    message: Option<String>,
    chart: ChartRange,
) -> Result<ChamberPage, UseCaseError> {
    let api = &console.inner.api;
    let actor = &session.identity.actor;
    let view = api.admin.chamber_view(actor, id).await?;
    let latest = api.queries.latest(actor, &[id]).await?;
    let latest = latest.into_iter().next();
    let now = console.inner.clock.now();
    let hour_ago = Timestamp::from_unix_millis(now.as_unix_millis() - 3_600_000);
    let ledger = api
        .queries
        .ledger(
            actor,
            &LedgerQuery {
                chamber_id: id,
                from: hour_ago,
                to: Timestamp::from_unix_millis(now.as_unix_millis() + 1),
                failures_only: false,
                page: PageRequest::first(PageSize::new(1000).unwrap_or_default()),
            },
        )
        .await?;
    let coverage = hourly_coverage(console, actor, id, now).await?;
    let custom = !chart.from.is_empty() && !chart.to.is_empty();
    let range = if custom {
        String::new()
    } else if ["1h", "24h", "7d"].contains(&chart.range.as_str()) {
        chart.range.clone()
    } else {
        "1h".to_owned()
    };
    let series_url = if custom {
        format!(
            "/console/chambers/{id}/series?from={}&to={}",
            percent_encode(&chart.from),
            percent_encode(&chart.to)
        )
    } else {
        format!("/console/chambers/{id}/series?range={range}")
    };
    let csv_url = series_url.replacen("/series?", "/readings.csv?", 1);
    let mut view = view;
    view.detectors
        .sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    let c = &view.chamber;
    let policy = c.health_policy;
    Ok(ChamberPage {
        nav: session.nav(),
        id: c.id.to_string(),
        name: c.name.as_str().to_owned(),
        health: view.health.unwrap_or(HealthState::Unknown).as_str(),
        paused: c.state == ChamberState::Paused,
        message,
        detectors: view
            .detectors
            .iter()
            .map(|d| DetectorRow {
                id: d.id.to_string(),
                min: d.range.min().map_or_else(String::new, |m| m.to_string()),
                max: d.range.max().map_or_else(String::new, |m| m.to_string()),
                name: d.name.as_str().to_owned(),
                value: latest
                    .as_ref()
                    .and_then(|l| l.readings.iter().find(|r| r.detector_id == d.id))
                    .map_or_else(String::new, |r| {
                        r.value
                            .value()
                            .map_or_else(|| "corrupted".into(), |x| x.to_string())
                    }),
                unit: d.unit.as_str().to_owned(),
                key: d.key.to_string(),
            })
            .collect(),
        age: age(now, latest.as_ref().map(|l| l.slot)),
        url: c.endpoint.to_string(),
        format: c.format.to_string(),
        interval: seconds(c.interval.as_duration()),
        interval_seconds: c.interval.as_duration().as_secs_f64().to_string(),
        timeout: seconds(c.timeout.as_duration()),
        timeout_seconds: c.timeout.as_duration().as_secs_f64().to_string(),
        degraded_after: policy.degraded_after(),
        down_after_failures: policy.down_after_failures(),
        down_after: seconds(policy.down_after()),
        down_after_seconds: policy.down_after().as_secs(),
        can_edit: actor.role >= Role::Operator,
        ranges: vec![("1 h", "1h"), ("24 h", "24h"), ("7 d", "7d")],
        live: range == "1h",
        range,
        from: chart.from,
        to: chart.to,
        series_url,
        csv_url,
        coverage,
        rules: api
            .alerts
            .list_rules(
                actor,
                Some(id),
                PageRequest::first(PageSize::new(1000).unwrap_or_default()),
            )
            .await?
            .items
            .into_iter()
            .map(|r| {
                (
                    r.id.to_string(),
                    r.name.as_str().to_owned(),
                    condition_text(&r.condition),
                )
            })
            .collect(),
        detector_choices: view
            .detectors
            .iter()
            .map(|d| (d.id.to_string(), d.name.as_str().to_owned()))
            .collect(),
        ledger: ledger
            .items
            .iter()
            .rev()
            .take(200)
            .map(|e| LedgerRow {
                slot: e.poll.slot.to_string(),
                code: e.outcome.code(),
                outcome: describe(&e.outcome),
                latency: e
                    .latency
                    .map_or_else(String::new, |d| format!("{} ms", d.as_millis())),
                lateness: format!("{} ms", e.lateness.as_millis()),
            })
            .collect(),
    })
}

#[derive(Deserialize)]
pub(crate) struct IntervalForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    seconds: String,
}

/// After a change: back to the chamber's page, or the page again with the refusal.
async fn after_change(
    console: &Console,
    session: &Session,
    id: ChamberId,
    result: Result<(), UseCaseError>,
) -> Response {
    match result {
        Ok(()) => Redirect::to(&format!("/console/chambers/{id}")).into_response(),
        Err(e @ UseCaseError::Invalid(_)) => {
            match chamber_page(
                console,
                session,
                id,
                Some(e.to_string()),
                ChartRange::default(),
            )
            .await
            {
                Ok(page) => {
                    let mut response = render(&page);
                    *response.status_mut() = StatusCode::BAD_REQUEST;
                    response
                }
                Err(e) => refusal(&e),
            }
        }
        Err(e) => refusal(&e),
    }
}

fn condition_text(condition: &AlertCondition) -> String {
    match condition {
        AlertCondition::ChamberDown { after } => format!("down for {}", seconds(*after)),
        AlertCondition::OutOfRange {
            min, max, after, ..
        } => format!(
            "a detector outside [{}, {}] for {}",
            min.map_or_else(|| "−∞".to_owned(), |m| m.get().to_string()),
            max.map_or_else(|| "∞".to_owned(), |m| m.get().to_string()),
            seconds(*after)
        ),
        AlertCondition::NoReading { after, .. } => format!("no reading for {}", seconds(*after)),
    }
}

fn parse_seconds(field: &'static str, raw: &str) -> Result<Duration, UseCaseError> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| invalid(field, "a number of seconds, such as 5 or 0.5"))
}

#[derive(Deserialize)]
pub(crate) struct SettingsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    timeout_seconds: String,
}

#[derive(Deserialize)]
pub(crate) struct HealthPolicyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    degraded_after: String,
    #[serde(default)]
    down_after_failures: String,
    #[serde(default)]
    down_after_seconds: String,
}

struct AlertRow {
    id: String,
    chamber_id: String,
    chamber: String,
    rule: String,
    since: String,
    resolved: String,
    detail: String,
    open: bool,
    acknowledged: Option<String>,
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    nav: Nav,
    all: bool,
    can_acknowledge: bool,
    alerts: Vec<AlertRow>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AlertsQuery {
    #[serde(default)]
    state: String,
}

pub(crate) async fn alerts(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<AlertsQuery>,
) -> Response {
    let session = match console.session(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    let all = query.state == "all";
    let api = &console.inner.api;
    let actor = &session.identity.actor;
    let page = api
        .alerts
        .list_alerts(
            actor,
            AlertFilter {
                open_only: !all,
                ..AlertFilter::default()
            },
            PageRequest::first(PageSize::new(1000).unwrap_or_default()),
        )
        .await;
    let page = match page {
        Ok(p) => p,
        Err(e) => return refusal(&e),
    };
    let mut names: HashMap<ChamberId, String> = HashMap::new();
    let mut rows = Vec::new();
    for alert in page.items.into_iter().rev() {
        if let std::collections::hash_map::Entry::Vacant(slot) = names.entry(alert.chamber_id) {
            let name = api
                .admin
                .get_chamber(actor, alert.chamber_id)
                .await
                .map(|c| c.chamber.name.as_str().to_owned())
                .unwrap_or_else(|_| "(deleted)".into());
            slot.insert(name);
        }
        rows.push(AlertRow {
            id: alert.id.to_string(),
            chamber_id: alert.chamber_id.to_string(),
            chamber: names[&alert.chamber_id].clone(),
            rule: alert.rule_name.as_str().to_owned(),
            since: alert.since.to_string(),
            resolved: alert
                .resolved_at
                .map_or_else(String::new, |t| t.to_string()),
            detail: alert.detail.clone(),
            open: alert.resolved_at.is_none(),
            acknowledged: alert
                .acknowledgement
                .as_ref()
                .map(|a| format!("{} at {}", a.comment.as_str(), a.at)),
        });
    }
    render(&AlertsPage {
        nav: session.nav(),
        all,
        can_acknowledge: actor.role >= Role::Operator,
        alerts: rows,
    })
}

#[derive(Deserialize)]
pub(crate) struct AcknowledgeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    comment: String,
}

pub(crate) async fn acknowledge(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<AcknowledgeForm>,
) -> Response {
    let session = match console.session_for_change(&headers, &form.csrf).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let Ok(id) = AlertId::parse(&id) else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "No such alert in your organization.",
        );
    };
    match console
        .inner
        .api
        .alerts
        .acknowledge(&session.identity.actor, id, &form.comment)
        .await
    {
        Ok(_) => Redirect::to("/console/alerts").into_response(),
        Err(e) => refusal(&e),
    }
}

/// The last 24 hours' coverage, an hour a cell (oldest first), from one ledger query.
async fn hourly_coverage(
    console: &Console,
    actor: &Actor,
    id: ChamberId,
    now: Timestamp,
) -> Result<Vec<CoverageCell>, UseCaseError> {
    const HOUR: i64 = 3_600_000;
    let this_hour = now.as_unix_millis().div_euclid(HOUR) * HOUR;
    let from = Timestamp::from_unix_millis(this_hour - 23 * HOUR);
    // The hour under way ends now (and is never empty, so that it gets its cell).
    let to = Timestamp::from_unix_millis(now.as_unix_millis().max(this_hour + 1));
    let hours = console
        .inner
        .api
        .queries
        .coverage_per_bucket(actor, id, from, to, Duration::from_secs(3600))
        .await?;
    Ok(hours
        .into_iter()
        .map(|(from, c)| {
            let class = match (c.slots, c.ratio()) {
                (0, _) => "none",
                (_, r) if r >= 0.999 => "full",
                (_, r) if r >= 0.9 => "most",
                _ => "poor",
            };
            CoverageCell {
                class,
                title: format!(
                    "{from}: {} of {} slots read, {} failed, {} missed",
                    c.read, c.slots, c.failed, c.missed
                ),
            }
        })
        .collect())
}

#[derive(Deserialize)]
pub(crate) struct RuleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    /// `down`, `no_reading` or `out_of_range`.
    #[serde(default)]
    kind: String,
    #[serde(default)]
    detector: String,
    #[serde(default)]
    min: String,
    #[serde(default)]
    max: String,
    #[serde(default)]
    after_seconds: String,
}

fn optional_number(field: &'static str, raw: &str) -> Result<Option<f64>, UseCaseError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse::<f64>()
        .map(Some)
        .map_err(|_| invalid(field, "a number, or empty"))
}

/// The condition a rule form describes.
fn condition_of(
    form: &RuleForm,
) -> Result<chamberlain_domain::usecases::NewCondition, UseCaseError> {
    use chamberlain_domain::usecases::NewCondition;
    let after = parse_seconds("condition.after", &form.after_seconds)?;
    let detector = DetectorId::parse(&form.detector).ok();
    let needs_detector = || invalid("condition.detector_id", "choose a detector");
    match form.kind.as_str() {
        "down" => Ok(NewCondition::ChamberDown { after }),
        "no_reading" => Ok(NewCondition::NoReading {
            detector_id: detector,
            after,
        }),
        "out_of_range" => Ok(NewCondition::OutOfRange {
            detector_id: detector.ok_or_else(needs_detector)?,
            min: optional_number("condition.min", &form.min)?,
            max: optional_number("condition.max", &form.max)?,
            after,
        }),
        _ => Err(invalid(
            "condition",
            "one of: down, no reading, out of range",
        )),
    }
}

#[derive(Deserialize)]
pub(crate) struct DetectorForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    min: String,
    #[serde(default)]
    max: String,
}

impl DetectorForm {
    fn detector(&self) -> Result<chamberlain_domain::usecases::NewDetector, UseCaseError> {
        Ok(chamberlain_domain::usecases::NewDetector {
            name: self.name.clone(),
            alias: None,
            unit: self.unit.clone(),
            key: self.key.clone(),
            min: optional_number("detector.min", &self.min)?,
            max: optional_number("detector.max", &self.max)?,
        })
    }
}

/// A change to one chamber from its page: the request's origin, session and form token are
/// checked, `change` runs as the caller (a refusal from it is answered like the API's), and the
/// answer is the chamber's page.
async fn change_chamber(
    console: &Console,
    headers: &HeaderMap,
    csrf: &str,
    id: &str,
    change: impl AsyncFnOnce(&ApiUseCases, &Actor, ChamberId) -> Result<(), UseCaseError>,
) -> Response {
    let session = match console.session_for_change(headers, csrf).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let Ok(id) = ChamberId::parse(id) else {
        return refusal(&UseCaseError::NotFound { entity: "chamber" });
    };
    let result = change(&console.inner.api, &session.identity.actor, id).await;
    after_change(console, &session, id, result).await
}

pub(crate) fn invalid(field: &'static str, rule: &str) -> UseCaseError {
    UseCaseError::Invalid(chamberlain_domain::error::ValidationError::new(
        field,
        chamberlain_domain::error::Rule::Format(rule.into()),
    ))
}

fn detector_id(raw: &str) -> Result<DetectorId, UseCaseError> {
    DetectorId::parse(raw).map_err(|_| UseCaseError::NotFound { entity: "detector" })
}

pub(crate) async fn set_interval(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<IntervalForm>,
) -> Response {
    change_chamber(
        &console,
        &headers,
        &form.csrf,
        &id,
        async |api, actor, id| {
            let interval = parse_seconds("interval", &form.seconds)?;
            api.admin.set_interval(actor, id, interval).await.map(drop)
        },
    )
    .await
}

pub(crate) async fn pause(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    change_chamber(
        &console,
        &headers,
        &form.csrf,
        &id,
        async |api, actor, id| api.admin.pause(actor, id).await.map(drop),
    )
    .await
}

pub(crate) async fn resume(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    change_chamber(
        &console,
        &headers,
        &form.csrf,
        &id,
        async |api, actor, id| api.admin.resume(actor, id).await.map(drop),
    )
    .await
}

/// URL and timeout.
pub(crate) async fn set_settings(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<SettingsForm>,
) -> Response {
    change_chamber(
        &console,
        &headers,
        &form.csrf,
        &id,
        async |api, actor, id| {
            let patch = ChamberPatch {
                url: Some(form.url.clone()),
                timeout: Some(parse_seconds("timeout", &form.timeout_seconds)?),
                ..ChamberPatch::default()
            };
            api.admin.update_chamber(actor, id, patch).await.map(drop)
        },
    )
    .await
}

pub(crate) async fn set_health_policy(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HealthPolicyForm>,
) -> Response {
    change_chamber(
        &console,
        &headers,
        &form.csrf,
        &id,
        async |api, actor, id| {
            let count = |field: &'static str, raw: &str| {
                raw.trim()
                    .parse::<u32>()
                    .map_err(|_| invalid(field, "a whole number, such as 3"))
            };
            let degraded = count("health.degraded_after", &form.degraded_after)?;
            let down = count("health.down_after_failures", &form.down_after_failures)?;
            let after = parse_seconds("health.down_after", &form.down_after_seconds)?;
            api.admin
                .set_health_policy(actor, id, degraded, down, after)
                .await
                .map(drop)
        },
    )
    .await
}

pub(crate) async fn add_rule(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<RuleForm>,
) -> Response {
    change_chamber(
        &console,
        &headers,
        &form.csrf,
        &id,
        async |api, actor, id| {
            let rule = chamberlain_domain::usecases::NewAlertRule {
                chamber_id: id,
                name: form.name.clone(),
                condition: condition_of(&form)?,
            };
            api.alerts.create_rule(actor, rule).await.map(drop)
        },
    )
    .await
}

pub(crate) async fn delete_rule(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((id, rule)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    change_chamber(
        &console,
        &headers,
        &form.csrf,
        &id,
        async |api, actor, _| {
            let rule = chamberlain_domain::model::AlertRuleId::parse(&rule).map_err(|_| {
                UseCaseError::NotFound {
                    entity: "alert rule",
                }
            })?;
            api.alerts.delete_rule(actor, rule).await
        },
    )
    .await
}

pub(crate) async fn add_detector(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<DetectorForm>,
) -> Response {
    change_chamber(
        &console,
        &headers,
        &form.csrf,
        &id,
        async |api, actor, id| {
            api.admin
                .add_detector(actor, id, form.detector()?)
                .await
                .map(drop)
        },
    )
    .await
}

pub(crate) async fn update_detector(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((id, detector)): Path<(String, String)>,
    Form(form): Form<DetectorForm>,
) -> Response {
    change_chamber(
        &console,
        &headers,
        &form.csrf,
        &id,
        async |api, actor, _| {
            api.admin
                .update_detector(actor, detector_id(&detector)?, form.detector()?)
                .await
                .map(drop)
        },
    )
    .await
}

pub(crate) async fn remove_detector(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((id, detector)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    change_chamber(
        &console,
        &headers,
        &form.csrf,
        &id,
        async |api, actor, _| {
            api.admin
                .remove_detector(actor, detector_id(&detector)?)
                .await
        },
    )
    .await
}
