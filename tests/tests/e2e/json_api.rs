//! The JSON API end to end, the same script against Envoy's gRPC-JSON transcoder (the
//! distributed mode) and against `chamberlain standalone`'s HTTP address (the embedded mode's
//! transcoder): every call answers the same status and, identifiers and times aside, the same
//! body. The one documented difference (docs/API.md) is a body field the message does not have:
//! Envoy drops it, standalone refuses it naming the field.

use std::process::Command;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use chamberlain_domain::model::Role;
use chamberlain_tests::api_stack::{Stack, StackOptions, free_port, http_request};
use chamberlain_tests::chamberlain_bin;
use serde_json::Value;

use crate::standalone::{Standalone, connect, start_simulating};

/// Where the script runs: a port answering the JSON routes and an administrator's token.
struct Target {
    name: &'static str,
    port: u16,
    token: String,
}

/// One exchange of the script: what was asked, the status and the body with identifiers,
/// times and secrets masked.
#[derive(Debug, Clone, PartialEq)]
struct Exchange {
    step: String,
    status: u16,
    body: Value,
}

/// Every UUID inside `s` replaced by `<uuid>`.
fn mask_uuids(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        if rest.len() >= 36
            && rest.is_char_boundary(36)
            && uuid::Uuid::try_parse(&rest[..36]).is_ok()
        {
            out.push_str("<uuid>");
            rest = &rest[36..];
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn looks_like_time(s: &str) -> bool {
    s.len() >= 20 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T' && s.ends_with('Z')
}

fn mask(value: &Value) -> Value {
    match value {
        Value::String(s) if looks_like_time(s) => Value::String("<time>".into()),
        Value::String(s) if s.starts_with("chm_") => Value::String("<token>".into()),
        Value::String(s) => Value::String(mask_uuids(s)),
        Value::Array(items) => Value::Array(items.iter().map(mask).collect()),
        Value::Object(fields) => {
            Value::Object(fields.iter().map(|(k, v)| (k.clone(), mask(v))).collect())
        }
        other => other.clone(),
    }
}

struct Script<'a> {
    target: &'a Target,
    transcript: Vec<Exchange>,
}

impl Script<'_> {
    /// One call with the target's token (or `token`); the body parsed as JSON (a body that is
    /// not JSON fails the test: every answer of the JSON API is JSON).
    async fn call_as(
        &mut self,
        step: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let (status, text) = http_request(self.target.port, method, path, token, body, &[]).await;
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{}: {step}: {method} {path} answered {status} with a body that is not JSON ({e}): {text:?}",
                self.target.name
            )
        });
        self.transcript.push(Exchange {
            step: step.to_owned(),
            status,
            body: mask(&json),
        });
        (status, json)
    }

    async fn call(
        &mut self,
        step: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let token = self.target.token.clone();
        self.call_as(step, method, path, Some(&token), body).await
    }

    /// A call expected to succeed.
    async fn ok(&mut self, step: &str, method: &str, path: &str, body: Option<&str>) -> Value {
        let (status, json) = self.call(step, method, path, body).await;
        assert_eq!(status, 200, "{}: {step}: {json}", self.target.name);
        json
    }

    /// A call expected to fail with `status` and gRPC `code`; returns the fields its
    /// `google.rpc.BadRequest` details name.
    async fn refused(
        &mut self,
        step: &str,
        request: (&str, &str, Option<&str>, Option<&str>),
        status: u16,
        code: i64,
    ) -> Vec<String> {
        let (got, json) = self.refusal(step, request).await;
        self.check_refusal(step, (got, json), status, code)
    }

    /// A request the transcoder itself refuses (it does not read as the message): Envoy's
    /// words are protobuf's, standalone's serde's, so what is compared is the status, the code
    /// and that the message names `field`; standalone also starts its message with the field
    /// and names it in a `google.rpc.BadRequest`, as the gateway does (Envoy cannot).
    async fn unreadable(
        &mut self,
        step: &str,
        request: (&str, &str, Option<&str>, Option<&str>),
        field: Option<&str>,
    ) {
        let (got, json) = self.refusal(step, request).await;
        let message = json["message"].as_str().unwrap_or_default().to_owned();
        if let Some(field) = field {
            let last = field.rsplit('.').next().unwrap_or(field);
            assert!(
                message.contains(last),
                "{}: {step}: names {field}: {json}",
                self.target.name
            );
        }
        let exchange = self.transcript.last_mut().expect("just recorded");
        exchange.body = serde_json::json!({"code": json["code"], "names": field});
        let fields = self.check_refusal(step, (got, json), 400, 3);
        if self.target.name == "standalone" {
            assert_eq!(fields, field.into_iter().collect::<Vec<_>>(), "{step}");
            if let Some(field) = field {
                assert!(
                    message.starts_with(&format!("{field}: ")),
                    "{step}: {message}"
                );
            }
        }
    }

    async fn refusal(
        &mut self,
        step: &str,
        (method, path, token, body): (&str, &str, Option<&str>, Option<&str>),
    ) -> (u16, Value) {
        self.call_as(step, method, path, token, body).await
    }

    fn check_refusal(
        &self,
        step: &str,
        (got, json): (u16, Value),
        status: u16,
        code: i64,
    ) -> Vec<String> {
        assert_eq!(
            (got, json["code"].as_i64()),
            (status, Some(code)),
            "{}: {step}: {json}",
            self.target.name
        );
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: {step}: a message: {json}",
            self.target.name
        );
        json["details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| d["field_violations"].as_array().into_iter().flatten())
            .filter_map(|v| v["field"].as_str().map(str::to_owned))
            .collect()
    }
}

