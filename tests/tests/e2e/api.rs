//! The API through a real Envoy: gRPC and JSON, authentication and its failure modes, tenant
//! isolation, rate limits and input validation.

use std::time::Duration;

use chamberlain_domain::model::Role;
use chamberlain_grpc::IdentityKey;
use chamberlain_proto::v1::{
    self, auth_service_client::AuthServiceClient, chamber_service_client::ChamberServiceClient,
    section_service_client::SectionServiceClient, user_service_client::UserServiceClient,
};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use chamberlain_tests::api_stack::{IDENTITY_KEY, Stack, StackOptions};

/// `message` with a bearer token, for calls through Envoy.
pub(crate) fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

fn millis(ms: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: 0,
        nanos: ms * 1_000_000,
    })
}

fn good_chamber(section_id: &str) -> v1::CreateChamberRequest {
    v1::CreateChamberRequest {
        section_id: section_id.into(),
        name: "Climate 1".into(),
        url: "http://127.0.0.2:9/chamber".into(),
        format: "json".into(),
        interval: secs(1),
        timeout: None,
        detectors: vec![
            v1::NewDetector {
                name: "temperature".into(),
                unit: "°C".into(),
                key: "/t".into(),
                min: Some(-40.0),
                max: Some(125.0),
                ..Default::default()
            },
            v1::NewDetector {
                name: "humidity".into(),
                unit: "%".into(),
                key: "/h".into(),
                ..Default::default()
            },
        ],
    }
}

