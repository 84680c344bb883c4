//! The routes read from the API's descriptor set, and requests turned into messages.

use chamberlain_transcoder::request::{Refusal, messages};
use chamberlain_transcoder::rules::{Binding, bindings, route};
use http::Method;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage};

fn api() -> Vec<Binding> {
    let pool = DescriptorPool::decode(chamberlain_proto::FILE_DESCRIPTOR_SET).unwrap();
    bindings(&pool, &chamberlain_proto::SERVICES).unwrap()
}

fn call(
    all: &[Binding],
    method: Method,
    path_and_query: &str,
    body: &str,
) -> Result<(String, Vec<DynamicMessage>), Refusal> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let (binding, bound) = route(all, &method, path).expect("a route");
    let messages = messages(binding, &bound, query, body.as_bytes())?;
    Ok((binding.rpc.full_name().to_owned(), messages))
}

fn json(message: &DynamicMessage) -> serde_json::Value {
    let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap()
}

#[test]
fn every_annotated_method_of_the_api_has_its_route() {
    let all = api();
    let pool = DescriptorPool::decode(chamberlain_proto::FILE_DESCRIPTOR_SET).unwrap();
    let annotated = chamberlain_proto::SERVICES
        .iter()
        .flat_map(|s| {
            pool.get_service_by_name(s)
                .unwrap()
                .methods()
                .collect::<Vec<_>>()
        })
        .count();
    assert_eq!(all.len(), annotated, "one route per method");
    for (method, path, rpc) in [
        (
            Method::POST,
            "/v1/auth:signIn",
            "chamberlain.v1.AuthService.SignIn",
        ),
        (
            Method::GET,
            "/v1/users:me",
            "chamberlain.v1.UserService.WhoAmI",
        ),
        (
            Method::GET,
            "/v1/chambers/c1",
            "chamberlain.v1.ChamberService.GetChamber",
        ),
        (
            Method::PATCH,
            "/v1/chambers/c1",
            "chamberlain.v1.ChamberService.UpdateChamber",
        ),
        (
            Method::POST,
            "/v1/chambers/c1:pause",
            "chamberlain.v1.ChamberService.PauseChamber",
        ),
        (
            Method::POST,
            "/v1/chambers:import",
            "chamberlain.v1.ChamberService.ImportChambers",
        ),
        (
            Method::GET,
            "/v1/readings:latest",
            "chamberlain.v1.ReadingService.LatestReadings",
        ),
        (
            Method::GET,
            "/v1/events:watch",
            "chamberlain.v1.EventService.WatchEvents",
        ),
    ] {
        let (binding, _) = route(&all, &method, path).unwrap_or_else(|| panic!("{method} {path}"));
        assert_eq!(binding.rpc.full_name(), rpc, "{method} {path}");
    }
    assert!(route(&all, &Method::DELETE, "/v1/readings").is_none());
    assert!(route(&all, &Method::GET, "/v1/nothing").is_none());
    assert!(route(&all, &Method::POST, "/v1/chambers/c1:explode").is_none());
}

#[test]
fn path_body_and_query_fill_the_request() {
    let all = api();
    let (rpc, m) = call(
        &all,
        Method::POST,
        "/v1/chambers/c1:setInterval",
        r#"{"interval":"5s"}"#,
    )
    .unwrap();
    assert_eq!(rpc, "chamberlain.v1.ChamberService.SetChamberInterval");
    assert_eq!(
        json(&m[0]),
        serde_json::json!({"id": "c1", "interval": "5s"})
    );

    // body: "detector" — the body is one field, the path another.
    let (_, m) = call(
        &all,
        Method::POST,
        "/v1/chambers/c1/detectors",
        r#"{"name":"t","key":"/t"}"#,
    )
    .unwrap();
    assert_eq!(
        json(&m[0]),
        serde_json::json!({"chamber_id": "c1", "detector": {"name": "t", "key": "/t"}})
    );

    // No body: the query, by proto or JSON name, typed by the field.
    let (_, m) = call(
        &all,
        Method::GET,
        "/v1/chambers?sectionId=s1&page.page_size=5&name_contains=Clim%20ate&health=HEALTH_STATE_DOWN",
        "",
    )
    .unwrap();
    let got = json(&m[0]);
    assert_eq!(got["section_id"], "s1");
    assert_eq!(got["page"]["page_size"], 5);
    assert_eq!(got["name_contains"], "Clim ate");
    assert_eq!(got["health"], "HEALTH_STATE_DOWN");

    // An empty body is an empty message; a path variable wins over the body.
    let (_, m) = call(&all, Method::POST, "/v1/chambers/c1:pause", "").unwrap();
    assert_eq!(json(&m[0]), serde_json::json!({"id": "c1"}));
    let (_, m) = call(
        &all,
        Method::POST,
        "/v1/chambers/c1:pause",
        r#"{"id":"other"}"#,
    )
    .unwrap();
    assert_eq!(json(&m[0]), serde_json::json!({"id": "c1"}));
}

#[test]
fn a_client_stream_takes_a_json_array() {
    let all = api();
    let row = r#"{"chambers":[{"name":"a"}]}"#;
    let (_, m) = call(
        &all,
        Method::POST,
        "/v1/chambers:import",
        &format!("[{row},{row},{row}]"),
    )
    .unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(
        m[0].descriptor().full_name(),
        "chamberlain.v1.ImportChambersRequest"
    );
    let (_, m) = call(&all, Method::POST, "/v1/chambers:import", row).unwrap();
    assert_eq!(m.len(), 1, "an object is a stream of one");
}

#[test]
fn bad_requests_are_refused_naming_the_field_where_there_is_one() {
    let all = api();
    let detectors = r#"{"section_id":"s","name":"c","url":"https://127.0.0.2/","interval":"1s","detectors":[{"name":"a","key":"/a"},{"name":"b","key":"/b","min":"low"}]}"#;
    for (method, path, body, field, says) in [
        (
            Method::POST,
            "/v1/sections",
            r#"{"name": "#,
            None,
            "not JSON",
        ),
        (Method::POST, "/v1/sections", "[1]", None, "JSON object"),
        (
            Method::POST,
            "/v1/sections",
            r#"{"name":"a","colour":"red"}"#,
            Some("colour"),
            "colour",
        ),
        (
            Method::POST,
            "/v1/chambers/c1:setInterval",
            r#"{"interval":"soon"}"#,
            Some("interval"),
            "duration",
        ),
        (
            Method::POST,
            "/v1/chambers",
            detectors,
            Some("detectors[1].min"),
            "min",
        ),
        (
            Method::GET,
            "/v1/chambers?colour=red",
            "",
            Some("colour"),
            "no such field",
        ),
        (
            Method::GET,
            "/v1/chambers?page.page_size=many",
            "",
            Some("page.page_size"),
            "\"many\" is not a valid uint32",
        ),
        (
            Method::GET,
            "/v1/chambers?health=PURPLE",
            "",
            Some("health"),
            "PURPLE",
        ),
    ] {
        let refusal = call(&all, method.clone(), path, body).expect_err(path);
        assert_eq!(
            refusal.field.as_deref(),
            field,
            "{method} {path} {body}: {refusal}"
        );
        let shown = refusal.to_string();
        assert!(shown.contains(says), "{method} {path} {body}: {shown}");
        if let Some(field) = field {
            assert!(shown.starts_with(&format!("{field}: ")), "{shown}");
        }
    }
}
