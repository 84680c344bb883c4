//! The console over the API's use cases on in-memory adapters, request by request: sessions,
//! CSRF, roles and what each page shows. (Browser tests run it in Chromium.)

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chamberlain_console::{BoardBackend, Console, ConsoleSettings, QueueBoardSettings};
use chamberlain_domain::conformance::fixtures::{self, T0};
use chamberlain_domain::model::{ChamberId, OrganizationId, PageRequest, PageSize, Role};
use chamberlain_domain::ports::{
    ChamberFilter, ChamberRepository, DetectorRepository, PollQueue, ReadingRepository,
    Repositories,
};
use chamberlain_domain::usecases::{
    Actor, ApiPorts, ApiSettings, ApiUseCases, NewChamber, NewDetector, NewSection, NewUser,
};
use chamberlain_fakes::{InsecureTestPasswordHasher, ManualClock, MemoryStore};
use chamberlain_memory::{
    MemoryAccessEpoch, MemoryChamberChanges, MemoryEventBus, MemoryPollQueue,
};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const PASSWORD: &str = "correct horse battery";

struct Lab {
    router: Router,
    clock: Arc<ManualClock>,
    bus: Arc<MemoryEventBus>,
    store: Arc<MemoryStore>,
    org: OrganizationId,
    chamber: ChamberId,
    /// The API's authenticator (the one the console's use cases share).
    auth: chamberlain_domain::usecases::Authenticator,
    /// The poll queue the queue view shows (admin@lab.example is the installation operator).
    queue: Arc<MemoryPollQueue>,
}

