//! The rules the API used to apply itself and now asks the use cases for: a user's password is
//! checked and hashed by `UserAdmin` (after the role check), and a chamber's view carries its
//! health or fails whole.

use std::sync::Arc;

use chamberlain_domain::model::{ChamberHealth, HealthState, PageRequest, Role};
use chamberlain_domain::ports::{
    ChamberFilter, ChamberHealthRepository, Clock, MockChamberHealthRepository, MockPasswordHasher,
    PasswordError, Repositories, StoreError,
};
use chamberlain_domain::usecases::{ChamberAdmin, ChamberView, NewUser, UseCaseError, UserAdmin};

use crate::support::Harness;

fn new_user(email: &str, password: Option<&str>) -> NewUser {
    NewUser {
        email: email.into(),
        display_name: "New".into(),
        role: "viewer".into(),
        password: password.map(str::to_owned),
    }
}

fn users_with(h: &Harness, hasher: MockPasswordHasher) -> UserAdmin {
    UserAdmin::new(
        &h.repositories,
        Arc::new(hasher),
        h.access.clone(),
        h.clock.clone(),
    )
}

#[tokio::test]
async fn only_an_admin_gets_a_password_hashed_and_a_short_one_is_refused_by_name() {
    let h = Harness::new();
    let admin = h.tenant("pw", Role::Admin).await;
    let operator = h.tenant("pw2", Role::Operator).await;
    let mut hasher = MockPasswordHasher::new();
    // One hash in the whole test: the admin's good password. The operator's call and the
    // short password never reach the hasher.
    hasher
        .expect_hash()
        .times(1)
        .returning(|_| Ok("$fake$hash".into()));
    let users = users_with(&h, hasher);

    let denied = users
        .create_user(
            &operator,
            new_user("a@pw.example", Some("correct horse battery")),
        )
        .await;
    assert!(
        matches!(denied, Err(UseCaseError::Forbidden(_))),
        "{denied:?}"
    );

    let short = users
        .create_user(&admin, new_user("b@pw.example", Some("short")))
        .await;
    assert!(
        matches!(&short, Err(UseCaseError::Invalid(v)) if v.field == "password"),
        "{short:?}"
    );

    let created = users
        .create_user(
            &admin,
            new_user("c@pw.example", Some("correct horse battery")),
        )
        .await
        .unwrap();
    assert_eq!(created.password_hash.as_deref(), Some("$fake$hash"));
    let listed = users
        .list_users(&admin, PageRequest::default())
        .await
        .unwrap();
    assert!(
        !listed
            .items
            .iter()
            .any(|u| u.email.as_str() == "b@pw.example"),
        "nothing is created for a refused password"
    );
}

#[tokio::test]
async fn a_failing_hasher_creates_nothing_and_says_so() {
    let h = Harness::new();
    let admin = h.tenant("hash", Role::Admin).await;
    let mut hasher = MockPasswordHasher::new();
    hasher.expect_hash().returning(|_| {
        Err(PasswordError::Failed {
            message: "out of memory".into(),
        })
    });
    let users = users_with(&h, hasher);
    let failed = users
        .create_user(
            &admin,
            new_user("d@hash.example", Some("correct horse battery")),
        )
        .await;
    assert!(
        matches!(&failed, Err(UseCaseError::Hashing(PasswordError::Failed { message })) if message == "out of memory"),
        "{failed:?}"
    );
    let listed = users
        .list_users(&admin, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "only the admin: {listed:?}");
    // A token-only account (no password) needs no hash at all.
    users
        .create_user(&admin, new_user("e@hash.example", None))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_chamber_view_carries_its_health_and_a_failed_health_read_is_an_error() {
    let h = Harness::new();
    let operator = h.tenant("view", Role::Operator).await;
    let c = h.json_chamber(&operator, "c").await;
    let id = c.chamber.id;

    let view = h.admin.chamber_view(&operator, id).await.unwrap();
    assert_eq!(view.health, None, "never polled");
    let mut health = ChamberHealth::unknown(id, h.clock.now());
    health.state = HealthState::Down;
    h.store.save(&health).await.unwrap();
    let view = h.admin.chamber_view(&operator, id).await.unwrap();
    assert_eq!(
        (view.health, view.detectors.len()),
        (Some(HealthState::Down), 2)
    );
    let page = h
        .admin
        .list_chamber_views(&operator, ChamberFilter::default(), PageRequest::default())
        .await
        .unwrap();
    // Detectors are listed in id order (ids are random, so not necessarily as created).
    let mut detectors = c.detectors.clone();
    detectors.sort_by_key(|d| d.id);
    assert_eq!(
        page.items,
        vec![ChamberView {
            chamber: c.chamber.clone(),
            detectors,
            health: Some(HealthState::Down)
        }],
        "a listed chamber carries its detectors and health"
    );

    let mut broken = MockChamberHealthRepository::new();
    broken
        .expect_get()
        .returning(|_| Err(StoreError::unavailable("health table locked")));
    broken
        .expect_get_many()
        .returning(|_| Err(StoreError::unavailable("health table locked")));
    let admin = ChamberAdmin::new(
        &Repositories {
            health: Arc::new(broken),
            ..h.repositories.clone()
        },
        h.changes.clone(),
        h.events.clone(),
        h.clock.clone(),
    );
    let failed = admin.chamber_view(&operator, id).await;
    assert!(
        matches!(&failed, Err(UseCaseError::Unavailable { message }) if message.contains("health table locked")),
        "{failed:?}"
    );
    let failed = admin
        .list_chamber_views(&operator, ChamberFilter::default(), PageRequest::default())
        .await;
    assert!(
        matches!(failed, Err(UseCaseError::Unavailable { .. })),
        "{failed:?}"
    );
}
