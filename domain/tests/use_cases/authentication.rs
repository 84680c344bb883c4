//! Authentication: tokens, sign-in, revocation through the decision cache, role caps.

use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::model::Role;
use chamberlain_domain::ports::{
    AccessError, MockAccessEpoch, MockApiTokenRepository, Repositories,
};
use chamberlain_domain::usecases::{
    Actor, AuthError, AuthSettings, Authenticator, NewUser, Refusal, SignInError, UseCaseError,
};
use chamberlain_fakes::InsecureTestPasswordHasher;

use crate::support::Harness;

fn authenticator(h: &Harness) -> Authenticator {
    Authenticator::new(
        &h.repositories,
        Arc::new(InsecureTestPasswordHasher),
        h.access.clone(),
        h.clock.clone(),
        AuthSettings::default(),
    )
}

fn refusal<E: Into<SignInError>>(r: Result<impl std::fmt::Debug, E>) -> Refusal {
    match r.map_err(Into::into) {
        Err(SignInError::Auth(AuthError::Unauthenticated(why))) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_authenticates_as_its_user_with_at_most_its_role() {
    let h = Harness::new();
    let auth = authenticator(&h);
    let operator = h.tenant("a", Role::Operator).await;
    let issued = auth
        .create_token(&operator, "ci", Some("viewer"), None)
        .await
        .unwrap();
    let who = auth
        .authenticate(Some(&format!("Bearer {}", issued.secret.expose())))
        .await
        .unwrap();
    assert_eq!(who.actor.user_id, operator.user_id);
    assert_eq!(who.actor.organization_id, operator.organization_id);
    assert_eq!(who.actor.role, Role::Viewer, "capped by the token");
    assert_eq!(who.token_id, issued.token.id);
    // Use is recorded.
    let listed = auth
        .list_tokens(&operator, Default::default())
        .await
        .unwrap();
    assert!(listed.items[0].last_used_at.is_some());
}

#[tokio::test]
async fn a_token_never_grants_more_than_its_creator_has() {
    let h = Harness::new();
    let auth = authenticator(&h);
    let viewer = h.tenant("a", Role::Viewer).await;
    match auth.create_token(&viewer, "x", Some("admin"), None).await {
        Err(UseCaseError::Invalid(e)) => assert_eq!(e.field, "role"),
        other => panic!("expected an invalid role, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_malformed_and_unknown_credentials_are_refused() {
    let h = Harness::new();
    let auth = authenticator(&h);
    assert_eq!(refusal(auth.authenticate(None).await), Refusal::Missing);
    assert_eq!(
        refusal(auth.authenticate(Some("Bearer ")).await),
        Refusal::Missing
    );
    assert!(matches!(
        refusal(auth.authenticate(Some("Bearer hunter2")).await),
        Refusal::Malformed(_)
    ));
    let never_issued = chamberlain_domain::model::TokenSecret::generate();
    assert_eq!(
        refusal(auth.authenticate(Some(never_issued.expose())).await),
        Refusal::Unknown
    );
}

#[tokio::test]
async fn a_malformed_token_is_refused_without_a_lookup() {
    let h = Harness::new();
    // A repository that fails the test if it is asked anything.
    let tokens = MockApiTokenRepository::new();
    let auth = Authenticator::new(
        &Repositories {
            tokens: Arc::new(tokens),
            ..h.repositories.clone()
        },
        Arc::new(InsecureTestPasswordHasher),
        h.access.clone(),
        h.clock.clone(),
        AuthSettings::default(),
    );
    let mut typo = chamberlain_domain::model::TokenSecret::generate()
        .expose()
        .to_owned();
    typo.replace_range(8..9, if &typo[8..9] == "x" { "y" } else { "x" });
    assert!(matches!(
        refusal(auth.authenticate(Some(&typo)).await),
        Refusal::Malformed(_)
    ));
}

#[tokio::test]
async fn a_revoked_token_stops_on_the_next_call_on_every_replica() {
    let h = Harness::new();
    let here = authenticator(&h);
    let elsewhere = authenticator(&h);
    let admin = h.tenant("a", Role::Admin).await;
    let issued = here.create_token(&admin, "ci", None, None).await.unwrap();
    let bearer = format!("Bearer {}", issued.secret.expose());
    here.authenticate(Some(&bearer)).await.unwrap();
    elsewhere.authenticate(Some(&bearer)).await.unwrap();

    here.revoke_token(&admin, issued.token.id).await.unwrap();
    for replica in [&here, &elsewhere] {
        assert!(matches!(
            refusal(replica.authenticate(Some(&bearer)).await),
            Refusal::Refused(_)
        ));
    }
}

/// Two replicas with a decision cached each, and the user's role changed (or the user
/// deleted) through a third: the next call on either replica acts on the change.
#[tokio::test]
async fn a_lowered_role_and_a_deleted_user_take_effect_on_the_next_call_on_every_replica() {
    let h = Harness::new();
    let replicas = [authenticator(&h), authenticator(&h)];
    let admin = h.tenant("a", Role::Admin).await;
    let operator = h.tenant_user(&admin, "op", Role::Operator).await;
    let issued = replicas[0]
        .create_token(&operator, "ci", None, None)
        .await
        .unwrap();
    let bearer = format!("Bearer {}", issued.secret.expose());
    for replica in &replicas {
        let who = replica.authenticate(Some(&bearer)).await.unwrap();
        assert_eq!(who.actor.role, Role::Operator);
    }

    h.users
        .set_role(&admin, operator.user_id, "viewer")
        .await
        .unwrap();
    for replica in &replicas {
        let who = replica.authenticate(Some(&bearer)).await.unwrap();
        assert_eq!(who.actor.role, Role::Viewer, "no cached operator role");
    }

    h.users.delete_user(&admin, operator.user_id).await.unwrap();
    for replica in &replicas {
        // The user's tokens go with them (or, in a store that keeps them, their user is gone).
        let why = refusal(replica.authenticate(Some(&bearer)).await);
        assert!(
            matches!(why, Refusal::Unknown | Refusal::UserDisabled),
            "{why:?}"
        );
    }
}

/// When the shared epoch cannot be read, nothing cached is trusted: each call is decided from
/// the store (and still answered).
#[tokio::test]
async fn an_unreadable_access_epoch_means_every_call_is_decided_from_the_store() {
    let h = Harness::new();
    let mut epoch = MockAccessEpoch::new();
    epoch.expect_current().returning(|| {
        Err(AccessError::Unavailable {
            message: "down".into(),
        })
    });
    let blind = Authenticator::new(
        &h.repositories,
        Arc::new(InsecureTestPasswordHasher),
        Arc::new(epoch),
        h.clock.clone(),
        AuthSettings::default(),
    );
    let admin = h.tenant("a", Role::Admin).await;
    let operator = h.tenant_user(&admin, "op", Role::Operator).await;
    let issued = blind
        .create_token(&operator, "ci", None, None)
        .await
        .unwrap();
    let bearer = format!("Bearer {}", issued.secret.expose());
    assert_eq!(
        blind.authenticate(Some(&bearer)).await.unwrap().actor.role,
        Role::Operator
    );
    // The role changes in the store without the epoch moving (it cannot be reached).
    let mut user = h
        .repositories
        .users
        .get(operator.organization_id, operator.user_id)
        .await
        .unwrap();
    user.role = Role::Viewer;
    h.repositories.users.update(&user).await.unwrap();
    assert_eq!(
        blind.authenticate(Some(&bearer)).await.unwrap().actor.role,
        Role::Viewer
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_even_from_the_cache() {
    let h = Harness::new();
    let auth = authenticator(&h);
    let admin = h.tenant("a", Role::Admin).await;
    let issued = auth
        .create_token(&admin, "short", None, Some(Duration::from_secs(2)))
        .await
        .unwrap();
    auth.authenticate(Some(issued.secret.expose()))
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(2));
    assert!(matches!(
        refusal(auth.authenticate(Some(issued.secret.expose())).await),
        Refusal::Refused(_)
    ));
}

#[tokio::test]
async fn only_an_admin_revokes_another_users_token() {
    let h = Harness::new();
    let auth = authenticator(&h);
    let admin = h.tenant("a", Role::Admin).await;
    let admins_token = auth.create_token(&admin, "ci", None, None).await.unwrap();
    let viewer = Actor {
        role: Role::Viewer,
        user_id: h
            .users
            .create_user(
                &admin,
                NewUser {
                    email: "v@a.example".into(),
                    display_name: "v".into(),
                    role: "viewer".into(),
                    password: None,
                },
            )
            .await
            .unwrap()
            .id,
        organization_id: admin.organization_id,
    };
    assert_eq!(
        auth.revoke_token(&viewer, admins_token.token.id).await,
        Err(UseCaseError::NotFound { entity: "token" })
    );
    assert!(
        auth.authenticate(Some(admins_token.secret.expose()))
            .await
            .is_ok()
    );
    // Another organization's admin cannot either.
    let other = h.tenant("b", Role::Admin).await;
    assert!(
        auth.revoke_token(&other, admins_token.token.id)
            .await
            .is_err()
    );
    assert!(
        auth.authenticate(Some(admins_token.secret.expose()))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn sign_in_issues_a_session_token_and_refuses_alike_for_unknown_emails() {
    let h = Harness::new();
    let auth = authenticator(&h);
    // UserAdmin hashes the password with the harness's hasher; the authenticator verifies it.
    let (org, user) = h
        .users
        .create_organization(
            "org",
            NewUser {
                email: "Ada@Lab.example".into(),
                display_name: "Ada".into(),
                role: "admin".into(),
                password: Some("correct horse battery".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        refusal(
            auth.sign_in("ada@lab.example", "wrong password!", None)
                .await
        ),
        Refusal::BadPassword
    );
    assert_eq!(
        refusal(
            auth.sign_in("nobody@lab.example", "correct horse battery", None)
                .await
        ),
        Refusal::BadPassword
    );
    let session = auth
        .sign_in("ada@lab.example", "correct horse battery", None)
        .await
        .unwrap();
    let who = auth
        .authenticate(Some(session.secret.expose()))
        .await
        .unwrap();
    assert_eq!(
        (who.actor.user_id, who.actor.organization_id),
        (user.id, org.id)
    );
    assert_eq!(who.actor.role, Role::Admin);
    h.clock.advance(AuthSettings::default().session_ttl);
    assert!(matches!(
        refusal(auth.authenticate(Some(session.secret.expose())).await),
        Refusal::Refused(_)
    ));
}

/// One person, accounts in two labs: each lab's admin added the same address without learning
/// of the other; signing in names the lab, or is told to when the password fits both.
#[tokio::test]
async fn an_address_with_accounts_in_two_organizations_signs_in_to_the_one_it_names() {
    let h = Harness::new();
    let auth = authenticator(&h);
    let mut accounts = Vec::new();
    for lab in ["Lab A", "Lab B"] {
        let (org, _) = h
            .users
            .create_organization(
                lab,
                NewUser {
                    email: format!("admin@{}.example", lab.replace(' ', "-")),
                    display_name: "admin".into(),
                    role: "admin".into(),
                    password: None,
                },
            )
            .await
            .unwrap();
        let admin = Actor {
            user_id: h
                .repositories
                .users
                .list(org.id, Default::default())
                .await
                .unwrap()
                .items[0]
                .id,
            organization_id: org.id,
            role: Role::Admin,
        };
        // The second lab's admin is not told the address exists elsewhere.
        let user = h
            .users
            .create_user(
                &admin,
                NewUser {
                    email: "Ada@Lab.example".into(),
                    display_name: "Ada".into(),
                    role: if lab == "Lab A" { "operator" } else { "viewer" }.into(),
                    password: Some("correct horse battery".into()),
                },
            )
            .await
            .unwrap();
        // Within one lab the address stays unique.
        assert_eq!(
            h.users
                .create_user(
                    &admin,
                    NewUser {
                        email: "ada@lab.example".into(),
                        display_name: "Ada again".into(),
                        role: "viewer".into(),
                        password: None,
                    },
                )
                .await
                .unwrap_err(),
            UseCaseError::Duplicate {
                entity: "user",
                field: "email"
            }
        );
        accounts.push((org, user));
    }
    let (a, b) = (&accounts[0], &accounts[1]);

    // The password fits both accounts: the caller must choose, and is told the choices.
    match auth
        .sign_in("ada@lab.example", "correct horse battery", None)
        .await
    {
        Err(SignInError::ChooseOrganization(choices)) => {
            let mut names: Vec<&str> = choices.iter().map(|c| c.name.as_str()).collect();
            names.sort_unstable();
            assert_eq!(names, ["Lab A", "Lab B"]);
        }
        other => panic!("expected a choice of organization, got {other:?}"),
    }
    // A wrong password never reveals the organizations.
    assert_eq!(
        refusal(
            auth.sign_in("ada@lab.example", "wrong password!", None)
                .await
        ),
        Refusal::BadPassword
    );
    // By name and by id.
    for (named, (org, user)) in [("Lab B", b), (a.0.id.to_string().as_str(), a)] {
        let session = auth
            .sign_in("ada@lab.example", "correct horse battery", Some(named))
            .await
            .unwrap();
        let who = auth
            .authenticate(Some(session.secret.expose()))
            .await
            .unwrap();
        assert_eq!(
            (who.actor.organization_id, who.actor.user_id, who.actor.role),
            (org.id, user.id, user.role)
        );
    }
    // An organization the address has no account in is the same refusal as a bad password.
    assert_eq!(
        refusal(
            auth.sign_in("ada@lab.example", "correct horse battery", Some("Lab C"))
                .await
        ),
        Refusal::BadPassword
    );

    // With a different password in Lab B, the password alone picks Lab A.
    let mut in_b = b.1.clone();
    in_b.password_hash = Some("another password entirely".into());
    h.repositories.users.update(&in_b).await.unwrap();
    let session = auth
        .sign_in("ada@lab.example", "correct horse battery", None)
        .await
        .unwrap();
    assert_eq!(session.token.organization_id, a.0.id);
}
