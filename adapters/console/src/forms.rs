//! What every state-changing form shares: the request is checked (same origin, a session, the
//! form's CSRF token) before its handler runs, and a refusal the user can fix shows the page
//! again with the reason and what was typed.

use askama::Template;
use axum::Form;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chamberlain_domain::usecases::UseCaseError;
use serde::de::DeserializeOwned;

use crate::Console;
use crate::pages::{Session, refusal, render};

/// A form that carries the page's CSRF token.
pub(crate) trait CsrfForm {
    fn csrf(&self) -> &str;
}

/// Implements [`CsrfForm`] for form structs with a `csrf` field.
macro_rules! csrf_forms {
    ($($form:ty),* $(,)?) => {
        $(impl $crate::forms::CsrfForm for $form {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        })*
    };
}
pub(crate) use csrf_forms;

/// A checked state-changing request: the caller's session and the form they sent. Extracting
/// it answers a request from another origin, without a session or with a wrong token with a
/// refusal page, so a handler only sees requests it may act on.
pub(crate) struct Change<F> {
    pub(crate) session: Session,
    pub(crate) form: F,
}

impl<F> FromRequest<Console> for Change<F>
where
    F: DeserializeOwned + CsrfForm + Send,
{
    type Rejection = Response;

    async fn from_request(request: Request, console: &Console) -> Result<Self, Response> {
        let headers = request.headers().clone();
        let Form(form) = Form::<F>::from_request(request, console)
            .await
            .map_err(IntoResponse::into_response)?;
        let session = console.session_for_change(&headers, form.csrf()).await?;
        Ok(Self { session, form })
    }
}

/// The answer to a form: on success, a redirect to `done`; for a refusal the user can fix
/// (invalid input, a name taken, a state that does not allow it), the page again from
/// `page_again(reason)` with 400 or 409; any other refusal as its own page.
pub(crate) async fn after_form<P: Template>(
    result: Result<(), UseCaseError>,
    done: &str,
    page_again: impl AsyncFnOnce(String) -> Result<P, UseCaseError>,
) -> Response {
    match result {
        Ok(()) => Redirect::to(done).into_response(),
        Err(
            e @ (UseCaseError::Invalid(_)
            | UseCaseError::Duplicate { .. }
            | UseCaseError::FailedPrecondition(_)),
        ) => match page_again(e.to_string()).await {
            Ok(page) => {
                let mut response = render(&page);
                *response.status_mut() = if matches!(e, UseCaseError::Invalid(_)) {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::CONFLICT
                };
                response
            }
            Err(e) => refusal(&e),
        },
        Err(e) => refusal(&e),
    }
}
