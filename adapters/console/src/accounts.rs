//! Users and tokens: everyone's own name and API tokens; for admins, the organization's users
//! (added, their role changed, deleted) and every token. A new token's secret is shown once, on
//! the page that answers its creation. The same use cases as the API.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chamberlain_domain::model::{ApiTokenId, PageRequest, PageSize, Role, UserId};
use chamberlain_domain::usecases::{NewUser, UseCaseError};
use serde::Deserialize;

use crate::Console;
use crate::forms::{Change, after_form};
use crate::pages::{Nav, Session, refusal, render};

struct UserRow {
    id: String,
    email: String,
    name: String,
    role: String,
    is_me: bool,
}

struct TokenRow {
    id: String,
    name: String,
    owner: String,
    role: String,
    created: String,
    expires: String,
    last_used: String,
    revoked: Option<String>,
}

/// What was typed into a refused form, shown again.
#[derive(Default)]
struct Typed {
    /// `user`, `token` or `name`.
    form: &'static str,
    email: String,
    name: String,
    role: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    nav: Nav,
    is_admin: bool,
    my_name: String,
    error: Option<String>,
    typed: Typed,
    /// A token just created: its name and secret, shown this once.
    issued: Option<(String, String)>,
    users: Vec<UserRow>,
    tokens: Vec<TokenRow>,
    roles: [&'static str; 3],
}

async fn users_page(
    console: &Console,
    session: &Session,
    error: Option<String>,
    typed: Typed,
    issued: Option<(String, String)>,
) -> Result<UsersPage, UseCaseError> {
    let api = &console.inner.api;
    let actor = &session.identity.actor;
    let me = api.users.who_am_i(actor).await?;
    let is_admin = actor.role >= Role::Admin;
    let all = PageRequest::first(PageSize::new(1000).unwrap_or_default());
    let users = if is_admin {
        api.users.list_users(actor, all).await?.items
    } else {
        vec![me.clone()]
    };
    let emails: std::collections::HashMap<UserId, String> = users
        .iter()
        .map(|u| (u.id, u.email.as_str().to_owned()))
        .collect();
    let tokens = api
        .auth
        .list_tokens(
            actor,
            PageRequest::first(PageSize::new(1000).unwrap_or_default()),
        )
        .await?
        .items;
    Ok(UsersPage {
        nav: session.nav(),
        is_admin,
        my_name: me.display_name.as_str().to_owned(),
        error,
        typed,
        issued,
        users: if is_admin {
            users
                .iter()
                .map(|u| UserRow {
                    id: u.id.to_string(),
                    email: u.email.as_str().to_owned(),
                    name: u.display_name.as_str().to_owned(),
                    role: u.role.to_string(),
                    is_me: u.id == actor.user_id,
                })
                .collect()
        } else {
            Vec::new()
        },
        tokens: tokens
            .into_iter()
            .map(|t| TokenRow {
                id: t.id.to_string(),
                name: t.name.as_str().to_owned(),
                owner: emails.get(&t.user_id).cloned().unwrap_or_default(),
                role: t.role_cap.to_string(),
                created: t.created_at.to_string(),
                expires: t
                    .expires_at
                    .map_or_else(|| "never".into(), |e| e.to_string()),
                last_used: t
                    .last_used_at
                    .map_or_else(|| "never".into(), |e| e.to_string()),
                revoked: t.revoked_at.map(|r| r.to_string()),
            })
            .collect(),
        roles: ["viewer", "operator", "admin"],
    })
}

pub(crate) async fn users(State(console): State<Console>, headers: HeaderMap) -> Response {
    let session = match console.session(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    match users_page(&console, &session, None, Typed::default(), None).await {
        Ok(page) => render(&page),
        Err(e) => refusal(&e),
    }
}

/// After a change: back to the page, or the page again with the reason and what was typed.
async fn after_change(
    console: &Console,
    session: &Session,
    result: Result<(), UseCaseError>,
    typed: Typed,
) -> Response {
    after_form(result, "/console/users", async |reason| {
        users_page(console, session, Some(reason), typed, None).await
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct AccountForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
    /// A token's lifetime in days; empty for none.
    #[serde(default)]
    expires_days: String,
}

crate::forms::csrf_forms!(AccountForm);

pub(crate) async fn add_user(
    State(console): State<Console>,
    Change { session, form }: Change<AccountForm>,
) -> Response {
    let new = NewUser {
        email: form.email.clone(),
        display_name: form.name.clone(),
        role: form.role.clone(),
        password: Some(form.password).filter(|p| !p.is_empty()),
    };
    let users = &console.inner.api.users;
    let result = users
        .create_user(&session.identity.actor, new)
        .await
        .map(drop);
    let typed = Typed {
        form: "user",
        email: form.email,
        name: form.name,
        role: form.role,
    };
    after_change(&console, &session, result, typed).await
}

fn user_id(raw: &str) -> Result<UserId, UseCaseError> {
    UserId::parse(raw).map_err(|_| UseCaseError::NotFound { entity: "user" })
}

pub(crate) async fn set_role(
    State(console): State<Console>,
    Path(id): Path<String>,
    Change { session, form }: Change<AccountForm>,
) -> Response {
    let users = &console.inner.api.users;
    let result = match user_id(&id) {
        Ok(id) => users
            .set_role(&session.identity.actor, id, &form.role)
            .await
            .map(drop),
        Err(e) => Err(e),
    };
    after_change(&console, &session, result, Typed::default()).await
}

pub(crate) async fn delete_user(
    State(console): State<Console>,
    Path(id): Path<String>,
    Change { session, .. }: Change<AccountForm>,
) -> Response {
    let users = &console.inner.api.users;
    let result = match user_id(&id) {
        Ok(id) => users.delete_user(&session.identity.actor, id).await,
        Err(e) => Err(e),
    };
    after_change(&console, &session, result, Typed::default()).await
}

pub(crate) async fn set_own_name(
    State(console): State<Console>,
    Change { session, form }: Change<AccountForm>,
) -> Response {
    let users = &console.inner.api.users;
    let result = users
        .set_own_display_name(&session.identity.actor, &form.name)
        .await
        .map(drop);
    let typed = Typed {
        form: "name",
        name: form.name,
        ..Typed::default()
    };
    after_change(&console, &session, result, typed).await
}

/// Creates a token for the caller and answers the page with its secret, this once.
pub(crate) async fn create_token(
    State(console): State<Console>,
    Change { session, form }: Change<AccountForm>,
) -> Response {
    let typed = Typed {
        form: "token",
        name: form.name.clone(),
        role: form.role.clone(),
        ..Typed::default()
    };
    let expires_in = match form.expires_days.trim() {
        "" => None,
        days => match days.parse::<u64>() {
            Ok(d) if d > 0 => Some(std::time::Duration::from_secs(d * 86_400)),
            _ => {
                let e = crate::pages::invalid("expires_days", "a whole number of days, at least 1");
                return after_change(&console, &session, Err(e), typed).await;
            }
        },
    };
    let issued = console
        .inner
        .api
        .auth
        .create_token(
            &session.identity.actor,
            &form.name,
            Some(form.role.as_str()),
            expires_in,
        )
        .await;
    match issued {
        Ok(issued) => {
            let shown = (
                issued.token.name.as_str().to_owned(),
                issued.secret.expose().to_owned(),
            );
            match users_page(&console, &session, None, Typed::default(), Some(shown)).await {
                Ok(page) => {
                    let mut response = render(&page);
                    // The secret is on this page only: never kept by a cache.
                    response.headers_mut().insert(
                        axum::http::header::CACHE_CONTROL,
                        axum::http::HeaderValue::from_static("no-store"),
                    );
                    response
                }
                Err(e) => refusal(&e),
            }
        }
        Err(e) => after_change(&console, &session, Err(e), typed).await,
    }
}

pub(crate) async fn revoke_token(
    State(console): State<Console>,
    Path(id): Path<String>,
    Change { session, .. }: Change<AccountForm>,
) -> Response {
    let auth = &console.inner.api.auth;
    let result = match ApiTokenId::parse(&id) {
        Ok(id) => auth.revoke_token(&session.identity.actor, id).await,
        Err(_) => Err(UseCaseError::NotFound { entity: "token" }),
    };
    after_change(&console, &session, result, Typed::default()).await
}
