//! Chamber administration: roles, tenant isolation, validation, the change feed.

use std::time::Duration;

use chamberlain_domain::model::{ChamberState, PageRequest, Role};
use chamberlain_domain::ports::{ChamberChange, ChamberFilter, ReadingQuery, ReadingScope};
use chamberlain_domain::usecases::{
    Actor, ChamberPatch, NewChamber, NewDetector, NewSection, NewUser, UseCaseError,
};

use crate::support::Harness;

fn section(name: &str) -> NewSection {
    NewSection {
        name: name.into(),
        description: String::new(),
    }
}

fn detector(name: &str, key: &str) -> NewDetector {
    NewDetector {
        name: name.into(),
        key: key.into(),
        ..Default::default()
    }
}

fn new_chamber(section_id: chamberlain_domain::model::SectionId) -> NewChamber {
    NewChamber {
        section_id,
        name: "climate-3".into(),
        url: "http://10.1.2.3/state".into(),
        format: "json".into(),
        interval: Duration::from_secs(60),
        timeout: None,
        detectors: vec![detector("temperature", "/t"), detector("humidity", "/h")],
    }
}

fn field_of(e: UseCaseError) -> String {
    match e {
        UseCaseError::Invalid(v) => v.field.into_owned(),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[tokio::test]
async fn viewers_read_operators_configure_admins_manage_users() {
    let h = Harness::new();
    let viewer = h.tenant("roles", Role::Viewer).await;
    let operator = Actor {
        role: Role::Operator,
        ..viewer
    };
    let admin = Actor {
        role: Role::Admin,
        ..viewer
    };

    let denied = h
        .admin
        .create_section(&viewer, section("a"))
        .await
        .unwrap_err();
    assert!(matches!(denied, UseCaseError::Forbidden(f) if f.required == Role::Operator));
    let s = h
        .admin
        .create_section(&operator, section("a"))
        .await
        .unwrap();
    h.admin
        .create_chamber(&operator, new_chamber(s.id))
        .await
        .unwrap();
    assert_eq!(
        h.admin
            .list_chambers(&viewer, ChamberFilter::default(), PageRequest::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let user = NewUser {
        email: "new@roles.example".into(),
        display_name: "New".into(),
        role: "viewer".into(),
        password: None,
    };
    assert!(matches!(
        h.users.create_user(&operator, user.clone()).await,
        Err(UseCaseError::Forbidden(_))
    ));
    let created = h.users.create_user(&admin, user.clone()).await.unwrap();
    assert!(matches!(
        h.users.create_user(&admin, user).await,
        Err(UseCaseError::Duplicate { field: "email", .. })
    ));
    assert_eq!(
        h.users
            .set_role(&admin, created.id, "operator")
            .await
            .unwrap()
            .role,
        Role::Operator
    );
    assert!(matches!(
        h.users.set_role(&admin, admin.user_id, "viewer").await,
        Err(UseCaseError::FailedPrecondition(_))
    ));
    assert!(matches!(
        h.users.delete_user(&viewer, created.id).await,
        Err(UseCaseError::Forbidden(_))
    ));
}

#[tokio::test]
async fn tenants_cannot_reach_each_others_chambers() {
    let h = Harness::new();
    let a = h.tenant("alpha", Role::Operator).await;
    let b = h.tenant("beta", Role::Admin).await;
    let c = h.json_chamber(&a, "alpha-1").await;
    let not_found = |r: Result<_, UseCaseError>, entity: &str| match r {
        Err(UseCaseError::NotFound { entity: e }) => assert_eq!(e, entity),
        other => panic!("expected {entity} not found, got {other:?}"),
    };
    not_found(
        h.admin.get_chamber(&b, c.chamber.id).await.map(|_| ()),
        "chamber",
    );
    not_found(
        h.admin
            .update_chamber(
                &b,
                c.chamber.id,
                ChamberPatch {
                    name: Some("mine".into()),
                    ..Default::default()
                },
            )
            .await
            .map(|_| ()),
        "chamber",
    );
    not_found(h.admin.pause(&b, c.chamber.id).await.map(|_| ()), "chamber");
    not_found(
        h.admin
            .set_interval(&b, c.chamber.id, Duration::from_secs(5))
            .await
            .map(|_| ()),
        "chamber",
    );
    not_found(h.admin.delete_chamber(&b, c.chamber.id).await, "chamber");
    not_found(
        h.admin
            .add_detector(&b, c.chamber.id, detector("x", "/x"))
            .await
            .map(|_| ()),
        "chamber",
    );
    not_found(
        h.admin.remove_detector(&b, c.detectors[0].id).await,
        "detector",
    );
    not_found(
        h.admin
            .create_chamber(&b, new_chamber(c.chamber.section_id))
            .await
            .map(|_| ()),
        "section",
    );
    not_found(
        h.admin
            .start_batch(&b, c.chamber.section_id, section("theirs"))
            .await
            .map(|_| ()),
        "section",
    );
    not_found(
        h.queries
            .readings(
                &b,
                &ReadingQuery::all(ReadingScope::Detector(c.detectors[0].id)),
            )
            .await
            .map(|_| ()),
        "detector",
    );
    assert!(
        h.admin
            .list_chambers(&b, ChamberFilter::default(), PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        h.queries
            .latest(&b, &[c.chamber.id])
            .await
            .unwrap()
            .is_empty()
    );
    // And A's chamber is untouched.
    let still = h.admin.get_chamber(&a, c.chamber.id).await.unwrap();
    assert_eq!(still.chamber, c.chamber);
    assert_eq!(still.detectors.len(), 2);
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_written() {
    let h = Harness::new();
    let op = h.tenant("input", Role::Operator).await;
    let s = h.admin.create_section(&op, section("room")).await.unwrap();
    type Spoil = Box<dyn Fn(&mut NewChamber)>;
    let cases: Vec<(&str, Spoil)> = vec![
        ("chamber.name", Box::new(|c| c.name = "x".repeat(201))),
        ("chamber.name", Box::new(|c| c.name = "  ".into())),
        (
            "chamber.url",
            Box::new(|c| c.url = "ftp://10.1.2.3/state".into()),
        ),
        ("chamber.format", Box::new(|c| c.format = "xml".into())),
        (
            "chamber.interval",
            Box::new(|c| c.interval = Duration::from_millis(500)),
        ),
        (
            "chamber.timeout",
            Box::new(|c| c.timeout = Some(Duration::from_secs(61))),
        ),
        ("chamber.detectors", Box::new(|c| c.detectors.clear())),
        (
            "detectors[1].key",
            Box::new(|c| c.detectors[1].key = "humidity".into()),
        ),
        (
            "detectors[0].range.min",
            Box::new(|c| c.detectors[0].min = Some(f64::NAN)),
        ),
        (
            "detectors[1].range.max",
            Box::new(|c| c.detectors[1].max = Some(f64::INFINITY)),
        ),
        (
            "detectors[0].range",
            Box::new(|c| (c.detectors[0].min, c.detectors[0].max) = (Some(5.0), Some(1.0))),
        ),
        (
            "detectors[1].name",
            Box::new(|c| c.detectors[1].name = "temperature".into()),
        ),
        (
            "detectors[0].unit",
            Box::new(|c| c.detectors[0].unit = "u".repeat(33)),
        ),
        (
            "detectors[0].alias",
            Box::new(|c| c.detectors[0].alias = Some("a\u{0}b".into())),
        ),
    ];
    for (field, spoil) in cases {
        let mut chamber = new_chamber(s.id);
        spoil(&mut chamber);
        let err = h.admin.create_chamber(&op, chamber).await.unwrap_err();
        let message = err.to_string();
        assert_eq!(field_of(err), field, "{message}");
        assert!(
            message.starts_with(field),
            "the message names the field: {message}"
        );
    }
    assert!(
        h.admin
            .list_chambers(&op, ChamberFilter::default(), PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing half-written"
    );
    // Prometheus keys are checked in their own syntax.
    let mut prom = new_chamber(s.id);
    prom.format = "prometheus".into();
    assert_eq!(
        field_of(h.admin.create_chamber(&op, prom.clone()).await.unwrap_err()),
        "detectors[0].key"
    );
    prom.detectors = vec![detector("t", "chamber_temperature_celsius{sensor=\"top\"}")];
    h.admin.create_chamber(&op, prom).await.unwrap();
}

#[tokio::test]
async fn chamber_writes_are_published_on_the_change_feed() {
    use chamberlain_domain::ports::ChamberChanges as _;
    let h = Harness::new();
    let op = h.tenant("feed", Role::Operator).await;
    let mut feed = h.changes.subscribe().await.unwrap();
    let c = h.json_chamber(&op, "c1").await;
    h.clock.advance(Duration::from_secs(90));
    h.admin.pause(&op, c.chamber.id).await.unwrap();
    h.admin.resume(&op, c.chamber.id).await.unwrap();
    h.admin
        .set_interval(&op, c.chamber.id, Duration::from_secs(5))
        .await
        .unwrap();
    h.admin.delete_chamber(&op, c.chamber.id).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(feed.next().await.expect("feed open"));
    }
    let now = chamberlain_domain::ports::Clock::now(&*h.clock);
    match &seen[..] {
        [
            ChamberChange::Upserted { chamber: created },
            ChamberChange::Upserted { chamber: paused },
            ChamberChange::Upserted { chamber: resumed },
            ChamberChange::Upserted { chamber: faster },
            ChamberChange::Removed {
                chamber_id,
                organization_id,
            },
        ] => {
            assert_eq!(created.id, c.chamber.id);
            assert_eq!(paused.state, ChamberState::Paused);
            assert_eq!(
                (resumed.state, resumed.schedule_since),
                (ChamberState::Active, now)
            );
            assert_eq!(faster.interval.as_duration(), Duration::from_secs(5));
            assert_eq!(
                (*chamber_id, *organization_id),
                (c.chamber.id, op.organization_id)
            );
        }
        other => panic!("unexpected feed: {other:?}"),
    }
}

/// A detector added, changed or removed is a change of its chamber for the workers that cache
/// chamber definitions: each is published as the chamber upserted.
#[tokio::test]
async fn detector_writes_are_published_as_their_chamber_changed() {
    use chamberlain_domain::ports::ChamberChanges as _;
    let h = Harness::new();
    let op = h.tenant("detectorfeed", Role::Operator).await;
    let c = h.json_chamber(&op, "c1").await;
    let mut feed = h.changes.subscribe().await.unwrap();
    let added = h
        .admin
        .add_detector(&op, c.chamber.id, detector("co2", "/co2"))
        .await
        .unwrap();
    h.admin
        .update_detector(&op, added.id, detector("co2", "/sensors/co2"))
        .await
        .unwrap();
    h.admin.remove_detector(&op, added.id).await.unwrap();
    for step in ["added", "updated", "removed"] {
        match feed.next().await.expect("feed open") {
            ChamberChange::Upserted { chamber } => assert_eq!(chamber, c.chamber, "{step}"),
            other => panic!("{step}: unexpected change {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_shorter_interval_restarts_the_schedule_and_shortens_the_timeout() {
    let h = Harness::new();
    let op = h.tenant("interval", Role::Operator).await;
    let s = h.admin.create_section(&op, section("room")).await.unwrap();
    let c = h
        .admin
        .create_chamber(&op, new_chamber(s.id))
        .await
        .unwrap();
    assert_eq!(c.chamber.timeout.as_duration(), Duration::from_secs(10));
    h.clock.advance(Duration::from_secs(3600));
    let changed = h
        .admin
        .set_interval(&op, c.chamber.id, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(changed.timeout.as_duration(), Duration::from_secs(2));
    assert_eq!(
        changed.schedule_since,
        chamberlain_domain::ports::Clock::now(&*h.clock)
    );
    assert_eq!(
        field_of(
            h.admin
                .set_interval(&op, c.chamber.id, Duration::from_secs(86_401))
                .await
                .unwrap_err()
        ),
        "chamber.interval"
    );
}

#[tokio::test]
async fn a_section_holds_one_open_batch_and_cannot_be_deleted_while_in_use() {
    let h = Harness::new();
    let op = h.tenant("batch", Role::Operator).await;
    let c = h.json_chamber(&op, "c1").await;
    let b = h
        .admin
        .start_batch(&op, c.chamber.section_id, section("basil"))
        .await
        .unwrap();
    assert!(matches!(
        h.admin
            .start_batch(&op, c.chamber.section_id, section("mint"))
            .await,
        Err(UseCaseError::FailedPrecondition(_))
    ));
    h.admin.end_batch(&op, b.id).await.unwrap();
    assert!(matches!(
        h.admin.end_batch(&op, b.id).await,
        Err(UseCaseError::FailedPrecondition(_))
    ));
    assert!(matches!(
        h.admin.delete_section(&op, c.chamber.section_id).await,
        Err(UseCaseError::FailedPrecondition(_))
    ));
    assert!(matches!(
        h.admin.remove_detector(&op, c.detectors[0].id).await,
        Ok(())
    ));
    assert!(
        matches!(
            h.admin.remove_detector(&op, c.detectors[1].id).await,
            Err(UseCaseError::FailedPrecondition(_))
        ),
        "the last detector stays"
    );
}

#[tokio::test]
async fn a_chamber_without_a_format_is_json_and_a_wrong_one_is_named() {
    let h = Harness::new();
    let operator = h.tenant("fmt", Role::Operator).await;
    let s = h
        .admin
        .create_section(&operator, section("a"))
        .await
        .unwrap();
    let created = h
        .admin
        .create_chamber(
            &operator,
            NewChamber {
                format: String::new(),
                ..new_chamber(s.id)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        created.chamber.format,
        chamberlain_domain::model::ResponseFormat::Json
    );
    let refused = h
        .admin
        .create_chamber(
            &operator,
            NewChamber {
                name: "other".into(),
                format: "xml".into(),
                ..new_chamber(s.id)
            },
        )
        .await
        .unwrap_err();
    assert_eq!(field_of(refused), "chamber.format");
}

/// A chamber's health policy is set by operators, checked field by field, stored, and published
/// for the scheduler and workers.
#[tokio::test]
async fn an_operator_sets_a_chambers_health_policy_and_a_viewer_cannot() {
    use chamberlain_domain::ports::ChamberChanges as _;
    let h = Harness::new();
    let op = h.tenant("policy", Role::Operator).await;
    let c = h.json_chamber(&op, "c1").await;
    let mut feed = h.changes.subscribe().await.unwrap();
    let set = h
        .admin
        .set_health_policy(&op, c.chamber.id, 1, 2, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (
            set.health_policy.degraded_after(),
            set.health_policy.down_after_failures(),
            set.health_policy.down_after()
        ),
        (1, 2, Duration::from_secs(5))
    );
    match feed.next().await.expect("feed open") {
        ChamberChange::Upserted { chamber } => {
            assert_eq!(chamber.health_policy, set.health_policy);
        }
        other => panic!("expected the change on the feed, got {other:?}"),
    }
    for (degraded, down, after, field) in [
        (0, 2, 5, "health.degraded_after"),
        (3, 2, 5, "health.down_after_failures"),
        (1, 2, 100_000, "health.down_after"),
    ] {
        let e = h
            .admin
            .set_health_policy(
                &op,
                c.chamber.id,
                degraded,
                down,
                Duration::from_secs(after),
            )
            .await
            .unwrap_err();
        assert_eq!(field_of(e), field);
    }
    let viewer = h
        .tenant_user(&op_admin(&h, &op).await, "v", Role::Viewer)
        .await;
    assert!(matches!(
        h.admin
            .set_health_policy(&viewer, c.chamber.id, 5, 5, Duration::ZERO)
            .await,
        Err(UseCaseError::Forbidden(_))
    ));
}

/// The admin of `actor`'s organization.
async fn op_admin(h: &Harness, actor: &Actor) -> Actor {
    let users = h
        .repositories
        .users
        .list(actor.organization_id, Default::default())
        .await
        .unwrap();
    let admin = users.items.iter().find(|u| u.role == Role::Admin).unwrap();
    Actor {
        user_id: admin.id,
        organization_id: actor.organization_id,
        role: Role::Admin,
    }
}