fn id_of(json: &Value) -> String {
    json["id"]
        .as_str()
        .unwrap_or_else(|| panic!("an id in {json}"))
        .to_owned()
}

/// The script: every kind of route (body `*`, a body field, path variables, query parameters,
/// a client stream, a server stream, a custom verb) and the errors of each layer.
async fn run_script(target: &Target) -> Vec<Exchange> {
    let mut s = Script {
        target,
        transcript: Vec::new(),
    };
    let name = target.name;

    // Body "*".
    let section = s
        .ok(
            "create a section",
            "POST",
            "/v1/sections",
            Some(r#"{"name":"JSON suite","description":"made by curl's cousin"}"#),
        )
        .await;
    let section_id = id_of(&section);
    let chamber = s
        .ok(
            "create a chamber",
            "POST",
            "/v1/chambers",
            Some(&format!(
                r#"{{"section_id":"{section_id}","name":"Growth 7","url":"https://127.0.0.2/g7","format":"prometheus","interval":"30s","detectors":[{{"name":"co2","unit":"ppm","key":"co2_ppm"}}]}}"#
            )),
        )
        .await;
    let chamber_id = id_of(&chamber);
    assert_eq!(chamber["interval"], "30s", "{name}: {chamber}");
    assert_eq!(chamber["detectors"][0]["unit"], "ppm", "{name}: {chamber}");

    // Path variables.
    let got = s
        .ok("get it", "GET", &format!("/v1/chambers/{chamber_id}"), None)
        .await;
    assert_eq!(got["name"], "Growth 7", "{name}: {got}");

    // Query parameters: a nested field, JSON and proto names, an enum by name.
    let listed = s
        .ok(
            "list by name, one per page",
            "GET",
            "/v1/chambers?nameContains=growth%207&page.pageSize=1",
            None,
        )
        .await;
    assert_eq!(
        listed["chambers"].as_array().map(Vec::len),
        Some(1),
        "{name}: {listed}"
    );
    assert_eq!(
        listed["chambers"][0]["id"],
        chamber_id.as_str(),
        "{name}: {listed}"
    );
    let listed = s
        .ok(
            "list by section and state, proto names",
            "GET",
            &format!("/v1/chambers?section_id={section_id}&state=CHAMBER_STATE_ACTIVE"),
            None,
        )
        .await;
    assert_eq!(
        listed["chambers"].as_array().map(Vec::len),
        Some(1),
        "{name}: {listed}"
    );
    let listed = s
        .ok(
            "list paused chambers: none",
            "GET",
            &format!("/v1/chambers?sectionId={section_id}&state=CHAMBER_STATE_PAUSED"),
            None,
        )
        .await;
    assert_eq!(
        listed["chambers"].as_array().map(Vec::len),
        Some(0),
        "{name}: {listed}"
    );

    // Custom verbs.
    let paused = s
        .ok(
            "pause",
            "POST",
            &format!("/v1/chambers/{chamber_id}:pause"),
            Some("{}"),
        )
        .await;
    assert_eq!(paused["state"], "CHAMBER_STATE_PAUSED", "{name}: {paused}");
    let resumed = s
        .ok(
            "resume",
            "POST",
            &format!("/v1/chambers/{chamber_id}:resume"),
            Some("{}"),
        )
        .await;
    assert_eq!(
        resumed["state"], "CHAMBER_STATE_ACTIVE",
        "{name}: {resumed}"
    );
    let faster = s
        .ok(
            "set the interval",
            "POST",
            &format!("/v1/chambers/{chamber_id}:setInterval"),
            Some(r#"{"interval":"5s"}"#),
        )
        .await;
    assert_eq!(faster["interval"], "5s", "{name}: {faster}");
    let patched = s
        .ok(
            "rename with PATCH",
            "PATCH",
            &format!("/v1/chambers/{chamber_id}"),
            Some(r#"{"name":"Growth 7b"}"#),
        )
        .await;
    assert_eq!(patched["name"], "Growth 7b", "{name}: {patched}");

    // A body field ("detector") with the rest from the path.
    let detector = s
        .ok(
            "add a detector",
            "POST",
            &format!("/v1/chambers/{chamber_id}/detectors"),
            Some(r#"{"name":"rh","unit":"%","key":"rh_pct"}"#),
        )
        .await;
    let detector_id = id_of(&detector);
    assert_eq!(
        detector["chamber_id"],
        chamber_id.as_str(),
        "{name}: {detector}"
    );
    let changed = s
        .ok(
            "change its unit",
            "PATCH",
            &format!("/v1/detectors/{detector_id}"),
            Some(r#"{"unit":"percent","max":100}"#),
        )
        .await;
    assert_eq!(changed["unit"], "percent", "{name}: {changed}");
    s.ok(
        "remove it",
        "DELETE",
        &format!("/v1/detectors/{detector_id}"),
        None,
    )
    .await;

    // A client stream: a JSON array of messages.
    let row = |n: u32| {
        format!(
            r#"{{"section_id":"{section_id}","name":"Imported {n}","url":"https://127.0.0.2/i{n}","format":"json","interval":"10s","detectors":[{{"name":"t","key":"/t"}}]}}"#
        )
    };
    let imported = s
        .ok(
            "import two chambers as an array",
            "POST",
            "/v1/chambers:import",
            Some(&format!(
                r#"[{{"chambers":[{}]}},{{"chambers":[{}]}}]"#,
                row(1),
                row(2)
            )),
        )
        .await;
    assert_eq!(
        imported["chamber_ids"].as_array().map(Vec::len),
        Some(2),
        "{name}: {imported}"
    );

    // A server stream: a JSON array of messages.
    let export = s
        .ok(
            "export a chamber's readings (a stream)",
            "GET",
            &format!(
                "/v1/readings:export?selector.chamberId={chamber_id}&from=2026-01-01T00:00:00Z"
            ),
            None,
        )
        .await;
    assert!(export.is_array(), "{name}: a stream is an array: {export}");

    // Users and signing in with a password, no token.
    s.ok(
        "add an operator with a password",
        "POST",
        "/v1/users",
        Some(
            r#"{"email":"json.op@lab.example","display_name":"Op","role":"operator","password":"correct horse battery"}"#,
        ),
    )
    .await;
    let (status, signed_in) = s
        .call_as(
            "sign in",
            "POST",
            "/v1/auth:signIn",
            None,
            Some(r#"{"email":"json.op@lab.example","password":"correct horse battery"}"#),
        )
        .await;
    assert_eq!(status, 200, "{name}: {signed_in}");
    let session = signed_in["token"].as_str().unwrap().to_owned();
    let (status, me) = s
        .call_as("who am I", "GET", "/v1/users:me", Some(&session), None)
        .await;
    assert_eq!(status, 200, "{name}: {me}");
    assert_eq!(me["email"], "json.op@lab.example", "{name}: {me}");

    // Errors, each with its HTTP status, gRPC code and the field it names.
    let token = target.token.clone();
    let t = Some(token.as_str());
    s.refused("no such route", ("GET", "/v1/nothing", t, None), 404, 5)
        .await;
    s.refused(
        "a path with the wrong method",
        ("DELETE", "/v1/readings", t, None),
        404,
        5,
    )
    .await;
    s.refused("no token", ("GET", "/v1/chambers", None, None), 401, 16)
        .await;
    s.refused(
        "a revoked-looking token",
        ("GET", "/v1/chambers", Some("chm_not-a-token"), None),
        401,
        16,
    )
    .await;
    s.refused(
        "a wrong password",
        (
            "POST",
            "/v1/auth:signIn",
            None,
            Some(r#"{"email":"json.op@lab.example","password":"wrong horse battery"}"#),
        ),
        401,
        16,
    )
    .await;
    s.unreadable(
        "a truncated body",
        ("POST", "/v1/sections", t, Some(r#"{"name": "#)),
        None,
    )
    .await;
    s.unreadable(
        "a bad duration",
        (
            "POST",
            "/v1/chambers",
            t,
            Some(&format!(
                r#"{{"section_id":"{section_id}","name":"c","url":"https://127.0.0.2/c","interval":"soon"}}"#
            )),
        ),
        Some("interval"),
    )
    .await;
    s.unreadable(
        "a detector's bound that is not a number",
        (
            "POST",
            &format!("/v1/chambers/{chamber_id}/detectors"),
            t,
            Some(r#"{"name":"p","key":"/p","min":"low"}"#),
        ),
        Some("detector.min"),
    )
    .await;
    s.unreadable(
        "a query parameter the request does not have",
        ("GET", "/v1/chambers?colour=red", t, None),
        Some("colour"),
    )
    .await;
    s.unreadable(
        "a page size that is not a number",
        ("GET", "/v1/chambers?page.page_size=many", t, None),
        Some("page.page_size"),
    )
    .await;
    let fields = s
        .refused(
            "an ftp URL",
            (
                "POST",
                "/v1/chambers",
                t,
                Some(&format!(
                    r#"{{"section_id":"{section_id}","name":"c","url":"ftp://x","format":"json","interval":"1s"}}"#
                )),
            ),
            400,
            3,
        )
        .await;
    assert_eq!(fields, ["url"], "{name}");
    let fields = s
        .refused(
            "an interval too short",
            (
                "POST",
                &format!("/v1/chambers/{chamber_id}:setInterval"),
                t,
                Some(r#"{"interval":"0.001s"}"#),
            ),
            400,
            3,
        )
        .await;
    assert_eq!(fields, ["interval"], "{name}");
    let fields = s
        .refused(
            "an id that is not a UUID",
            ("GET", "/v1/chambers/not-a-uuid", t, None),
            400,
            3,
        )
        .await;
    assert_eq!(fields, ["id"], "{name}");
    s.refused(
        "an unknown chamber",
        (
            "GET",
            "/v1/chambers/00000000-0000-4000-8000-000000000000",
            t,
            None,
        ),
        404,
        5,
    )
    .await;
    s.refused(
        "an import with a bad second row",
        (
            "POST",
            "/v1/chambers:import",
            t,
            Some(&format!(
                r#"[{{"chambers":[{},{}]}}]"#,
                row(3),
                row(4).replace("10s", "-1s")
            )),
        ),
        400,
        3,
    )
    .await;
    s.refused(
        "an operator deleting a user",
        (
            "DELETE",
            &format!("/v1/users/{}", me["id"].as_str().unwrap()),
            Some(&session),
            None,
        ),
        403,
        7,
    )
    .await;

    let deleted = s
        .ok(
            "delete the chamber",
            "DELETE",
            &format!("/v1/chambers/{chamber_id}"),
            None,
        )
        .await;
    assert!(deleted.is_object(), "{name}: {deleted}");
    s.refused(
        "the deleted chamber",
        ("GET", &format!("/v1/chambers/{chamber_id}"), t, None),
        404,
        5,
    )
    .await;
    s.transcript
}

/// The parts of an exchange that must match between Envoy and standalone: the status, and the
/// body (errors: the code, the fields named and the message).
fn assert_same_transcripts(envoy: &[Exchange], standalone: &[Exchange]) {
    assert_eq!(envoy.len(), standalone.len());
    let mut differences = Vec::new();
    for (e, s) in envoy.iter().zip(standalone) {
        assert_eq!(e.step, s.step);
        if e != s {
            differences.push(format!(
                "{}:\n  envoy      {} {}\n  standalone {} {}",
                e.step, e.status, e.body, s.status, s.body
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "the JSON API answers differently:\n{}",
        differences.join("\n")
    );
}

async fn standalone_target(dir: &std::path::Path) -> (Standalone, Target) {
    let api = free_port();
    let standalone = start_simulating(&chamberlain_bin(), dir, api, free_port(), 1);
    // The gRPC address answering means the HTTP address (bound first) does too.
    connect(api).await;
    let target = Target {
        name: "standalone",
        port: standalone.http,
        token: standalone
            .token
            .clone()
            .expect("a first start prints a token"),
    };
    (standalone, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_answers_the_same_through_envoy_and_standalone() {
    let stack = Stack::start(StackOptions::default()).await;
    let (_, token) = stack.tenant("json", Role::Admin).await;
    let envoy = Target {
        name: "envoy",
        port: stack.ports.envoy,
        token,
    };
    let dir = tempdir("json-api");
    let (_standalone, local) = standalone_target(&dir).await;

    let through_envoy = run_script(&envoy).await;
    let through_standalone = run_script(&local).await;
    assert_same_transcripts(&through_envoy, &through_standalone);

    // The one documented difference: a field the message does not have.
    let body = r#"{"name":"Typo","descripton":"misspelled"}"#;
    let (status, _) = http_request(
        envoy.port,
        "POST",
        "/v1/sections",
        Some(&envoy.token),
        Some(body),
        &[],
    )
    .await;
    assert_eq!(status, 200, "Envoy drops a field it does not know");
    let (status, text) = http_request(
        local.port,
        "POST",
        "/v1/sections",
        Some(&local.token),
        Some(body),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("descripton"),
        "standalone names the field: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("chamberlain-{label}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `curl`, a client nobody here wrote, against standalone: the README's JSON examples work as
/// written, and a server stream arrives as a JSON array of CSV chunks with readings in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_calls_the_json_api_of_standalone() {
    let dir = tempdir("json-curl");
    let (standalone, local) = standalone_target(&dir).await;
    let base = format!("http://127.0.0.1:{}", standalone.http);
    let bearer = format!("authorization: Bearer {}", local.token);
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "-H", &bearer])
            .args(args)
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse::<u16>().unwrap(), body.to_owned())
    };

    let (code, body) = curl(&[&format!("{base}/v1/chambers?name_contains=sim")]);
    assert_eq!(code, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    let chamber_id = listed["chambers"][0]["id"]
        .as_str()
        .expect(&body)
        .to_owned();

    // The simulated chamber is polled at 1 s: wait (with a deadline) for a reading to export.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let csv = loop {
        let (code, body) = curl(&[&format!(
            "{base}/v1/readings:export?selector.chamber_id={chamber_id}&from=2026-01-01T00:00:00Z"
        )]);
        assert_eq!(code, 200, "{body}");
        let chunks: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let csv: String = chunks
            .as_array()
            .expect("a stream is an array")
            .iter()
            .map(|c| {
                let data = c["data"].as_str().unwrap_or_default();
                String::from_utf8(
                    BASE64_STANDARD
                        .decode(data)
                        .expect("bytes are base64 in JSON"),
                )
                .unwrap()
            })
            .collect();
        if csv.lines().count() > 1 {
            break csv;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reading exported: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(csv.contains(&chamber_id), "{csv}");

    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"name":"From curl"}"#,
        &format!("{base}/v1/sections"),
    ]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&[&format!("{base}/v1/sections/not-a-uuid")]);
    assert_eq!(code, 400, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        error["details"][0]["field_violations"][0]["field"], "id",
        "{body}"
    );
    drop(standalone);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `curl -i` of `path` on `port` with `token`: status, content type and body.
fn curl_download(port: u16, path: &str, token: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "-H"])
        .arg(format!("authorization: Bearer {token}"))
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// The CSV the JSON export route gives for the same query (its chunks' data put together).
async fn exported_csv(target: &Target, query: &str) -> String {
    let (status, body) = http_request(
        target.port,
        "GET",
        &format!("/v1/readings:export?{query}"),
        Some(&target.token),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{}: {body}", target.name);
    let chunks: Value = serde_json::from_str(&body).unwrap();
    chunks
        .as_array()
        .expect("a stream is an array")
        .iter()
        .map(|c| {
            let data = c["data"].as_str().unwrap_or_default();
            String::from_utf8(BASE64_STANDARD.decode(data).unwrap()).unwrap()
        })
        .collect()
}

/// `GET /v1/readings:download` answers the CSV file itself (`content-type: text/csv`), with the
/// rows the export route gives for the same range, through Envoy and against standalone;
/// a bad request is a JSON error naming the field, as any other call's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_download_as_text_csv_through_envoy_and_standalone() {
    use chamberlain_domain::Timestamp;
    use chamberlain_domain::conformance::fixtures;
    use chamberlain_domain::model::ChamberId;
    use chamberlain_domain::ports::{ChamberRepository, DetectorRepository, ReadingRepository};

    let stack = Stack::start(StackOptions::default()).await;
    let (actor, token) = stack.tenant("csv", Role::Admin).await;
    let envoy = Target {
        name: "envoy",
        port: stack.ports.envoy,
        token,
    };
    let (_, section) = http_request(
        envoy.port,
        "POST",
        "/v1/sections",
        Some(&envoy.token),
        Some(r#"{"name":"CSV"}"#),
        &[],
    )
    .await;
    let section_id = id_of(&serde_json::from_str(&section).unwrap());
    let (_, chamber) = http_request(
        envoy.port,
        "POST",
        "/v1/chambers",
        Some(&envoy.token),
        Some(&format!(
            r#"{{"section_id":"{section_id}","name":"Growth 1","url":"https://127.0.0.2/g1","format":"json","interval":"1s","detectors":[{{"name":"t","key":"/t"}},{{"name":"h","key":"/h"}}]}}"#
        )),
        &[],
    )
    .await;
    let envoy_chamber = id_of(&serde_json::from_str(&chamber).unwrap());
    // Readings written as a worker would: 30 polls at 1 s, the tenth corrupted.
    let id = ChamberId::parse(&envoy_chamber).unwrap();
    let stored = ChamberRepository::get(&*stack.store, actor.organization_id, id)
        .await
        .unwrap();
    let detectors = stack
        .store
        .list_for_chamber(actor.organization_id, id)
        .await
        .unwrap();
    let t0 = Timestamp::from_unix_millis(1_764_547_200_000); // 2025-12-01T00:00:00Z
    let polls: Vec<_> = (0..30)
        .map(|i| {
            let corrupt =
                (i == 9).then_some(chamberlain_domain::model::CorruptionReason::Unparsable);
            fixtures::poll_record(
                &stored,
                &detectors,
                Timestamp::from_unix_millis(t0.as_unix_millis() + i * 1000),
                f64::from(i32::try_from(i).unwrap()) / 4.0,
                corrupt,
            )
        })
        .collect();
    stack.store.store_polls(&polls).await.unwrap();

    let dir = tempdir("json-download");
    let (standalone, local) = standalone_target(&dir).await;
    let (_, listed) = http_request(
        local.port,
        "GET",
        "/v1/chambers?name_contains=sim-0000",
        Some(&local.token),
        None,
        &[],
    )
    .await;
    let local_chamber = serde_json::from_str::<Value>(&listed).unwrap()["chambers"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    for (target, chamber, from, to) in [
        (&envoy, &envoy_chamber, t0, 30_000),
        // The simulated chamber's readings: a range already past, so both calls see the same.
        (&local, &local_chamber, Timestamp::from_unix_millis(0), 0),
    ] {
        let to = if to == 0 {
            // Wait (with a deadline) for a few seconds of readings, then cut the range a
            // second ago.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let csv = exported_csv(
                    target,
                    &format!("selector.chamber_id={chamber}&from=2020-01-01T00:00:00Z"),
                )
                .await;
                if csv.lines().count() > 3 * 8 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "no readings: {csv}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Timestamp::from_unix_millis(
                (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64
                    / 1000
                    - 1)
                    * 1000,
            )
        } else {
            Timestamp::from_unix_millis(from.as_unix_millis() + to)
        };
        let range = format!("from={}&to={}", from.to_rfc3339(), to.to_rfc3339());
        let (status, content_type, body) = curl_download(
            target.port,
            &format!("/v1/readings:download?chamber_id={chamber}&{range}"),
            &target.token,
        );
        assert_eq!(status, 200, "{}: {body}", target.name);
        assert!(
            content_type.starts_with("text/csv"),
            "{}: {content_type}",
            target.name
        );
        assert!(
            body.starts_with(chamberlain_domain::usecases::CSV_HEADER),
            "{}: {body}",
            target.name
        );
        let exported =
            exported_csv(target, &format!("selector.chamber_id={chamber}&{range}")).await;
        assert_eq!(
            body, exported,
            "{}: the same rows as the export route",
            target.name
        );
        assert!(body.lines().count() > 1, "{}: {body}", target.name);
        if target.name == "envoy" {
            assert_eq!(body.lines().count(), 1 + 30 * 2, "{body}");
            assert_eq!(body.matches(",unparsable,").count(), 2, "{body}");
        }
        // A bad scope, and none at all, are refused as JSON naming the field.
        let (status, _, error) = curl_download(
            target.port,
            &format!("/v1/readings:download?chamber_id=not-a-uuid&{range}"),
            &target.token,
        );
        assert_eq!(status, 400, "{}: {error}", target.name);
        let error: Value = serde_json::from_str(&error).unwrap();
        assert_eq!(
            error["details"][0]["field_violations"][0]["field"], "chamber_id",
            "{}: {error}",
            target.name
        );
        let (status, _, error) = curl_download(
            target.port,
            &format!("/v1/readings:download?{range}"),
            &target.token,
        );
        assert_eq!(status, 400, "{}: {error}", target.name);
        assert!(error.contains("scope"), "{}: {error}", target.name);
    }
    // By section: the chamber is its section's only one in the Envoy tenant.
    let (status, content_type, by_section) = curl_download(
        envoy.port,
        &format!(
            "/v1/readings:download?section_id={section_id}&from={}",
            t0.to_rfc3339()
        ),
        &envoy.token,
    );
    assert_eq!((status, content_type.starts_with("text/csv")), (200, true));
    assert_eq!(by_section.lines().count(), 1 + 30 * 2, "{by_section}");
    drop(standalone);
    let _ = std::fs::remove_dir_all(&dir);
}