pub(crate) async fn section(channel: &Channel, token: &str, name: &str) -> v1::Section {
    SectionServiceClient::new(channel.clone())
        .create_section(authed(
            v1::CreateSectionRequest {
                name: name.into(),
                description: String::new(),
            },
            token,
        ))
        .await
        .expect("section created")
        .into_inner()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chamber_created_over_grpc_reads_back_as_json_over_http1() {
    let stack = Stack::start(StackOptions::default()).await;
    let (_, token) = stack.tenant("a", Role::Operator).await;
    let channel = stack.channel().await;
    let s = section(&channel, &token, "Floor 1").await;
    let created = ChamberServiceClient::new(channel.clone())
        .create_chamber(authed(good_chamber(&s.id), &token))
        .await
        .unwrap()
        .into_inner();

    let (status, body) = stack
        .http(
            "GET",
            &format!("/v1/chambers/{}", created.id),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let c = json(&body);
    assert_eq!(c["id"], created.id.as_str());
    assert_eq!(c["name"], "Climate 1");
    assert_eq!(c["section_id"], s.id.as_str());
    assert_eq!(c["interval"], "1s");
    assert_eq!(c["state"], "CHAMBER_STATE_ACTIVE");
    let mut keys: Vec<&str> = c["detectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["/h", "/t"]);

    // And the other way round: created as JSON, read over gRPC.
    let (status, body) = stack
        .http(
            "POST",
            "/v1/chambers",
            Some(&token),
            Some(&format!(
                r#"{{"section_id":"{}","name":"Growth 2","url":"https://127.0.0.2/g","format":"prometheus","interval":"30s","detectors":[{{"name":"co2","unit":"ppm","key":"co2_ppm"}}]}}"#,
                s.id
            )),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_owned();
    let got = ChamberServiceClient::new(channel)
        .get_chamber(authed(v1::GetChamberRequest { id }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.format, "prometheus");
    assert_eq!(got.interval, secs(30));

    // A change is visible at once, although the answer above was cached.
    let mut chambers = ChamberServiceClient::new(stack.channel().await);
    chambers
        .set_chamber_interval(authed(
            v1::SetChamberIntervalRequest {
                id: got.id.clone(),
                interval: secs(60),
            },
            &token,
        ))
        .await
        .unwrap();
    let again = chambers
        .get_chamber(authed(v1::GetChamberRequest { id: got.id }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.interval, secs(60));

    // Listed by part of the name and by health, as JSON query parameters; the health policy
    // set over JSON reads back.
    let (status, body) = stack
        .http(
            "GET",
            "/v1/chambers?nameContains=growth",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let listed = json(&body);
    let names: Vec<&str> = listed["chambers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Growth 2"]);
    let (status, body) = stack
        .http(
            "GET",
            "/v1/chambers?health=HEALTH_STATE_DOWN",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        json(&body)["chambers"].as_array().unwrap().is_empty(),
        "{body}"
    );
    let (status, body) = stack
        .http(
            "POST",
            &format!("/v1/chambers/{}:setHealthPolicy", again.id),
            Some(&token),
            Some(r#"{"health_policy":{"degraded_after":2,"down_after_failures":4,"down_after":"30s"}}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body)["health_policy"]["down_after_failures"],
        4,
        "{body}"
    );
    let (status, body) = stack
        .http(
            "POST",
            &format!("/v1/chambers/{}:setHealthPolicy", again.id),
            Some(&token),
            Some(r#"{"health_policy":{"degraded_after":0,"down_after_failures":4,"down_after":"30s"}}"#),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("health_policy.degraded_after"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chambers_import_as_a_json_array_through_envoy_all_or_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let (_, token) = stack.tenant("import", Role::Operator).await;
    let channel = stack.channel().await;
    let s = section(&channel, &token, "Import hall").await;
    let row = |name: &str, url: &str| {
        format!(
            r#"{{"section_id":"{}","name":"{name}","url":"{url}","format":"json","interval":"5s","detectors":[{{"name":"t","key":"/t"}}]}}"#,
            s.id
        )
    };
    let listed = |channel: Channel| {
        let token = token.clone();
        let section_id = s.id.clone();
        async move {
            ChamberServiceClient::new(channel)
                .list_chambers(authed(
                    v1::ListChambersRequest {
                        section_id,
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner()
                .chambers
                .len()
        }
    };
    // A client stream is a JSON array of messages; rows count across them.
    let bad = format!(
        r#"[{{"chambers":[{},{}]}},{{"chambers":[{}]}}]"#,
        row("a", "http://127.0.0.2/a"),
        row("b", "http://127.0.0.2/b"),
        row("c", "gopher://127.0.0.2/c")
    );
    let (status, body) = stack
        .http("POST", "/v1/chambers:import", Some(&token), Some(&bad))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("chambers[2].url"),
        "the third row's field: {body}"
    );
    assert_eq!(listed(channel.clone()).await, 0, "nothing created");

    let good = format!(
        r#"[{{"chambers":[{},{}]}},{{"chambers":[{}]}}]"#,
        row("a", "http://127.0.0.2/a"),
        row("b", "http://127.0.0.2/b"),
        row("c", "https://127.0.0.2/c")
    );
    let (status, body) = stack
        .http("POST", "/v1/chambers:import", Some(&token), Some(&good))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["chamber_ids"].as_array().unwrap().len(), 3);
    assert_eq!(listed(channel).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bad_and_revoked_tokens_are_refused() {
    let stack = Stack::start(StackOptions {
        // No decision cache: a revocation takes effect at once.
        auth_env: vec![("CHAMBERLAIN_AUTH_CACHE_SECS", "0".into())],
        ..StackOptions::default()
    })
    .await;
    let (_, admin) = stack.tenant("a", Role::Admin).await;
    let channel = stack.channel().await;
    let mut sections = SectionServiceClient::new(channel.clone());
    let list = || v1::ListSectionsRequest { page: None };

    let none = sections
        .list_sections(Request::new(list()))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    // A gRPC caller reads the plain reason, not a JSON document.
    assert!(
        none.message().starts_with("no credential"),
        "{:?}",
        none.message()
    );
    let forged = chamberlain_domain::model::TokenSecret::generate();
    for bad in ["nonsense", forged.expose()] {
        let e = sections
            .list_sections(authed(list(), bad))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{bad}: {e:?}");
    }
    let (status, body) = stack.http("GET", "/v1/sections", None, None).await;
    assert_eq!(status, 401);
    let status_json: serde_json::Value = serde_json::from_str(&body).expect(&body);
    assert_eq!(status_json["code"], 16, "a google.rpc.Status: {body}");
    assert_eq!(
        stack
            .http("GET", "/v1/sections", Some("nonsense"), None)
            .await
            .0,
        401
    );

    // A second token, revoked over the API.
    let created = AuthServiceClient::new(channel.clone())
        .create_api_token(authed(
            v1::CreateApiTokenRequest {
                name: "ci".into(),
                role: "viewer".into(),
                expires_in: None,
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let ci = created.secret;
    assert!(sections.list_sections(authed(list(), &ci)).await.is_ok());
    AuthServiceClient::new(channel.clone())
        .revoke_api_token(authed(
            v1::RevokeApiTokenRequest {
                id: created.token.unwrap().id,
            },
            &admin,
        ))
        .await
        .unwrap();
    let revoked = sections
        .list_sections(authed(list(), &ci))
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated, "{revoked:?}");
    assert!(revoked.message().contains("revoked"), "{revoked:?}");
    assert_eq!(
        stack.http("GET", "/v1/sections", Some(&ci), None).await.0,
        401
    );
    // The admin's own token still works.
    assert!(sections.list_sections(authed(list(), &admin)).await.is_ok());
}

/// Two auth replicas behind Envoy, each with the operator's decision cached: a role lowered
/// and then the user deleted through the API take effect on the very next call, whichever
/// replica answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_role_and_a_deleted_user_take_effect_on_the_next_call_on_every_replica() {
    let stack = Stack::start(StackOptions {
        extra_auths: 1,
        ..StackOptions::default()
    })
    .await;
    let (admin, admin_token) = stack.tenant("a", Role::Admin).await;
    let channel = stack.channel().await;
    let mut users = UserServiceClient::new(channel.clone());
    let operator = users
        .create_user(authed(
            v1::CreateUserRequest {
                email: "op@a.example".into(),
                display_name: "op".into(),
                role: "operator".into(),
                password: String::new(),
            },
            &admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let operator_token = stack
        .authenticator()
        .create_token(
            &chamberlain_domain::usecases::Actor {
                user_id: chamberlain_domain::model::UserId::parse(&operator.id).unwrap(),
                organization_id: admin.organization_id,
                role: Role::Operator,
            },
            "op",
            None,
            None,
        )
        .await
        .unwrap()
        .secret
        .expose()
        .to_owned();
    let mut sections = SectionServiceClient::new(channel.clone());
    let create = |name: String| {
        authed(
            v1::CreateSectionRequest {
                name,
                description: String::new(),
            },
            &operator_token,
        )
    };
    // Round robin: both replicas decide (and cache) the operator's calls.
    for i in 0..4 {
        sections
            .create_section(create(format!("before {i}")))
            .await
            .unwrap();
    }

    users
        .set_user_role(authed(
            v1::SetUserRoleRequest {
                id: operator.id.clone(),
                role: "viewer".into(),
            },
            &admin_token,
        ))
        .await
        .unwrap();
    for i in 0..4 {
        let denied = sections
            .create_section(create(format!("after {i}")))
            .await
            .unwrap_err();
        assert_eq!(
            denied.code(),
            Code::PermissionDenied,
            "call {i}: {denied:?}"
        );
    }
    // Still a viewer: reading passes on both replicas.
    for _ in 0..2 {
        sections
            .list_sections(authed(
                v1::ListSectionsRequest { page: None },
                &operator_token,
            ))
            .await
            .unwrap();
    }

    users
        .delete_user(authed(
            v1::DeleteUserRequest {
                id: operator.id.clone(),
            },
            &admin_token,
        ))
        .await
        .unwrap();
    for i in 0..4 {
        let refused = sections
            .list_sections(authed(
                v1::ListSectionsRequest { page: None },
                &operator_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "call {i}: {refused:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_cannot_change_chambers_and_organizations_never_see_each_other() {
    let stack = Stack::start(StackOptions::default()).await;
    let (a_admin, a_token) = stack.tenant("a", Role::Admin).await;
    let (_, b_token) = stack.tenant("b", Role::Admin).await;
    let channel = stack.channel().await;
    let s = section(&channel, &a_token, "Floor 1").await;
    let mut chambers = ChamberServiceClient::new(channel.clone());
    let c = chambers
        .create_chamber(authed(good_chamber(&s.id), &a_token))
        .await
        .unwrap()
        .into_inner();

    // A viewer of organization A.
    let viewer = chamberlain_domain::usecases::UserAdmin::new(
        &chamberlain_domain::ports::Repositories::of(stack.store.clone()),
        std::sync::Arc::new(chamberlain_fakes::InsecureTestPasswordHasher),
        std::sync::Arc::new(chamberlain_memory::MemoryAccessEpoch::default()),
        std::sync::Arc::new(chamberlain_memory::SystemClock),
    )
    .create_user(
        &a_admin,
        chamberlain_domain::usecases::NewUser {
            email: "v@a.example".into(),
            display_name: "v".into(),
            role: "viewer".into(),
            password: None,
        },
    )
    .await
    .unwrap();
    let v_token = stack
        .authenticator()
        .create_token(
            &chamberlain_domain::usecases::Actor {
                user_id: viewer.id,
                organization_id: a_admin.organization_id,
                role: Role::Viewer,
            },
            "v",
            None,
            None,
        )
        .await
        .unwrap()
        .secret
        .expose()
        .to_owned();
    assert!(
        chambers
            .get_chamber(authed(v1::GetChamberRequest { id: c.id.clone() }, &v_token))
            .await
            .is_ok(),
        "a viewer reads"
    );
    let denied = chambers
        .pause_chamber(authed(
            v1::PauseChamberRequest { id: c.id.clone() },
            &v_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let (status, _) = stack
        .http(
            "POST",
            &format!("/v1/chambers/{}:pause", c.id),
            Some(&v_token),
            Some("{}"),
        )
        .await;
    assert_eq!(status, 403);

    // Organization B: not found, whatever it tries; its lists are empty.
    for e in [
        chambers
            .get_chamber(authed(v1::GetChamberRequest { id: c.id.clone() }, &b_token))
            .await
            .unwrap_err(),
        chambers
            .delete_chamber(authed(
                v1::DeleteChamberRequest { id: c.id.clone() },
                &b_token,
            ))
            .await
            .unwrap_err(),
        chambers
            .update_chamber(authed(
                v1::UpdateChamberRequest {
                    id: c.id.clone(),
                    name: Some("mine now".into()),
                    ..Default::default()
                },
                &b_token,
            ))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    let listed = chambers
        .list_chambers(authed(v1::ListChambersRequest::default(), &b_token))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.chambers.is_empty());
    let (status, _) = stack
        .http(
            "GET",
            &format!("/v1/chambers/{}", c.id),
            Some(&b_token),
            None,
        )
        .await;
    assert_eq!(status, 404);
    // B could not create a chamber in A's section either.
    let e = chambers
        .create_chamber(authed(good_chamber(&s.id), &b_token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A's chamber is as it was.
    let still = chambers
        .get_chamber(authed(v1::GetChamberRequest { id: c.id }, &a_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.name, "Climate 1");
}

fn field_of(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field_and_nothing_is_stored() {
    let stack = Stack::start(StackOptions::default()).await;
    let (_, token) = stack.tenant("a", Role::Operator).await;
    let channel = stack.channel().await;
    let s = section(&channel, &token, "Floor 1").await;
    let mut chambers = ChamberServiceClient::new(channel.clone());
    let cases: Vec<(&str, v1::CreateChamberRequest, &str)> = vec![
        (
            "interval below the minimum",
            v1::CreateChamberRequest {
                interval: millis(100),
                ..good_chamber(&s.id)
            },
            "interval",
        ),
        (
            "interval above the maximum",
            v1::CreateChamberRequest {
                interval: secs(48 * 3600),
                ..good_chamber(&s.id)
            },
            "interval",
        ),
        (
            "a URL that is not http(s)",
            v1::CreateChamberRequest {
                url: "ftp://127.0.0.2/x".into(),
                ..good_chamber(&s.id)
            },
            "url",
        ),
        (
            "a detector key that is not a pointer",
            v1::CreateChamberRequest {
                detectors: vec![v1::NewDetector {
                    name: "t".into(),
                    unit: "C".into(),
                    key: "t".into(),
                    ..Default::default()
                }],
                ..good_chamber(&s.id)
            },
            "detectors[0].key",
        ),
        (
            "a name too long",
            v1::CreateChamberRequest {
                name: "x".repeat(300),
                ..good_chamber(&s.id)
            },
            "name",
        ),
        (
            "an unknown section",
            v1::CreateChamberRequest {
                section_id: uuid::Uuid::new_v4().to_string(),
                ..good_chamber(&s.id)
            },
            "section_id",
        ),
    ];
    for (what, request, field) in cases {
        let e = chambers
            .create_chamber(authed(request, &token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        // Named as the request names it: `name`, not `chamber.name`.
        assert_eq!(field_of(&e), vec![field.to_owned()], "{what}");
        assert!(
            e.message().starts_with(&format!("{field}: ")),
            "{what}: {}",
            e.message()
        );
    }
    let listed = chambers
        .list_chambers(authed(v1::ListChambersRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.chambers.is_empty(),
        "nothing stored: {:?}",
        listed.chambers
    );

    // Updates: refused the same way, and the chamber keeps its values. Created without a
    // format (proto3 leaves it empty): JSON, as documented.
    let c = chambers
        .create_chamber(authed(
            v1::CreateChamberRequest {
                format: String::new(),
                ..good_chamber(&s.id)
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.format, "json");
    let listed = chambers
        .list_chambers(authed(v1::ListChambersRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .chambers
            .iter()
            .map(|c| c.detectors.len())
            .collect::<Vec<_>>(),
        vec![2],
        "ListChambers carries each chamber's detectors"
    );
    let e = chambers
        .update_chamber(authed(
            v1::UpdateChamberRequest {
                id: c.id.clone(),
                url: Some("gopher://x".into()),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(field_of(&e), vec!["url".to_owned()], "{e:?}");
    let e = chambers
        .set_chamber_interval(authed(
            v1::SetChamberIntervalRequest {
                id: c.id.clone(),
                interval: millis(10),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(field_of(&e), vec!["interval".to_owned()], "{e:?}");
    let e = SectionServiceClient::new(channel.clone())
        .create_section(authed(
            v1::CreateSectionRequest {
                name: String::new(),
                description: String::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), vec!["name".to_owned()], "{e:?}");
    let e = chambers
        .update_chamber(authed(
            v1::UpdateChamberRequest {
                id: c.id.clone(),
                section_id: Some(uuid::Uuid::new_v4().to_string()),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        field_of(&e).iter().any(|f| f.ends_with("section_id")),
        "{e:?}"
    );
    let same = chambers
        .get_chamber(authed(v1::GetChamberRequest { id: c.id }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.url, "http://127.0.0.2:9/chamber");
    assert_eq!(same.interval, secs(1));
    assert_eq!(same.section_id, s.id);

    // JSON callers get the field in the body.
    let (status, body) = stack
        .http(
            "POST",
            "/v1/chambers",
            Some(&token),
            Some(&format!(
                r#"{{"section_id":"{}","name":"x","url":"ftp://x","format":"json","interval":"1s"}}"#,
                s.id
            )),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let b = json(&body);
    assert_eq!(b["code"], 3);
    assert!(
        b["details"][0]["field_violations"][0]["field"]
            .as_str()
            .unwrap()
            .ends_with("url"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_bypasses_envoy_cannot_claim_an_identity() {
    let stack = Stack::start(StackOptions::default()).await;
    let (actor, _) = stack.tenant("a", Role::Admin).await;
    let direct = stack.direct_channel().await;
    let mut users = UserServiceClient::new(direct);
    // No identity at all.
    let e = users
        .who_am_i(Request::new(v1::WhoAmIRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // An identity signed with a key the caller made up.
    let wrong = IdentityKey::new(b"a key somebody made up, 32+ bytes long".to_vec()).unwrap();
    let identity = chamberlain_domain::usecases::Identity {
        actor,
        token_id: chamberlain_domain::model::ApiTokenId::random(),
    };
    let mut r = Request::new(v1::WhoAmIRequest {});
    r.metadata_mut().insert(
        "x-chamberlain-identity",
        wrong
            .sign(&identity, crate::support::now())
            .parse()
            .unwrap(),
    );
    let e = users.who_am_i(r).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // With the real key it would pass: the key is the only thing standing in the way.
    let right = IdentityKey::new(IDENTITY_KEY.as_bytes().to_vec()).unwrap();
    let mut r = Request::new(v1::WhoAmIRequest {});
    r.metadata_mut().insert(
        "x-chamberlain-identity",
        right
            .sign(&identity, crate::support::now())
            .parse()
            .unwrap(),
    );
    let me = users.who_am_i(r).await.unwrap().into_inner();
    assert_eq!(me.id, actor.user_id.to_string());
}

/// Reports, as WhoAmI's display name, the `x-chamberlain-*` headers that reached it.
#[derive(Debug, Clone)]
struct HeaderRecorder;

#[tonic::async_trait]
impl v1::user_service_server::UserService for HeaderRecorder {
    async fn who_am_i(
        &self,
        request: Request<v1::WhoAmIRequest>,
    ) -> Result<tonic::Response<v1::User>, Status> {
        let seen: Vec<String> = request
            .metadata()
            .iter()
            .map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    format!("{}={}", k.as_str(), v.to_str().unwrap_or("?"))
                }
                tonic::metadata::KeyAndValueRef::Binary(k, _) => k.as_str().to_owned(),
            })
            .filter(|h| h.starts_with("x-chamberlain-") || h.starts_with("authorization"))
            .collect();
        Ok(tonic::Response::new(v1::User {
            display_name: seen.join("\n"),
            ..Default::default()
        }))
    }
    async fn create_user(
        &self,
        _: Request<v1::CreateUserRequest>,
    ) -> Result<tonic::Response<v1::User>, Status> {
        Err(Status::unimplemented("recorder"))
    }
    async fn list_users(
        &self,
        _: Request<v1::ListUsersRequest>,
    ) -> Result<tonic::Response<v1::ListUsersResponse>, Status> {
        Err(Status::unimplemented("recorder"))
    }
    async fn set_user_role(
        &self,
        _: Request<v1::SetUserRoleRequest>,
    ) -> Result<tonic::Response<v1::User>, Status> {
        Err(Status::unimplemented("recorder"))
    }
    async fn delete_user(
        &self,
        _: Request<v1::DeleteUserRequest>,
    ) -> Result<tonic::Response<v1::DeleteUserResponse>, Status> {
        Err(Status::unimplemented("recorder"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_identity_headers_never_reach_the_gateway() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let recorder_port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(v1::user_service_server::UserServiceServer::new(
                HeaderRecorder,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let stack = Stack::start(StackOptions {
        upstream_override: Some(recorder_port),
        ..StackOptions::default()
    })
    .await;
    let (actor, token) = stack.tenant("a", Role::Viewer).await;
    let key = IdentityKey::new(IDENTITY_KEY.as_bytes().to_vec()).unwrap();
    let forged = "v1 org=00000000-0000-0000-0000-000000000000 role=admin sig=00";
    let check = |seen: &str, route: &str| {
        let identities: Vec<&str> = seen
            .lines()
            .filter_map(|l| l.strip_prefix("x-chamberlain-identity="))
            .collect();
        assert_eq!(
            identities.len(),
            1,
            "{route}: exactly the auth service's identity: {seen}"
        );
        let verified = key
            .verify(identities[0], crate::support::now())
            .unwrap_or_else(|e| panic!("{route}: {e}: {seen}"));
        assert_eq!(verified.actor, actor, "{route}");
        assert!(!seen.contains("x-chamberlain-role"), "{route}: {seen}");
        assert!(!seen.contains("forged"), "{route}: {seen}");
        assert!(
            !seen.contains("authorization"),
            "{route}: the credential is removed: {seen}"
        );
    };

    let mut r = authed(v1::WhoAmIRequest {}, &token);
    r.metadata_mut()
        .insert("x-chamberlain-identity", forged.parse().unwrap());
    r.metadata_mut()
        .insert("x-chamberlain-role", "admin".parse().unwrap());
    r.metadata_mut()
        .insert("x-chamberlain-note", "forged".parse().unwrap());
    let seen = UserServiceClient::new(stack.channel().await)
        .who_am_i(r)
        .await
        .unwrap()
        .into_inner()
        .display_name;
    check(&seen, "gRPC");

    let (status, body) = stack
        .http_with(
            "GET",
            "/v1/users:me",
            Some(&token),
            None,
            &[
                ("x-chamberlain-identity", forged),
                ("X-Chamberlain-Role", "admin"),
                ("x-chamberlain-note", "forged"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    check(json(&body)["display_name"].as_str().unwrap(), "JSON");
}

/// An ext_authz service that answers too late.
#[derive(Debug, Clone)]
struct SlowAuth;

#[tonic::async_trait]
impl envoy_types::ext_authz::v3::pb::Authorization for SlowAuth {
    async fn check(
        &self,
        _: Request<envoy_types::ext_authz::v3::pb::CheckRequest>,
    ) -> Result<tonic::Response<envoy_types::ext_authz::v3::pb::CheckResponse>, Status> {
        tokio::time::sleep(Duration::from_secs(3)).await; // the slowness under test
        use envoy_types::ext_authz::v3::CheckResponseExt;
        Ok(tonic::Response::new(
            envoy_types::ext_authz::v3::pb::CheckResponse::with_status(Status::ok("too late")),
        ))
    }
}

async fn every_call_refused(stack: &Stack, token: &str) {
    let before = stack.upstream_requests().await;
    let mut sections = SectionServiceClient::new(stack.channel().await);
    for _ in 0..3 {
        let e = sections
            .create_section(authed(
                v1::CreateSectionRequest {
                    name: "should not exist".into(),
                    description: String::new(),
                },
                token,
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e.code(),
                Code::Unavailable | Code::PermissionDenied | Code::Unauthenticated
            ),
            "{e:?}"
        );
        let (status, _) = stack
            .http(
                "POST",
                "/v1/sections",
                Some(token),
                Some(r#"{"name":"nor this"}"#),
            )
            .await;
        assert!(status >= 400, "JSON call refused, got {status}");
    }
    assert_eq!(
        stack.upstream_requests().await,
        before,
        "no request reached the gateway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_auth_service_refuses_every_call_and_none_reaches_the_gateway() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(envoy_types::ext_authz::v3::pb::AuthorizationServer::new(
                SlowAuth,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let stack = Stack::start(StackOptions {
        auth_override: Some(port),
        ..StackOptions::default()
    })
    .await;
    let (_, token) = stack.tenant("a", Role::Admin).await;
    every_call_refused(&stack, &token).await;
    let stored = stack.http("GET", "/v1/sections", Some(&token), None).await;
    assert!(stored.0 >= 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_auth_service_refuses_every_call_and_none_reaches_the_gateway() {
    let mut stack = Stack::start(StackOptions::default()).await;
    let (_, token) = stack.tenant("a", Role::Admin).await;
    // It works while the auth service runs...
    section(&stack.channel().await, &token, "before").await;
    stack.kill_auth();
    // ...and nothing passes once it is gone.
    every_call_refused(&stack, &token).await;
}

/// Two auth replicas behind Envoy (round robin) keep one limit between them, in Redis: a burst
/// through both is cut at the shared bucket, not at twice it; an organization's limit holds
/// over all its users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_through_two_auth_replicas_is_cut_at_the_shared_limit() {
    let stack = Stack::start(StackOptions {
        auth_env: vec![
            ("CHAMBERLAIN_RATE_LIMIT_PER_SEC", "1".into()),
            ("CHAMBERLAIN_RATE_LIMIT_BURST", "5".into()),
            ("CHAMBERLAIN_ORG_RATE_LIMIT_PER_SEC", "1".into()),
            ("CHAMBERLAIN_ORG_RATE_LIMIT_BURST", "8".into()),
        ],
        extra_auths: 1,
        ..StackOptions::default()
    })
    .await;
    let (admin, token) = stack.tenant("a", Role::Admin).await;
    // A second user of the organization, made without an API call (the limits are tight).
    let colleague = chamberlain_domain::usecases::UserAdmin::new(
        &chamberlain_domain::ports::Repositories::of(stack.store.clone()),
        std::sync::Arc::new(chamberlain_fakes::InsecureTestPasswordHasher),
        std::sync::Arc::new(chamberlain_memory::MemoryAccessEpoch::default()),
        std::sync::Arc::new(chamberlain_memory::SystemClock),
    )
    .create_user(
        &admin,
        chamberlain_domain::usecases::NewUser {
            email: "colleague@a.example".into(),
            display_name: "colleague".into(),
            role: "viewer".into(),
            password: None,
        },
    )
    .await
    .unwrap();
    let other = stack
        .authenticator()
        .create_token(
            &chamberlain_domain::usecases::Actor {
                user_id: colleague.id,
                organization_id: admin.organization_id,
                role: Role::Viewer,
            },
            "colleague",
            None,
            None,
        )
        .await
        .unwrap()
        .secret
        .expose()
        .to_owned();
    let mut sections = SectionServiceClient::new(stack.channel().await);
    let (mut ok, mut exhausted) = (0, 0);
    for _ in 0..20 {
        match sections
            .list_sections(authed(v1::ListSectionsRequest { page: None }, &token))
            .await
        {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(e.message().contains("your user's"), "{e:?}");
                exhausted += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    // Five in the burst, and one more for each second the loop took.
    assert!((5..=7).contains(&ok), "the burst passes once: {ok} ok");
    assert_eq!(ok + exhausted, 20);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, _) = stack.http("GET", "/v1/sections", Some(&token), None).await;
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "JSON excess is 429: {statuses:?}");

    // The colleague has a bucket of their own, but the organization's (eight at once) is
    // nearly spent by the first user.
    let mut refused = None;
    for _ in 0..10 {
        if let Err(e) = sections
            .list_sections(authed(v1::ListSectionsRequest { page: None }, &other))
            .await
        {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("the organization's limit cuts the second user too");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("organization"), "{refused:?}");
}

/// A flood of calls without credentials (and with made-up ones) while an authenticated caller
/// works: the flood is limited on its own, and every one of the caller's calls is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_flood_leaves_authenticated_calls_answered() {
    let stack = Stack::start(StackOptions {
        listener_rate_limit: Some(60),
        anonymous_rate_limit: Some(20),
        ..StackOptions::default()
    })
    .await;
    let (_, token) = stack.tenant("a", Role::Viewer).await;
    let port = stack.ports.envoy;
    // The caller is at work before the flood starts: its first call (Envoy's first connections,
    // the auth service's first store lookup of the token) is not what this test is about. Made
    // at the flood's start on a busy machine, that first call once took longer than
    // ext_authz's 500 ms and was answered UNAVAILABLE (CI, 7 December 2026).
    let mut sections = SectionServiceClient::new(stack.channel().await);
    sections
        .list_sections(authed(v1::ListSectionsRequest { page: None }, &token))
        .await
        .expect("the caller's call before the flood");
    let flood: Vec<_> = (0..300)
        .map(|i| {
            tokio::spawn(async move {
                let forged = (i % 3 == 0).then_some("chm_made_up");
                chamberlain_tests::api_stack::http_request(
                    port,
                    "GET",
                    "/v1/sections",
                    forged,
                    None,
                    &[],
                )
                .await
                .0
            })
        })
        .collect();
    for i in 0..30 {
        sections
            .list_sections(authed(v1::ListSectionsRequest { page: None }, &token))
            .await
            .unwrap_or_else(|e| panic!("authenticated call {i} refused during the flood: {e:?}"));
    }
    let mut statuses = Vec::new();
    for request in flood {
        statuses.push(request.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| [401, 429].contains(s)),
        "the flood is refused: {statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "and limited, not only refused: {statuses:?}"
    );
}

/// Behind a trusted load balancer, sign-in attempts are limited per client as the balancer
/// saw it (`x-forwarded-for`), not all together as the balancer's one address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_has_its_own_sign_in_limit() {
    let stack = Stack::start(StackOptions {
        auth_env: vec![("CHAMBERLAIN_TRUSTED_PROXIES", "127.0.0.1/32".into())],
        ..StackOptions::default()
    })
    .await;
    let attempt = |client: &'static str| {
        let stack = &stack;
        async move {
            let (status, _) = chamberlain_tests::api_stack::http_request(
                stack.ports.envoy,
                "POST",
                "/v1/auth:signIn",
                None,
                Some(r#"{"email":"nobody@lab.example","password":"not the password"}"#),
                &[("x-forwarded-for", client)],
            )
            .await;
            status
        }
    };
    // Client one spends its burst of ten (and more: a refill a second)...
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(attempt("203.0.113.1").await);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // ...while client two, behind the same balancer, still gets an answer on its password.
    assert_eq!(attempt("203.0.113.2").await, 401);
}

/// Every cluster the config names is defined, and authorization fails closed.
#[test]
fn the_envoy_config_names_only_defined_clusters_and_fails_closed() {
    let yaml = chamberlain_compose::envoy::TEMPLATE;
    let value_of = |line: &str, key: &str| -> Option<String> {
        let at = line.find(key)?;
        let rest = &line[at + key.len()..];
        let v: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        (!v.is_empty()).then_some(v)
    };
    let clusters_at = yaml.find("\n  clusters:").expect("a clusters section");
    let defined: Vec<String> = yaml[clusters_at..]
        .lines()
        .filter(|l| l.starts_with("    - name:"))
        .filter_map(|l| value_of(l, "name:"))
        .collect();
    let referenced: Vec<String> = yaml[..clusters_at]
        .lines()
        .filter_map(|l| value_of(l, "cluster_name:").or_else(|| value_of(l, "cluster:")))
        .collect();
    assert!(!referenced.is_empty() && !defined.is_empty());
    for r in &referenced {
        assert!(
            defined.contains(r),
            "cluster {r} is referenced but not defined ({defined:?})"
        );
    }
    for required in ["gateway", "auth"] {
        assert!(
            referenced.iter().any(|r| r == required),
            "{required} is not used"
        );
    }
    assert!(
        yaml.contains("failure_mode_allow: false"),
        "ext_authz must fail closed"
    );
    assert!(!yaml.contains("failure_mode_allow: true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reports_health_and_serves_reflection() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let stack = Stack::start(StackOptions::default()).await;
    let channel = stack.direct_channel().await;
    for service in chamberlain_proto::SERVICES {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in chamberlain_proto::SERVICES
        .iter()
        .copied()
        .chain(["grpc.health.v1.Health"])
    {
        assert!(
            names.iter().any(|n| n == service),
            "{service} not in {names:?}"
        );
    }

    // The older reflection protocol, which grpcio-reflection and grpcurl speak.
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut replies = ServerReflectionClient::new(stack.direct_channel().await)
            .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }]))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected v1alpha reflection reply {reply:?}");
        };
        assert!(
            list.service
                .iter()
                .any(|s| s.name == "chamberlain.v1.ChamberService"),
            "{list:?}"
        );
    }

    // Through Envoy, health answers without a token (load balancers probe it so).
    let status = HealthClient::new(stack.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health through Envoy without a token")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

/// JSON callers get a `google.rpc.Status` body for every error, whoever raises it: an unknown
/// route (404, not a gRPC error on HTTP 200), a body the transcoder cannot read (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_errors_are_google_rpc_status_bodies_whoever_raises_them() {
    let stack = Stack::start(StackOptions::default()).await;
    let (_, token) = stack.tenant("a", Role::Operator).await;
    let status_of = |what: &str, (status, body): (u16, String)| {
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {status} {body:?}"));
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {json}"
        );
        (status, json["code"].as_i64().unwrap_or(-1))
    };
    for (method, path) in [("GET", "/v1/nothing"), ("DELETE", "/v1/readings")] {
        let reply = stack.http(method, path, Some(&token), None).await;
        assert_eq!(
            status_of(path, reply),
            (404, 5),
            "{method} {path}: NOT_FOUND"
        );
    }
    for (what, body) in [
        ("a truncated body", r#"{"name": "#),
        (
            "a bad duration",
            r#"{"sectionId": "00000000-0000-0000-0000-000000000000", "name": "c", "url": "http://127.0.0.2/", "interval": "soon"}"#,
        ),
    ] {
        let path = if what == "a bad duration" {
            "/v1/chambers"
        } else {
            "/v1/sections"
        };
        let reply = stack.http("POST", path, Some(&token), Some(body)).await;
        assert_eq!(status_of(what, reply), (400, 3), "{what}: INVALID_ARGUMENT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_with_a_password_without_a_token_and_gets_one() {
    let stack = Stack::start(StackOptions::default()).await;
    let (_, admin) = stack.tenant("a", Role::Admin).await;
    let channel = stack.channel().await;
    let created = UserServiceClient::new(channel.clone())
        .create_user(authed(
            v1::CreateUserRequest {
                email: "Op@A.example".into(),
                display_name: "Op".into(),
                role: "operator".into(),
                password: "correct horse battery".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    // Too short a password names the field.
    let e = UserServiceClient::new(channel.clone())
        .create_user(authed(
            v1::CreateUserRequest {
                email: "x@a.example".into(),
                display_name: "x".into(),
                role: "viewer".into(),
                password: "short".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), ["password"], "{e:?}");

    // JSON sign-in, no token needed; a wrong password is refused like an unknown email.
    let (status, body) = stack
        .http(
            "POST",
            "/v1/auth:signIn",
            None,
            Some(r#"{"email":"op@a.example","password":"wrong password!"}"#),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = stack
        .http(
            "POST",
            "/v1/auth:signIn",
            None,
            Some(r#"{"email":"op@a.example","password":"correct horse battery"}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token = json(&body)["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("chm_"), "{body}");
    let me = UserServiceClient::new(channel.clone())
        .who_am_i(authed(v1::WhoAmIRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((me.id, me.role.as_str()), (created.id, "operator"));
    // The same over gRPC.
    let signed_in = AuthServiceClient::new(channel)
        .sign_in(Request::new(v1::SignInRequest {
            email: "op@a.example".into(),
            password: "correct horse battery".into(),
            organization: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(signed_in.expires_at.is_some());
}

/// One address, accounts in two organizations (each admin added it without learning of the
/// other): gRPC gets the choice in a google.rpc.ErrorInfo, JSON and the CLI sign in to the
/// organization they name, and the CLI without one lists the choices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_two_organizations_signs_in_to_the_one_named() {
    let stack = Stack::start(StackOptions::default()).await;
    let channel = stack.channel().await;
    let mut orgs = Vec::new();
    for label in ["a", "b"] {
        let (admin, token) = stack.tenant(label, Role::Admin).await;
        UserServiceClient::new(channel.clone())
            .create_user(authed(
                v1::CreateUserRequest {
                    email: "Ada@Lab.example".into(),
                    display_name: "Ada".into(),
                    role: "operator".into(),
                    password: "correct horse battery".into(),
                },
                &token,
            ))
            .await
            .unwrap_or_else(|e| panic!("{label}: {e:?}"));
        orgs.push(admin.organization_id.to_string());
    }

    let e = AuthServiceClient::new(channel.clone())
        .sign_in(Request::new(v1::SignInRequest {
            email: "ada@lab.example".into(),
            password: "correct horse battery".into(),
            organization: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let info = e.get_details_error_info().expect("an ErrorInfo detail");
    assert_eq!(info.reason, "ORGANIZATION_REQUIRED");
    let mut offered: Vec<&String> = info.metadata.keys().collect();
    offered.sort();
    let mut expected: Vec<&String> = orgs.iter().collect();
    expected.sort();
    assert_eq!(offered, expected);
    let b_name = info.metadata[&orgs[1]].clone();
    assert_eq!(b_name, "org b");

    // JSON, naming the organization.
    let (status, body) = stack
        .http(
            "POST",
            "/v1/auth:signIn",
            None,
            Some(
                r#"{"email":"ada@lab.example","password":"correct horse battery","organization":"org b"}"#,
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token = json(&body)["token"].as_str().unwrap().to_owned();
    let me = UserServiceClient::new(channel.clone())
        .who_am_i(authed(v1::WhoAmIRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.organization_id, orgs[1]);

    // The CLI: without --organization (and nobody at a terminal to ask) it lists the choices.
    let cli = |extra: &[&str]| {
        std::process::Command::new(chamberlain_tests::chamberlain_bin())
            .args(["sign-in", "--server"])
            .arg(format!("127.0.0.1:{}", stack.ports.envoy))
            .args(["--email", "ada@lab.example", "--output", "json"])
            .args(extra)
            .env("CHAMBERLAIN_PASSWORD", "correct horse battery")
            .env("CHAMBERLAIN_CONFIG", "/dev/null")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let undecided = cli(&[]);
    let stderr = String::from_utf8_lossy(&undecided.stderr);
    assert_eq!(undecided.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("org a") && stderr.contains("org b") && stderr.contains("--organization"),
        "{stderr}"
    );
    let chosen = cli(&["--organization", &orgs[0]]);
    assert!(
        chosen.status.success(),
        "{}",
        String::from_utf8_lossy(&chosen.stderr)
    );
    let reply = json(&String::from_utf8_lossy(&chosen.stdout));
    let token = reply["token"].as_str().expect("a token").to_owned();
    let me = UserServiceClient::new(channel)
        .who_am_i(authed(v1::WhoAmIRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.organization_id, orgs[0]);
}

/// The console through Envoy, served by the gateway: its own session cookie opens it (a bearer
/// token does not), and that cookie opens nothing of the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_through_envoy_on_its_own_session() {
    use chamberlain_tests::api_stack::http_exchange;
    let stack = Stack::start(StackOptions::default()).await;
    let (_, admin) = stack.tenant("a", Role::Admin).await;
    let channel = stack.channel().await;
    UserServiceClient::new(channel.clone())
        .create_user(authed(
            v1::CreateUserRequest {
                email: "tech@a.example".into(),
                display_name: "Tech".into(),
                role: "operator".into(),
                password: "correct horse battery".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let s = section(&channel, &admin, "Cold room").await;
    let port = stack.ports.envoy;
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n{extra}\r\n")
    };
    let location = |headers: &[(String, String)]| {
        headers
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };

    let (status, headers, _) = http_exchange(port, get("/console/", "")).await;
    assert_eq!(
        (status, location(&headers).as_str()),
        (303, "/console/sign-in")
    );
    let (status, headers, _) = http_exchange(
        port,
        get("/console/", &format!("authorization: Bearer {admin}\r\n")),
    )
    .await;
    assert_eq!(
        (status, location(&headers).as_str()),
        (303, "/console/sign-in"),
        "a bearer token does not open the console"
    );
    let (status, headers, page) = http_exchange(port, get("/console/sign-in", "")).await;
    assert_eq!(status, 200);
    assert!(page.contains("name=\"password\""));
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-security-policy" && v.contains("script-src 'self'")),
        "{headers:?}"
    );

    let form = "email=tech%40a.example&password=correct+horse+battery";
    let (status, headers, body) = http_exchange(
        port,
        format!(
            "POST /console/sign-in HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\norigin: http://127.0.0.1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{form}",
            form.len()
        ),
    )
    .await;
    assert_eq!(status, 303, "{body}");
    let cookie = headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .expect("a session cookie");
    let (status, _, page) = http_exchange(
        port,
        get(
            &format!("/console/?section={}", s.id),
            &format!("cookie: {cookie}\r\n"),
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Cold room") && page.contains("Tech"),
        "{page}"
    );
    // The cookie opens nothing of the API.
    let (status, _, _) =
        http_exchange(port, get("/v1/sections", &format!("cookie: {cookie}\r\n"))).await;
    assert_eq!(status, 401);
}

/// docs/API.md lists every JSON route the API has, as `VERB /path` (read from the descriptor
/// set's `google.api.http` options, so a new RPC without its line fails here).
#[test]
fn the_api_page_lists_every_json_route() {
    use prost_reflect::{DescriptorPool, Value};
    let pool = DescriptorPool::decode(chamberlain_proto::FILE_DESCRIPTOR_SET).unwrap();
    let http = pool
        .get_extension_by_name("google.api.http")
        .expect("the google.api.http extension is in the descriptor set");
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/API.md"))
        .expect("docs/API.md");
    let mut routes = 0;
    for service in pool
        .services()
        .filter(|s| s.package_name() == "chamberlain.v1")
    {
        for method in service.methods() {
            let options = method.options();
            let rule = options.get_extension(&http);
            let Value::Message(rule) = rule.as_ref() else {
                panic!("{} has no google.api.http rule", method.full_name())
            };
            let (verb, path) = ["get", "post", "patch", "put", "delete"]
                .into_iter()
                .find_map(|verb| {
                    rule.get_field_by_name(verb)
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .filter(|p| !p.is_empty())
                        .map(|p| (verb.to_uppercase(), p))
                })
                .unwrap_or_else(|| panic!("{} has no route", method.full_name()));
            let line = format!("`{verb} {path}`");
            assert!(
                page.contains(&line),
                "docs/API.md does not list {line} ({})",
                method.full_name()
            );
            routes += 1;
        }
    }
    assert!(routes >= 46, "{routes} routes checked");
}

/// An operator's restart: SIGTERM, then a new gateway on the same addresses (API and /metrics)
/// at once, while Envoy holds a connection to the old one, which drains for a while. The new
/// one must get both addresses — the old one lets go of its listeners as soon as it stops
/// taking calls; it used to keep /metrics until it exited, and the new one stopped with
/// "address in use" — and serve through Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_at_once_after_a_stop_serves_on_its_address() {
    let metrics = vec![(
        "CHAMBERLAIN_METRICS_LISTEN",
        format!("127.0.0.1:{}", chamberlain_tests::api_stack::free_port()),
    )];
    let mut stack = Stack::start(StackOptions {
        gateway_env: metrics.clone(),
        ..StackOptions::default()
    })
    .await;
    let (_, token) = stack.tenant("a", Role::Viewer).await;
    let list = |channel: Channel, token: String| async move {
        SectionServiceClient::new(channel)
            .list_sections(authed(v1::ListSectionsRequest { page: None }, &token))
            .await
    };
    // Envoy now keeps an HTTP/2 connection open to the gateway, and a live stream keeps the
    // old gateway draining after its stop.
    list(stack.channel().await, token.clone()).await.unwrap();
    let _watching = v1::event_service_client::EventServiceClient::new(stack.channel().await)
        .watch_events(authed(v1::WatchEventsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    let (started, old_exited) = stack.restart_gateway_at_once(&metrics).await;
    assert_eq!(
        started,
        Ok(()),
        "the new gateway could not take its addresses"
    );
    assert!(old_exited, "the old gateway exited (its drain is bounded)");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match list(stack.channel().await, token.clone()).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                // Envoy reconnects to the new gateway; wait on that condition.
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the restarted gateway does not serve through Envoy: {e:?}"),
        }
    }
}

/// The access log of a JSON call shows what the client sent (method and path) and the gRPC
/// status the gateway returned, not one derived from the HTTP code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_shows_the_clients_method_and_the_gateways_grpc_status() {
    let stack = Stack::start(StackOptions::default()).await;
    let (_, token) = stack.tenant("a", Role::Operator).await;
    let (status, body) = stack
        .http(
            "POST",
            "/v1/sections",
            Some(&token),
            Some(r#"{"name": ""}"#),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = stack.http("GET", "/v1/sections", Some(&token), None).await;
    assert_eq!(status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let line = |method: &str| {
        stack
            .access_log()
            .into_iter()
            .find(|l| l["path"] == "/v1/sections" && l["method"].as_str() == Some(method))
    };
    while (line("POST").is_none() || line("GET").is_none())
        && tokio::time::Instant::now() < deadline
    {
        // Envoy writes its access log asynchronously: wait for the lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = line("POST").unwrap_or_else(|| panic!("{:#?}", stack.access_log()));
    assert_eq!(refused["grpc_status"], "3", "INVALID_ARGUMENT: {refused}");
    assert_eq!(refused["status"], 400, "{refused}");
    let listed = line("GET").unwrap_or_else(|| panic!("{:#?}", stack.access_log()));
    assert_eq!(listed["grpc_status"], "0", "OK: {listed}");
    let (status, _) = stack.http("GET", "/v1/nothing", Some(&token), None).await;
    assert_eq!(status, 404);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let unknown = || {
        stack
            .access_log()
            .into_iter()
            .find(|l| l["path"] == "/v1/nothing")
    };
    while unknown().is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unknown = unknown().unwrap_or_else(|| panic!("{:#?}", stack.access_log()));
    assert_eq!(
        (&unknown["status"], &unknown["grpc_status"]),
        (&serde_json::json!(404), &serde_json::json!("5")),
        "NOT_FOUND: {unknown}"
    );
}

/// `chamberlain envoy-config --tls-cert --tls-key` puts TLS on the listener: curl (a client
/// that shares no code with ours) reaches the API over HTTPS with the certificate as its CA,
/// and the same port refuses plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_tls_when_given_a_certificate_and_key() {
    use std::process::{Command, Stdio};

    use chamberlain_tests::api_stack::{envoy_bin, free_port};

    let stack = Stack::start(StackOptions::default()).await;
    let (_, token) = stack.tenant("tls", Role::Operator).await;
    let dir = stack.dir.join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    // A self-signed certificate for localhost, made with the openssl CLI (scripts/test
    // installs it when missing).
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(&dir)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let (port, admin) = (free_port(), free_port());
    let rendered = Command::new(chamberlain_tests::chamberlain_bin())
        .arg("envoy-config")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--gateway", &format!("127.0.0.1:{}", stack.ports.gateway)])
        .args(["--auth", &format!("127.0.0.1:{}", stack.ports.auth)])
        .args([
            "--otel-collector",
            &format!("127.0.0.1:{}", stack.ports.otel),
        ])
        .arg("--descriptor")
        .arg(stack.dir.join("chamberlain.pb"))
        .args([
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
            "--out",
            "envoy.yaml",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(String::from_utf8_lossy(&rendered.stdout).contains("(TLS)"));
    let mut envoy = Command::new(envoy_bin())
        .args([
            "-c",
            "envoy.yaml",
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
        ])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let curl = |url: &str, extra: &[&str]| {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "5", "--cacert"])
            .arg(dir.join("cert.pem"))
            .args(["--write-out", "\n%{http_code} %{http_version}"])
            .args(extra)
            .arg(url)
            .output()
            .expect("curl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let healthz = format!("https://localhost:{port}/healthz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !curl(&healthz, &[]).0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Envoy with TLS did not come up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let auth = format!("authorization: Bearer {token}");
    let (ok, out) = curl(
        &format!("https://localhost:{port}/v1/sections"),
        &["--http1.1", "-H", &auth],
    );
    assert!(ok && out.ends_with("200 1.1"), "HTTP/1.1 over TLS: {out}");
    let (ok, out) = curl(
        &format!("https://localhost:{port}/v1/sections"),
        &["--http2", "-H", &auth],
    );
    assert!(ok && out.ends_with("200 2"), "h2 by ALPN: {out}");
    // Plaintext on the TLS port is refused.
    let (ok, out) = curl(&format!("http://127.0.0.1:{port}/healthz"), &[]);
    assert!(!ok || !out.contains("200"), "plaintext answered: {out}");
    let _ = envoy.kill();
    let _ = envoy.wait();
}