async fn lab() -> Lab {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::at(T0);
    let repositories = Repositories::of(store.clone());
    let bus = Arc::new(MemoryEventBus::new(64));
    let api = ApiUseCases::new(
        &repositories,
        ApiPorts {
            changes: Arc::new(MemoryChamberChanges::new(64)),
            events: bus.clone(),
            feed: bus.clone(),
            passwords: Arc::new(InsecureTestPasswordHasher),
            access: Arc::new(MemoryAccessEpoch::default()),
            clock: clock.clone(),
        },
        ApiSettings::default(),
    );
    let user = |email: &str, role: &str| NewUser {
        email: email.into(),
        display_name: email.split('@').next().unwrap().into(),
        role: role.into(),
        password: Some(PASSWORD.into()),
    };
    let (org, admin) = api
        .users
        .create_organization("Lab", user("admin@lab.example", "admin"))
        .await
        .unwrap();
    let admin = Actor {
        user_id: admin.id,
        organization_id: org.id,
        role: Role::Admin,
    };
    // An organization admin elsewhere: an admin, but not of the installation.
    api.users
        .create_organization("Elsewhere", user("admin@elsewhere.example", "admin"))
        .await
        .unwrap();
    for (email, role) in [
        ("op@lab.example", "operator"),
        ("viewer@lab.example", "viewer"),
    ] {
        api.users
            .create_user(&admin, user(email, role))
            .await
            .unwrap();
    }
    let section = api
        .admin
        .create_section(
            &admin,
            NewSection {
                name: "Growth room".into(),
                description: String::new(),
            },
        )
        .await
        .unwrap();
    let mut chamber = None;
    for name in ["oven-a", "oven-b", "freezer"] {
        let created = api
            .admin
            .create_chamber(
                &admin,
                NewChamber {
                    section_id: section.id,
                    name: name.into(),
                    url: format!("http://chambers.example/{name}"),
                    format: String::new(),
                    interval: Duration::from_secs(60),
                    timeout: None,
                    detectors: vec![NewDetector {
                        name: "temperature".into(),
                        alias: None,
                        unit: "°C".into(),
                        key: "/t".into(),
                        min: None,
                        max: None,
                    }],
                },
            )
            .await
            .unwrap();
        chamber.get_or_insert(created.chamber.id);
    }
    // oven-a has read 21.5 °C.
    let chamber = chamber.unwrap();
    let c = ChamberRepository::get(&*store, org.id, chamber)
        .await
        .unwrap();
    let detectors = store.list_for_chamber(org.id, chamber).await.unwrap();
    store
        .store_polls(&[fixtures::poll_record(&c, &detectors, T0, 21.5, None)])
        .await
        .unwrap();
    let auth = api.auth.clone();
    let queue = Arc::new(MemoryPollQueue::new(clock.clone()));
    let console = Console::new(
        api,
        clock.clone(),
        ConsoleSettings {
            csrf_key: b"a test key of at least thirty-two bytes".to_vec(),
            secure_cookies: false,
            sign_in_limit: Some((
                Arc::new(chamberlain_memory::MemoryRateLimiter::default()),
                chamberlain_domain::ports::Rate {
                    per_second: std::num::NonZeroU32::MIN,
                    burst: std::num::NonZeroU32::new(10).unwrap(),
                },
            )),
            queue_board: Some(QueueBoardSettings {
                backend: BoardBackend::new(
                    queue.clone(),
                    queue.clone(),
                    clock.clone(),
                    "in-process",
                ),
                operators: [admin.user_id].into_iter().collect(),
            }),
        },
    );
    Lab {
        queue,
        router: console.router(),
        clock,
        bus,
        store,
        org: org.id,
        chamber,
        auth,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

impl Lab {
    /// Whether the API would take `secret` as a bearer token now.
    async fn console_api_accepts(&self, secret: &str) -> bool {
        self.auth
            .authenticate(Some(&format!("Bearer {secret}")))
            .await
            .is_ok()
    }

    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Answer {
        let mut request = Request::get(path).header(header::HOST, "lab:8080");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    /// A form post as the console's own page sends it (same origin), unless `origin` says
    /// otherwise.
    async fn post(&self, path: &str, cookie: Option<&str>, form: &str, origin: &str) -> Answer {
        let mut request = Request::post(path)
            .header(header::HOST, "lab:8080")
            .header(header::ORIGIN, origin)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::from(form.to_owned())).unwrap())
            .await
    }

    /// Signs in; the session cookie (`name=value`) and the page's CSRF token.
    async fn sign_in(&self, email: &str) -> (String, String) {
        let answer = self
            .post(
                "/console/sign-in",
                None,
                &format!("email={email}&password=correct+horse+battery"),
                "http://lab:8080",
            )
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let cookie = answer
            .headers
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let pair = cookie.split(';').next().unwrap().to_owned();
        let page = self.get("/console/", Some(&pair)).await;
        let csrf = page
            .body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no CSRF token on the page: {} {}", page.status, page.body))
            .to_owned();
        (pair, csrf)
    }

    async fn interval(&self) -> Duration {
        ChamberRepository::get(&*self.store, self.org, self.chamber)
            .await
            .unwrap()
            .interval
            .as_duration()
    }
}

#[tokio::test]
async fn no_console_page_answers_without_a_session() {
    let lab = lab().await;
    for path in [
        "/console/".to_owned(),
        format!("/console/chambers/{}", lab.chamber),
        "/console/no-such-page".to_owned(),
    ] {
        let answer = lab.get(&path, None).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.location(), "/console/sign-in", "{path}");
        assert!(!answer.body.contains("oven"), "{path}");
    }
    let forged = lab
        .get("/console/", Some("chamberlain_session=chm_not_a_session"))
        .await;
    assert_eq!(forged.location(), "/console/sign-in");
    let post = lab
        .post(
            &format!("/console/chambers/{}/pause", lab.chamber),
            None,
            "csrf=x",
            "http://lab:8080",
        )
        .await;
    assert_eq!(post.status, StatusCode::FORBIDDEN);
    // Only the sign-in page and the static files answer.
    let sign_in = lab.get("/console/sign-in", None).await;
    assert_eq!(sign_in.status, StatusCode::OK);
    // The page names its icon, so a browser never asks for /favicon.ico (outside the console:
    // through Envoy an API path, refused without a token).
    assert!(
        sign_in
            .body
            .contains(r#"<link rel="icon" href="/console/static/favicon.svg""#),
        "{}",
        sign_in.body
    );
    let icon = lab.get("/console/static/favicon.svg", None).await;
    assert_eq!(icon.status, StatusCode::OK);
    assert_eq!(icon.headers[header::CONTENT_TYPE], "image/svg+xml");
    let css = lab.get("/console/static/console.css", None).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(
        css.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
}

#[tokio::test]
async fn signing_in_sets_a_strict_httponly_cookie_and_the_overview_shows_the_chambers() {
    let lab = lab().await;
    let answer = lab
        .post(
            "/console/sign-in",
            None,
            "email=viewer%40lab.example&password=correct+horse+battery",
            "http://lab:8080",
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let cookie = answer.headers[header::SET_COOKIE].to_str().unwrap();
    for part in [
        "chamberlain_session=chm_",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap();
    let page = lab.get("/console/", Some(pair)).await;
    assert_eq!(page.status, StatusCode::OK);
    for shown in [
        "oven-a",
        "oven-b",
        "freezer",
        "Growth room",
        "21.5",
        "°C",
        "viewer",
    ] {
        assert!(page.body.contains(shown), "{shown} missing");
    }
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(!page.body.contains("<script>"), "no inline script");
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");

    // Filtered by name.
    let ovens = lab.get("/console/?name=oven", Some(pair)).await;
    assert!(ovens.body.contains("oven-a") && ovens.body.contains("oven-b"));
    assert!(!ovens.body.contains("freezer"));
    // By health: nothing has been polled into a health state but "unknown".
    let down = lab.get("/console/?health=down", Some(pair)).await;
    assert!(!down.body.contains("oven-a"), "{}", down.body);
    assert!(down.body.contains("match the filter"));
}

#[tokio::test]
async fn a_wrong_password_is_refused_keeping_the_address_typed() {
    let lab = lab().await;
    let answer = lab
        .post(
            "/console/sign-in",
            None,
            "email=viewer%40lab.example&password=wrong+password+here",
            "http://lab:8080",
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.body.contains("Wrong e-mail or password"));
    assert!(answer.body.contains("value=\"viewer@lab.example\""));
    assert!(!answer.body.contains("wrong+password") && !answer.body.contains("wrong password"));
    assert!(!answer.headers.contains_key(header::SET_COOKIE));
}

#[tokio::test]
async fn an_operator_changes_the_interval_but_not_from_another_site_nor_without_the_form_token() {
    let lab = lab().await;
    let (cookie, csrf) = lab.sign_in("op%40lab.example").await;
    let path = format!("/console/chambers/{}/interval", lab.chamber);
    let page = lab
        .get(&format!("/console/chambers/{}", lab.chamber), Some(&cookie))
        .await;
    assert!(page.body.contains("Change interval"));

    // A cross-site form post, a post without the token and one with another's token.
    let cross_site = lab
        .post(
            &path,
            Some(&cookie),
            &format!("csrf={csrf}&seconds=5"),
            "http://evil.example",
        )
        .await;
    assert_eq!(cross_site.status, StatusCode::FORBIDDEN);
    let no_token = lab
        .post(&path, Some(&cookie), "seconds=5", "http://lab:8080")
        .await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    let (_, viewers_token) = lab.sign_in("viewer%40lab.example").await;
    let wrong_token = lab
        .post(
            &path,
            Some(&cookie),
            &format!("csrf={viewers_token}&seconds=5"),
            "http://lab:8080",
        )
        .await;
    assert_eq!(wrong_token.status, StatusCode::FORBIDDEN);
    assert_eq!(
        lab.interval().await,
        Duration::from_secs(60),
        "nothing changed"
    );

    // Bad input is refused naming the field, on the page.
    let bad = lab
        .post(
            &path,
            Some(&cookie),
            &format!("csrf={csrf}&seconds=soon"),
            "http://lab:8080",
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("interval"), "{}", bad.body);

    let changed = lab
        .post(
            &path,
            Some(&cookie),
            &format!("csrf={csrf}&seconds=5"),
            "http://lab:8080",
        )
        .await;
    assert_eq!(changed.status, StatusCode::SEE_OTHER, "{}", changed.body);
    assert_eq!(lab.interval().await, Duration::from_secs(5));
}

#[tokio::test]
async fn a_viewer_sees_no_edit_controls_and_a_forged_edit_is_refused() {
    let lab = lab().await;
    let (cookie, csrf) = lab.sign_in("viewer%40lab.example").await;
    let page = lab
        .get(&format!("/console/chambers/{}", lab.chamber), Some(&cookie))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("oven-a"));
    for control in ["Change interval", "Pause", "/pause\""] {
        assert!(!page.body.contains(control), "{control} shown to a viewer");
    }
    for (path, form) in [
        (
            format!("/console/chambers/{}/interval", lab.chamber),
            format!("csrf={csrf}&seconds=5"),
        ),
        (
            format!("/console/chambers/{}/pause", lab.chamber),
            format!("csrf={csrf}"),
        ),
    ] {
        let forged = lab
            .post(&path, Some(&cookie), &form, "http://lab:8080")
            .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            forged.body.contains("requires the operator role"),
            "{}",
            forged.body
        );
        assert!(!forged.body.contains("StoreError") && !forged.body.contains("panicked"));
    }
    assert_eq!(lab.interval().await, Duration::from_secs(60));
}

#[tokio::test]
async fn signing_out_ends_the_session_on_the_server() {
    let lab = lab().await;
    let (cookie, csrf) = lab.sign_in("admin%40lab.example").await;
    let out = lab
        .post(
            "/console/sign-out",
            Some(&cookie),
            &format!("csrf={csrf}"),
            "http://lab:8080",
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(
        out.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    // The old cookie, replayed, no longer opens anything.
    let replayed = lab.get("/console/", Some(&cookie)).await;
    assert_eq!(replayed.location(), "/console/sign-in");
}

/// The overview's live stream: a reading written for a chamber on the page arrives as one
/// coalesced update with the detector's value; a chamber not on the page sends nothing.
#[tokio::test]
async fn the_live_stream_sends_a_followed_chambers_new_values() {
    use chamberlain_domain::ports::{DomainEvent, EventPublisher, RoutingTag};
    let lab = lab().await;
    assert_eq!(
        lab.get("/console/live", None).await.location(),
        "/console/sign-in"
    );
    let (cookie, _) = lab.sign_in("viewer%40lab.example").await;
    let response = lab
        .router
        .clone()
        .oneshot(
            Request::get(format!("/console/live?chambers={}", lab.chamber))
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let c = ChamberRepository::get(&*lab.store, lab.org, lab.chamber)
        .await
        .unwrap();
    let detectors = lab
        .store
        .list_for_chamber(lab.org, lab.chamber)
        .await
        .unwrap();
    let slot = chamberlain_domain::Timestamp::from_unix_millis(T0.as_unix_millis() + 60_000);
    let record = fixtures::poll_record(&c, &detectors, slot, 23.25, None);
    // The subscription starts with the stream; publish until the update arrives.
    let mut body = response.into_body();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while !seen.contains("event: chamber") {
        lab.bus
            .publish(&[DomainEvent::ReadingsWritten {
                routing: RoutingTag {
                    organization_id: lab.org,
                    section_id: Some(c.section_id),
                    chamber_id: Some(c.id),
                },
                poll: record.entry.poll,
                readings: record.readings.clone(),
            }])
            .await
            .unwrap();
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("an update within the deadline")
            .expect("the stream stays open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(seen.contains("23.25"), "{seen}");
    assert!(seen.contains(&detectors[0].id.to_string()), "{seen}");
    assert!(seen.contains(&slot.as_unix_millis().to_string()), "{seen}");
}

/// A chart's data: each detector's values over the range, aggregated on the server; a bad range
/// is refused naming it.
#[tokio::test]
async fn a_chart_gets_each_detectors_values_over_the_range() {
    let lab = lab().await;
    let (cookie, _) = lab.sign_in("viewer%40lab.example").await;
    lab.clock.advance(Duration::from_secs(30));
    let path = format!("/console/chambers/{}/series?range=1h", lab.chamber);
    let answer = lab.get(&path, Some(&cookie)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let series: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(series["detectors"][0]["name"], "temperature");
    assert_eq!(series["detectors"][0]["unit"], "°C");
    assert_eq!(series["t"].as_array().unwrap().len(), 1, "{series}");
    assert_eq!(series["values"][0][0], 21.5);
    assert_eq!(
        series["bucket"], 60,
        "the chamber's interval: one point per slot"
    );
    let bad = lab
        .get(
            &format!("/console/chambers/{}/series?range=2w", lab.chamber),
            Some(&cookie),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("range"));
    assert_eq!(lab.get(&path, None).await.location(), "/console/sign-in");
}

/// A chamber's readings over the chart's range download as the API's CSV file, linked from its
/// page; a range that does not parse is refused, and nothing answers without a session.
#[tokio::test]
async fn a_chambers_readings_download_as_csv() {
    let lab = lab().await;
    let (cookie, _) = lab.sign_in("viewer%40lab.example").await;
    lab.clock.advance(Duration::from_secs(30));
    let page = lab
        .get(
            &format!("/console/chambers/{}?range=24h", lab.chamber),
            Some(&cookie),
        )
        .await;
    let link = format!("/console/chambers/{}/readings.csv?range=24h", lab.chamber);
    assert!(
        page.body.contains(&link),
        "the page links its download: {}",
        page.body
    );
    let csv = lab.get(&link, Some(&cookie)).await;
    assert_eq!(csv.status, StatusCode::OK, "{}", csv.body);
    assert_eq!(csv.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    assert!(
        csv.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"chamber-"),
        "{:?}",
        csv.headers
    );
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(
        lines[0],
        chamberlain_domain::usecases::CSV_HEADER.trim_end()
    );
    assert_eq!(lines.len(), 2, "{}", csv.body);
    assert!(
        lines[1].starts_with(&format!("{},{},", T0.to_rfc3339(), lab.chamber))
            && lines[1].contains(",21.5,"),
        "{}",
        lines[1]
    );
    let bad = lab
        .get(
            &format!(
                "/console/chambers/{}/readings.csv?range=forever",
                lab.chamber
            ),
            Some(&cookie),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(lab.get(&link, None).await.location(), "/console/sign-in");
}

/// Sign-in attempts are limited: past the burst, the form answers 429 without a password check.
#[tokio::test]
async fn sign_in_attempts_are_rate_limited() {
    let lab = lab().await;
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let answer = lab
            .post(
                "/console/sign-in",
                None,
                "email=viewer%40lab.example&password=wrong+password+here",
                "http://lab:8080",
            )
            .await;
        statuses.push(answer.status);
    }
    assert!(
        statuses[..10]
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    assert!(
        statuses[11..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

/// An operator adds and deletes a chamber's alert rules on its page; a bad rule is refused
/// naming the field; a viewer is refused.
#[tokio::test]
async fn alert_rules_are_added_and_deleted_on_a_chambers_page() {
    let lab = lab().await;
    let (cookie, csrf) = lab.sign_in("op%40lab.example").await;
    let page = format!("/console/chambers/{}", lab.chamber);
    let rules = format!("{page}/rules");
    let added = lab
        .post(
            &rules,
            Some(&cookie),
            &format!("csrf={csrf}&name=Oven+down&kind=down&after_seconds=120"),
            "http://lab:8080",
        )
        .await;
    assert_eq!(added.status, StatusCode::SEE_OTHER, "{}", added.body);
    let shown = lab.get(&page, Some(&cookie)).await;
    assert!(
        shown.body.contains("Oven down") && shown.body.contains("down for 120 s"),
        "{}",
        shown.body
    );

    for (form, field) in [
        ("name=Fast&kind=down&after_seconds=0", "condition.after"),
        (
            "name=Range&kind=out_of_range&after_seconds=60&max=30",
            "condition.detector_id",
        ),
        ("name=Odd&kind=sometimes&after_seconds=60", "condition"),
    ] {
        let refused = lab
            .post(
                &rules,
                Some(&cookie),
                &format!("csrf={csrf}&{form}"),
                "http://lab:8080",
            )
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{form}");
        assert!(refused.body.contains(field), "{form}: {}", refused.body);
    }

    let (viewer, viewer_csrf) = lab.sign_in("viewer%40lab.example").await;
    let forged = lab
        .post(
            &rules,
            Some(&viewer),
            &format!("csrf={viewer_csrf}&name=Mine&kind=down&after_seconds=60"),
            "http://lab:8080",
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let rule_id = shown
        .body
        .split("/rules/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let deleted = lab
        .post(
            &format!("{rules}/{rule_id}/delete"),
            Some(&cookie),
            &format!("csrf={csrf}"),
            "http://lab:8080",
        )
        .await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER);
    assert!(
        !lab.get(&page, Some(&cookie))
            .await
            .body
            .contains("Oven down")
    );
}

/// An operator adds, changes and removes a chamber's detectors on its page; a bad key is
/// refused naming the field.
#[tokio::test]
async fn detectors_are_added_changed_and_removed_on_a_chambers_page() {
    let lab = lab().await;
    let (cookie, csrf) = lab.sign_in("op%40lab.example").await;
    let page = format!("/console/chambers/{}", lab.chamber);
    let detectors = format!("{page}/detectors");
    let added = lab
        .post(
            &detectors,
            Some(&cookie),
            &format!("csrf={csrf}&name=humidity&unit=%25RH&key=%2Fh&min=0&max=100"),
            "http://lab:8080",
        )
        .await;
    assert_eq!(added.status, StatusCode::SEE_OTHER, "{}", added.body);
    let bad = lab
        .post(
            &detectors,
            Some(&cookie),
            &format!("csrf={csrf}&name=co2&key=no-pointer"),
            "http://lab:8080",
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("key"), "{}", bad.body);

    let listed = ChamberRepository::get(&*lab.store, lab.org, lab.chamber)
        .await
        .unwrap();
    let all = lab
        .store
        .list_for_chamber(lab.org, listed.id)
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let humidity = all.iter().find(|d| d.name.as_str() == "humidity").unwrap();
    let changed = lab
        .post(
            &format!("{detectors}/{}", humidity.id),
            Some(&cookie),
            &format!("csrf={csrf}&name=rh&unit=%25RH&key=%2Fh&min=0&max=95"),
            "http://lab:8080",
        )
        .await;
    assert_eq!(changed.status, StatusCode::SEE_OTHER, "{}", changed.body);
    let after = lab
        .store
        .list_for_chamber(lab.org, listed.id)
        .await
        .unwrap();
    let rh = after.iter().find(|d| d.id == humidity.id).unwrap();
    assert_eq!((rh.name.as_str(), rh.range.max()), ("rh", Some(95.0)));
    let removed = lab
        .post(
            &format!("{detectors}/{}/delete", humidity.id),
            Some(&cookie),
            &format!("csrf={csrf}"),
            "http://lab:8080",
        )
        .await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER);
    assert_eq!(
        lab.store
            .list_for_chamber(lab.org, listed.id)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A form with a field left out is refused naming the field, like one with a bad value.
#[tokio::test]
async fn a_form_without_a_field_names_it() {
    let lab = lab().await;
    let (cookie, csrf) = lab.sign_in("op%40lab.example").await;
    let page = format!("/console/chambers/{}", lab.chamber);
    for (path, form, field) in [
        (
            format!("{page}/interval"),
            format!("csrf={csrf}"),
            "interval",
        ),
        (
            format!("{page}/settings"),
            format!("csrf={csrf}&url=http%3A%2F%2Fa.example%2F"),
            "timeout",
        ),
        (
            format!("{page}/health-policy"),
            format!("csrf={csrf}&degraded_after=1"),
            "health.down_after_failures",
        ),
    ] {
        let refused = lab
            .post(&path, Some(&cookie), &form, "http://lab:8080")
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(refused.body.contains(field), "{path}: {}", refused.body);
    }
    assert_eq!(lab.interval().await, Duration::from_secs(60));
}

/// An operator creates, renames and deletes sections and starts and ends a batch on the
/// sections page; bad input comes back on the page naming the field with what was typed kept; a
/// section with chambers is not deleted; a batch's page shows its coverage, its chambers and a
/// download of its readings; a viewer sees no forms and a forged change is refused.
#[tokio::test]
async fn sections_and_batches_are_managed_on_their_page() {
    let lab = lab().await;
    let (cookie, csrf) = lab.sign_in("op%40lab.example").await;
    let origin = "http://lab:8080";
    let page = lab.get("/console/sections", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Growth room") && page.body.contains("Create section"));

    let created = lab
        .post(
            "/console/sections",
            Some(&cookie),
            &format!("csrf={csrf}&name=Cold+store&description=Minus+twenty"),
            origin,
        )
        .await;
    assert_eq!(created.location(), "/console/sections");
    let page = lab.get("/console/sections", Some(&cookie)).await;
    assert!(page.body.contains("Cold store") && page.body.contains("Minus twenty"));

    // An empty name: refused naming the field, the description typed kept.
    let bad = lab
        .post(
            "/console/sections",
            Some(&cookie),
            &format!("csrf={csrf}&name=&description=kept+as+typed"),
            origin,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(bad.body.contains("section.name"), "{}", bad.body);
    assert!(
        bad.body.contains(r#"value="kept as typed""#),
        "{}",
        bad.body
    );

    let cold = section_id_named(&lab, &cookie, "Cold store").await;
    let renamed = lab
        .post(
            &format!("/console/sections/{cold}/rename"),
            Some(&cookie),
            &format!("csrf={csrf}&name=Cold+room&description="),
            origin,
        )
        .await;
    assert_eq!(renamed.location(), "/console/sections");
    assert!(
        lab.get("/console/sections", Some(&cookie))
            .await
            .body
            .contains("Cold room")
    );

    // The growth room holds chambers: it stays, and the page says why.
    let growth = section_id_named(&lab, &cookie, "Growth room").await;
    let refused = lab
        .post(
            &format!("/console/sections/{growth}/delete"),
            Some(&cookie),
            &format!("csrf={csrf}"),
            origin,
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    let deleted = lab
        .post(
            &format!("/console/sections/{cold}/delete"),
            Some(&cookie),
            &format!("csrf={csrf}"),
            origin,
        )
        .await;
    assert_eq!(deleted.location(), "/console/sections");
    assert!(
        !lab.get("/console/sections", Some(&cookie))
            .await
            .body
            .contains("Cold room")
    );

    // A batch in the growth room: its page, its download, then ended.
    let started = lab
        .post(
            "/console/batches",
            Some(&cookie),
            &format!("csrf={csrf}&section={growth}&name=Trial+7&description="),
            origin,
        )
        .await;
    assert_eq!(started.location(), "/console/sections");
    let page = lab.get("/console/sections", Some(&cookie)).await;
    let batch = page
        .body
        .split("data-batch=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the batch is listed")
        .to_owned();
    lab.clock.advance(Duration::from_secs(120));
    let batch_page = lab
        .get(&format!("/console/batches/{batch}"), Some(&cookie))
        .await;
    assert_eq!(batch_page.status, StatusCode::OK, "{}", batch_page.body);
    assert!(batch_page.body.contains("Trial 7") && batch_page.body.contains("oven-a"));
    assert!(
        batch_page.body.contains("slots read"),
        "{}",
        batch_page.body
    );
    // Charts over the batch's time: the first chamber by name, another one on request.
    assert!(
        batch_page
            .body
            .contains("Readings of freezer during the batch"),
        "{}",
        batch_page.body
    );
    let oven = lab
        .get(
            &format!("/console/batches/{batch}?chamber={}", lab.chamber),
            Some(&cookie),
        )
        .await;
    assert!(oven.body.contains("Readings of oven-a during the batch"));
    let series_url = oven
        .body
        .split("data-series=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a chart")
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    assert!(
        series_url.starts_with(&format!("/console/chambers/{}/series?from=", lab.chamber)),
        "{series_url}"
    );
    let series = lab.get(&series_url, Some(&cookie)).await;
    assert_eq!(
        series.status,
        StatusCode::OK,
        "{series_url}: {}",
        series.body
    );
    let series: serde_json::Value = serde_json::from_str(&series.body).unwrap();
    assert_eq!(
        series["to"].as_i64().unwrap() - series["from"].as_i64().unwrap(),
        120
    );
    assert_eq!(series["detectors"][0]["name"], "temperature");
    let csv = lab
        .get(
            &format!("/console/batches/{batch}/readings.csv"),
            Some(&cookie),
        )
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(csv.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    assert!(
        csv.body
            .starts_with(chamberlain_domain::usecases::CSV_HEADER)
    );
    let again = lab
        .post(
            "/console/batches",
            Some(&cookie),
            &format!("csrf={csrf}&section={growth}&name=Trial+8&description="),
            origin,
        )
        .await;
    assert_eq!(
        again.status,
        StatusCode::CONFLICT,
        "one open batch per section: {}",
        again.body
    );
    assert!(again.body.contains(r#"value="Trial 8""#), "{}", again.body);
    let ended = lab
        .post(
            &format!("/console/batches/{batch}/end"),
            Some(&cookie),
            &format!("csrf={csrf}"),
            origin,
        )
        .await;
    assert_eq!(ended.location(), format!("/console/batches/{batch}"));
    assert!(
        !lab.get(&format!("/console/batches/{batch}"), Some(&cookie))
            .await
            .body
            .contains("End batch")
    );

    // A viewer: no forms, and a forged change is refused by the use case.
    let (viewer, viewer_csrf) = lab.sign_in("viewer%40lab.example").await;
    let page = lab.get("/console/sections", Some(&viewer)).await;
    assert!(!page.body.contains("Create section") && !page.body.contains("Start batch"));
    let forged = lab
        .post(
            "/console/sections",
            Some(&viewer),
            &format!("csrf={viewer_csrf}&name=Forged&description="),
            origin,
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(
        !lab.get("/console/sections", Some(&cookie))
            .await
            .body
            .contains("Forged")
    );
}

/// The id of the section named `name` on the sections page.
async fn section_id_named(lab: &Lab, cookie: &str, name: &str) -> String {
    let page = lab.get("/console/sections", Some(cookie)).await;
    page.body
        .split("<tr data-section=\"")
        .skip(1)
        .find(|row| row.contains(&format!(">{name}</a>")))
        .and_then(|row| row.split('"').next())
        .unwrap_or_else(|| panic!("{name} is listed: {}", page.body))
        .to_owned()
}

/// An admin adds a user, changes their role and deletes them, creates a token whose secret is
/// shown once (never on the page again) and revokes it, after which it is refused at once; bad
/// input is refused naming the field with what was typed kept; anyone changes their own name;
/// a viewer sees no user administration and a forged admin request is refused.
#[tokio::test]
async fn users_and_tokens_are_managed_on_their_page() {
    let lab = lab().await;
    let origin = "http://lab:8080";
    let (admin, csrf) = lab.sign_in("admin%40lab.example").await;
    let page = lab.get("/console/users", Some(&admin)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("viewer@lab.example") && page.body.contains("Add user"));

    let bad = lab
        .post(
            "/console/users",
            Some(&admin),
            &format!("csrf={csrf}&email=not-an-address&name=Tech&role=operator&password="),
            origin,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(bad.body.contains("user.email"), "{}", bad.body);
    assert!(
        bad.body.contains(r#"value="not-an-address""#),
        "{}",
        bad.body
    );
    let added = lab
        .post(
            "/console/users",
            Some(&admin),
            &format!(
                "csrf={csrf}&email=tech%40lab.example&name=Tech&role=viewer&password=correct+horse+battery"
            ),
            origin,
        )
        .await;
    assert_eq!(added.location(), "/console/users");
    let page = lab.get("/console/users", Some(&admin)).await;
    let tech = page
        .body
        .split("<tr data-user=\"")
        .skip(1)
        .find(|row| row.contains("tech@lab.example"))
        .and_then(|row| row.split('"').next())
        .expect("the new user is listed")
        .to_owned();
    let promoted = lab
        .post(
            &format!("/console/users/{tech}/role"),
            Some(&admin),
            &format!("csrf={csrf}&role=operator"),
            origin,
        )
        .await;
    assert_eq!(promoted.location(), "/console/users");

    // A token: its secret on the answer only, then revoked and refused at once.
    let created = lab
        .post(
            "/console/tokens",
            Some(&admin),
            &format!("csrf={csrf}&name=logger&role=viewer&expires_days="),
            origin,
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert_eq!(created.headers[header::CACHE_CONTROL], "no-store");
    let secret = created
        .body
        .split("<output id=\"token-secret\" class=\"secret\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the secret is shown")
        .to_owned();
    assert!(secret.starts_with("chm_"), "{secret}");
    let page = lab.get("/console/users", Some(&admin)).await;
    assert!(!page.body.contains(&secret), "shown once only");
    assert!(lab.console_api_accepts(&secret).await);
    let token = page
        .body
        .split("<tr data-token=\"")
        .skip(1)
        .find(|row| row.contains("logger"))
        .and_then(|row| row.split('"').next())
        .expect("the token is listed")
        .to_owned();
    let revoked = lab
        .post(
            &format!("/console/tokens/{token}/revoke"),
            Some(&admin),
            &format!("csrf={csrf}"),
            origin,
        )
        .await;
    assert_eq!(revoked.location(), "/console/users");
    assert!(!lab.console_api_accepts(&secret).await, "refused at once");
    let bad_days = lab
        .post(
            "/console/tokens",
            Some(&admin),
            &format!("csrf={csrf}&name=kept&role=&expires_days=soon"),
            origin,
        )
        .await;
    assert_eq!(bad_days.status, StatusCode::BAD_REQUEST);
    assert!(bad_days.body.contains("expires_days") && bad_days.body.contains(r#"value="kept""#));

    let deleted = lab
        .post(
            &format!("/console/users/{tech}/delete"),
            Some(&admin),
            &format!("csrf={csrf}"),
            origin,
        )
        .await;
    assert_eq!(deleted.location(), "/console/users");
    assert!(
        !lab.get("/console/users", Some(&admin))
            .await
            .body
            .contains("tech@lab.example")
    );

    // A viewer: their own name and tokens only; a forged admin request is refused.
    let (viewer, viewer_csrf) = lab.sign_in("viewer%40lab.example").await;
    let page = lab.get("/console/users", Some(&viewer)).await;
    assert!(!page.body.contains("Add user") && !page.body.contains("admin@lab.example"));
    let renamed = lab
        .post(
            "/console/account/name",
            Some(&viewer),
            &format!("csrf={viewer_csrf}&name=Vera"),
            origin,
        )
        .await;
    assert_eq!(renamed.location(), "/console/users");
    assert!(
        lab.get("/console/users", Some(&viewer))
            .await
            .body
            .contains("Vera")
    );
    let forged = lab
        .post(
            "/console/users",
            Some(&viewer),
            &format!("csrf={viewer_csrf}&email=x%40lab.example&name=X&role=admin&password="),
            origin,
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn transmitters_their_delivery_state_and_dead_letters_are_on_admin_pages() {
    use chamberlain_domain::model::{DeadLetterId, TransmitterId};
    use chamberlain_domain::ports::TransmitterRepository;
    use chamberlain_domain::transmit::{DeadLetter, Delivery, DeliveryKind, DeliveryState};

    let lab = lab().await;
    let origin = "http://lab:8080";
    let (admin, csrf) = lab.sign_in("admin%40lab.example").await;
    let page = lab.get("/console/transmitters", Some(&admin)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("No transmitters yet."));

    // Refused naming the field, what was typed kept but never the secret.
    let bad = lab
        .post(
            "/console/transmitters",
            Some(&admin),
            &format!(
                "csrf={csrf}&name=pager&kind=webhook&url=ftp%3A%2F%2Fhooks.example%2Fx\
                 &secret=0123456789abcdef-typed&alerts=on"
            ),
            origin,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(bad.body.contains("transmitter.webhook.url"), "{}", bad.body);
    assert!(
        bad.body.contains(r#"value="ftp://hooks.example/x""#),
        "{}",
        bad.body
    );
    assert!(!bad.body.contains("0123456789abcdef-typed"));
    let no_kind = lab
        .post(
            "/console/transmitters",
            Some(&admin),
            &format!("csrf={csrf}&name=pager&alerts=on"),
            origin,
        )
        .await;
    assert!(
        no_kind.body.contains("transmitter.kind"),
        "{}",
        no_kind.body
    );

    for form in [
        "name=pager&kind=webhook&url=https%3A%2F%2Fhooks.example%2Fx&secret=0123456789abcdef-secret&alerts=on",
        "name=broker&kind=mqtt&broker=mqtt%3A%2F%2F127.0.0.1%3A1883&topic_prefix=lab%2Fone&readings=on&alerts=on",
    ] {
        let created = lab
            .post(
                "/console/transmitters",
                Some(&admin),
                &format!("csrf={csrf}&{form}"),
                origin,
            )
            .await;
        assert_eq!(
            created.location(),
            "/console/transmitters",
            "{}",
            created.body
        );
    }
    let duplicate = lab
        .post(
            "/console/transmitters",
            Some(&admin),
            &format!(
                "csrf={csrf}&name=pager&kind=webhook&url=https%3A%2F%2Fhooks.example%2Fy&secret=0123456789abcdef-secret&alerts=on"
            ),
            origin,
        )
        .await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT, "{}", duplicate.body);

    let stored = lab
        .store
        .list_transmitters(lab.org, PageRequest::first(PageSize::new(10).unwrap()))
        .await
        .unwrap()
        .items;
    let pager = stored.iter().find(|t| t.name.as_str() == "pager").unwrap();
    let broker = stored.iter().find(|t| t.name.as_str() == "broker").unwrap();
    // The forwarder's view: the pager fails, the broker delivers; one dead letter.
    let mut failing = DeliveryState::new(pager, T0);
    failing.failed(T0, "HTTP 503 from hooks.example");
    lab.store.record_delivery_state(&failing).await.unwrap();
    let mut delivering = DeliveryState::new(broker, T0);
    delivering.delivered(T0);
    lab.store.record_delivery_state(&delivering).await.unwrap();
    lab.store
        .record_dead_letter(&DeadLetter {
            id: DeadLetterId::random(),
            organization_id: lab.org,
            transmitter_id: pager.id,
            delivery: Delivery {
                kind: DeliveryKind::AlertOpened,
                organization_id: lab.org,
                topic: "chambers/x/alerts".into(),
                body: "{}".into(),
            },
            attempts: 5,
            last_error: "HTTP 503 from hooks.example".into(),
            at: T0,
        })
        .await
        .unwrap();

    let page = lab.get("/console/transmitters", Some(&admin)).await;
    let row = |id: TransmitterId| {
        page.body
            .split(&format!("<tr data-transmitter=\"{id}\">"))
            .nth(1)
            .and_then(|rest| rest.split("</tr>").next())
            .unwrap_or_else(|| panic!("{id} is listed: {}", page.body))
            .to_owned()
    };
    let pager_row = row(pager.id);
    assert!(
        pager_row.contains("failing since") && pager_row.contains("HTTP 503"),
        "{pager_row}"
    );
    assert!(
        pager_row.contains("https://hooks.example/x") && pager_row.contains(">1</a>"),
        "{pager_row}"
    );
    let broker_row = row(broker.id);
    assert!(broker_row.contains("delivering"), "{broker_row}");
    assert!(
        broker_row.contains("mqtt://127.0.0.1:1883 under lab/one"),
        "{broker_row}"
    );
    assert!(
        broker_row.contains("readings and alerts") && broker_row.contains(">0</a>"),
        "{broker_row}"
    );

    let letters = lab
        .get(&format!("/console/transmitters/{}", pager.id), Some(&admin))
        .await;
    assert_eq!(letters.status, StatusCode::OK, "{}", letters.body);
    assert!(letters.body.contains("alert opened") && letters.body.contains("chambers/x/alerts"));

    // Not for operators or viewers, and a forged delete is refused.
    for email in ["op%40lab.example", "viewer%40lab.example"] {
        let (cookie, their_csrf) = lab.sign_in(email).await;
        let page = lab.get("/console/transmitters", Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{email}");
        let overview = lab.get("/console/", Some(&cookie)).await;
        assert!(!overview.body.contains("/console/transmitters"), "{email}");
        let forged = lab
            .post(
                &format!("/console/transmitters/{}/delete", pager.id),
                Some(&cookie),
                &format!("csrf={their_csrf}"),
                origin,
            )
            .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN, "{email}");
    }

    let deleted = lab
        .post(
            &format!("/console/transmitters/{}/delete", pager.id),
            Some(&admin),
            &format!("csrf={csrf}"),
            origin,
        )
        .await;
    assert_eq!(deleted.location(), "/console/transmitters");
    let page = lab.get("/console/transmitters", Some(&admin)).await;
    assert!(!page.body.contains(&pager.id.to_string()));
    assert!(lab.store.delivery_states(lab.org).await.unwrap().len() == 1);
}

impl Lab {
    /// Uploads `csv` to the import form as a browser would (multipart).
    async fn import(&self, cookie: &str, csrf: &str, csv: &str, skip_refused: bool) -> Answer {
        let boundary = "----chamberlain-test-boundary";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n"
        );
        if skip_refused {
            body.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"skip_refused\"\r\n\r\non\r\n"
            ));
        }
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"chambers.csv\"\r\n\
             Content-Type: text/csv\r\n\r\n{csv}\r\n--{boundary}--\r\n"
        ));
        let request = Request::post("/console/import")
            .header(header::HOST, "lab:8080")
            .header(header::ORIGIN, "http://lab:8080")
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .header(header::COOKIE, cookie)
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    async fn chamber_count(&self) -> usize {
        self.store
            .list(
                self.org,
                ChamberFilter::default(),
                PageRequest::first(PageSize::new(1000).unwrap()),
            )
            .await
            .unwrap()
            .items
            .len()
    }
}

/// `n` rows of the import format in the lab's section, row `bad` (1-based) with an interval
/// that does not parse.
fn chambers_csv(n: usize, bad: Option<usize>) -> String {
    let mut csv = String::from("section,name,url,interval,detectors\n");
    for i in 1..=n {
        let interval = if Some(i) == bad { "often" } else { "5s" };
        csv.push_str(&format!(
            "Growth room,imported-{i:02},http://chambers.example/imported-{i},{interval},/t=Temperature:°C;/h=Humidity:%\n"
        ));
    }
    csv
}

#[tokio::test]
async fn a_csv_import_names_the_refused_line_and_creates_all_or_nothing() {
    let lab = lab().await;
    let (op, csrf) = lab.sign_in("op%40lab.example").await;
    let page = lab.get("/console/import", Some(&op)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("enctype=\"multipart/form-data\""));
    let before = lab.chamber_count().await;

    // Row 27 is on line 28 (after the header): named with its column, nothing created.
    let refused = lab
        .import(&op, &csrf, &chambers_csv(50, Some(27)), false)
        .await;
    assert_eq!(refused.status, StatusCode::OK, "{}", refused.body);
    assert!(
        refused.body.contains("Checked 50 of 50 rows"),
        "{}",
        refused.body
    );
    assert!(
        refused
            .body
            .contains("1 of 50 rows refused; nothing was imported"),
        "{}",
        refused.body
    );
    assert!(
        refused
            .body
            .contains("<tr data-line=\"28\"><td>28</td><td>interval</td>"),
        "{}",
        refused.body
    );
    assert!(!refused.body.contains("Creating"));
    assert!(
        refused.body.trim_end().ends_with("</html>"),
        "the page is whole"
    );
    assert_eq!(lab.chamber_count().await, before);

    // A name already taken, found by the use case, is named too; skipping imports the rest.
    let mut csv = chambers_csv(3, None);
    csv.push_str("Growth room,oven-a,http://chambers.example/again,5s,/t=T\n");
    let skipped = lab.import(&op, &csrf, &csv, true).await;
    assert!(
        skipped.body.contains("Imported 3 chambers of 4 rows"),
        "{}",
        skipped.body
    );
    assert!(
        skipped
            .body
            .contains("<tr data-line=\"5\"><td>5</td><td>name</td>"),
        "{}",
        skipped.body
    );
    assert_eq!(lab.chamber_count().await, before + 3);

    let fixed = lab
        .import(
            &op,
            &csrf,
            &chambers_csv(50, None).replace("imported-", "fixed-"),
            false,
        )
        .await;
    assert!(
        fixed.body.contains("Creating 50 chambers"),
        "{}",
        fixed.body
    );
    assert!(
        fixed.body.contains("Imported 50 chambers of 50 rows"),
        "{}",
        fixed.body
    );
    assert_eq!(lab.chamber_count().await, before + 53);

    let wrong_header = lab.import(&op, &csrf, "section,name,colour\n", false).await;
    assert!(
        wrong_header.body.contains("line 1: unknown column"),
        "{}",
        wrong_header.body
    );

    // A viewer may not import, not even with a forged request; another site neither.
    let (viewer, viewer_csrf) = lab.sign_in("viewer%40lab.example").await;
    assert_eq!(
        lab.get("/console/import", Some(&viewer)).await.status,
        StatusCode::FORBIDDEN
    );
    let forged = lab
        .import(&viewer, &viewer_csrf, &chambers_csv(1, None), false)
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let wrong_token = lab
        .import(&op, "not-the-token", &chambers_csv(1, None), false)
        .await;
    assert_eq!(wrong_token.status, StatusCode::FORBIDDEN);
    assert_eq!(lab.chamber_count().await, before + 53);
}

#[tokio::test]
async fn the_queue_view_is_for_installation_operators_only_and_only_looks() {
    let lab = lab().await;
    let jobs: Vec<_> = [0u64, 1]
        .iter()
        .map(|i| fixtures::poll_job(lab.org, lab.chamber, T0 + Duration::from_secs(*i), 60, T0))
        .collect();
    lab.queue.enqueue(&jobs).await.unwrap();
    let leased = lab
        .queue
        .lease(1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);

    // Nobody signed in: the page asks to sign in, the API says 401.
    let page = lab.get("/console/queue/", None).await;
    assert_eq!(page.location(), "/console/sign-in");
    let api = lab.get("/console/queue/api/v1/workers", None).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);

    let (operator, _) = lab.sign_in("admin@lab.example").await;
    let page = lab.get("/console/queue/", Some(&operator)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains(r#"<base href="/console/queue/" />"#),
        "{}",
        page.body
    );
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("'wasm-unsafe-eval'") && csp.contains("script-src 'self' 'sha256-"),
        "{csp}"
    );
    // Scripts: only the inline module's hash; styles: attributes only.
    let script_src = csp
        .split(';')
        .find(|d| d.trim().starts_with("script-src"))
        .unwrap();
    assert!(
        !script_src.contains("unsafe-inline") && !script_src.contains(" 'unsafe-eval'"),
        "{csp}"
    );
    assert!(csp.contains("style-src 'self';"), "{csp}");
    // A route of the app is the app's page too (it routes itself).
    let deep = lab.get("/console/queue/workers", Some(&operator)).await;
    assert_eq!(deep.body, page.body);
    let glue = page
        .body
        .split("from '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        glue.starts_with("/console/queue/apalis-board-web-"),
        "{glue}"
    );
    let script = lab.get(&glue, Some(&operator)).await;
    assert_eq!(script.status, StatusCode::OK);
    assert_eq!(
        script.headers[header::CONTENT_TYPE],
        "application/javascript"
    );
    assert!(script.body.starts_with("const chamberlainMount"));

    let workers: serde_json::Value = serde_json::from_str(
        &lab.get("/console/queue/api/v1/workers", Some(&operator))
            .await
            .body,
    )
    .unwrap();
    assert_eq!(workers[0]["id"], "in-process", "{workers}");
    let running: serde_json::Value = serde_json::from_str(
        &lab.get(
            "/console/queue/api/v1/queues/polls/tasks?status=Running",
            Some(&operator),
        )
        .await
        .body,
    )
    .unwrap();
    assert_eq!(running.as_array().unwrap().len(), 1, "{running}");
    assert_eq!(
        running[0]["args"]["poll"]["chamber_id"],
        lab.chamber.to_string(),
        "{running}"
    );
    assert_eq!(running[0]["ctx"]["lock_by"], "in-process", "{running}");
    let all: serde_json::Value = serde_json::from_str(
        &lab.get("/console/queue/api/v1/tasks", Some(&operator))
            .await
            .body,
    )
    .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    // Pages count from 1; a page 0 (or a huge one) is answered, not a crash.
    for query in ["page=0", "page=4294967295&page_size=500"] {
        let answer = lab
            .get(
                &format!("/console/queue/api/v1/tasks?{query}"),
                Some(&operator),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{query}: {}", answer.body);
    }
    let first: serde_json::Value = serde_json::from_str(
        &lab.get(
            "/console/queue/api/v1/tasks?page=0&page_size=1",
            Some(&operator),
        )
        .await
        .body,
    )
    .unwrap();
    assert_eq!(first.as_array().unwrap().len(), 1, "{first}");
    let id = running[0]["ctx"]["task_id"].to_string();
    let one = lab
        .get(
            &format!(
                "/console/queue/api/v1/queues/polls/tasks/{}",
                id.trim_matches('"')
            ),
            Some(&operator),
        )
        .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);

    // Pushing a task through the board is refused; the queue is as it was.
    let before = lab.queue.depth().await.unwrap();
    let push = lab
        .send(
            Request::put("/console/queue/api/v1/queues/polls/tasks")
                .header(header::HOST, "lab:8080")
                .header(header::COOKIE, &operator)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&jobs[0]).unwrap()))
                .unwrap(),
        )
        .await;
    assert_eq!(push.status, StatusCode::FORBIDDEN, "{}", push.body);
    assert!(push.body.contains("read-only"), "{}", push.body);
    assert_eq!(lab.queue.depth().await.unwrap(), before);

    // An organization admin (of another organization), an operator and a viewer are refused.
    for email in [
        "admin@elsewhere.example",
        "op@lab.example",
        "viewer@lab.example",
    ] {
        let (cookie, _) = lab.sign_in(email).await;
        let page = lab.get("/console/queue/", Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{email}");
        assert!(!page.body.contains("apalis"), "{email}");
        let api = lab.get("/console/queue/api/v1/tasks", Some(&cookie)).await;
        assert_eq!(api.status, StatusCode::FORBIDDEN, "{email}");
        assert!(!api.body.contains(&lab.chamber.to_string()), "{email}");
    }
}
