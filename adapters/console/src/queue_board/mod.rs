//! The queue on the console: apalis-board (its axum API and its bundled UI) mounted under
//! [`QUEUE_PATH`], for installation operators only, because poll jobs span organizations.
//!
//! - Access: a console session whose user is one of the installation's operators (the
//!   embedded mode's first admin; in the distributed mode, `--installation-operators`).
//!   Anyone else signed in gets 403; nobody signed in is sent to the sign-in page (the API: 401).
//! - Read-only: the board's task-pushing route (and any other method than GET) answers 403
//!   before it reaches the backend, which refuses pushes as well.
//! - The UI is a prebuilt WASM app that expects the site root (its API at `/api/v1`, its routes
//!   at `/`). [`BoardUi`] rewrites it once at start for the sub-path: `index.html`'s base and
//!   asset paths, and the wasm-bindgen glue, whose location, history, request and event-source
//!   calls go through a small shim that adds or strips the mount path. Each rewrite must match
//!   exactly where expected, so an upgraded UI that no longer fits fails the unit test, not a
//!   browser (at start, a rewrite that does not fit logs an error and leaves the view off).
//! - Its own Content-Security-Policy: the inline module's hash and `'wasm-unsafe-eval'` for
//!   scripts, and style attributes (the app sizes bars and hides panels with computed `style`
//!   attributes; style elements and sheets stay `'self'`) beyond the console's policy.

mod backend;

use apalis_board_api::framework::{ApiBuilder, RegisterRoute};
use apalis_board_api::ui::ServeUI;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use base64::Engine as _;
use chamberlain_domain::model::UserId;
use serde_json::Value;
use sha2::Digest as _;
use std::collections::HashSet;
use std::convert::Infallible;

pub use backend::{BoardBackend, BoardError, QUEUE_NAME};

use crate::Console;
use crate::pages::error_page;

/// Where the queue view lives.
pub const QUEUE_PATH: &str = "/console/queue";

/// The queue view's settings: what it shows, and who may see it.
#[derive(Clone)]
pub struct QueueBoardSettings {
    pub backend: BoardBackend,
    /// The installation's operators, by user id.
    pub operators: HashSet<UserId>,
}

impl std::fmt::Debug for QueueBoardSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueBoardSettings")
            .field("operators", &self.operators.len())
            .finish_non_exhaustive()
    }
}

/// The board's UI rewritten for [`QUEUE_PATH`].
#[derive(Debug)]
pub(crate) struct BoardUi {
    index: String,
    glue_name: String,
    glue: String,
    csp: HeaderValue,
}

/// What the glue's calls go through: paths the app thinks are at the root get the mount path,
/// and the location it reads has it stripped.
const SHIM: &str = r#"const chamberlainMount = (() => {
  const base = "MOUNT";
  const strip = (path) => path === base ? "/" : path.startsWith(base + "/") ? path.slice(base.length) : path;
  const url = (u) => (typeof u === "string" && u.startsWith("/") && !u.startsWith("//") && strip(u) === u) ? base + u : u;
  const location = (real) => new Proxy(real, {
    get(target, prop) {
      if (prop === "pathname") return strip(target.pathname);
      if (prop === "href") { const u = new URL(target.href); u.pathname = strip(u.pathname); return u.href; }
      const value = target[prop];
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return { url, location };
})();
"#;

/// `(find, replace)`: each `find` must occur in the glue exactly `count` times.
const GLUE_REWRITES: &[(&str, &str, usize)] = &[
    (
        "const ret = arg0.location;",
        "const ret = chamberlainMount.location(arg0.location);",
        1,
    ),
    (
        "arg0.pushState(arg1, getStringFromWasm0(arg2, arg3), arg4 === 0 ? undefined : getStringFromWasm0(arg4, arg5));",
        "arg0.pushState(arg1, getStringFromWasm0(arg2, arg3), arg4 === 0 ? undefined : chamberlainMount.url(getStringFromWasm0(arg4, arg5)));",
        1,
    ),
    (
        "arg0.replaceState(arg1, getStringFromWasm0(arg2, arg3), arg4 === 0 ? undefined : getStringFromWasm0(arg4, arg5));",
        "arg0.replaceState(arg1, getStringFromWasm0(arg2, arg3), arg4 === 0 ? undefined : chamberlainMount.url(getStringFromWasm0(arg4, arg5)));",
        1,
    ),
    (
        "new EventSource(getStringFromWasm0(arg0, arg1)",
        "new EventSource(chamberlainMount.url(getStringFromWasm0(arg0, arg1))",
        1,
    ),
    (
        "new Request(getStringFromWasm0(arg0, arg1)",
        "new Request(chamberlainMount.url(getStringFromWasm0(arg0, arg1))",
        2,
    ),
];

fn rewrite(
    text: &str,
    find: &str,
    replace: &str,
    count: usize,
    file: &str,
) -> Result<String, String> {
    let found = text.matches(find).count();
    if found != count {
        return Err(format!(
            "apalis-board's {file} does not fit the console's mount: `{find}` occurs {found} times, expected {count}"
        ));
    }
    Ok(text.replace(find, replace))
}

fn file_text(name: &str) -> Result<String, String> {
    ServeUI::get_file(name)
        .and_then(|f| f.contents_utf8())
        .map(str::to_owned)
        .ok_or_else(|| format!("apalis-board's UI has no {name}"))
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

impl BoardUi {
    /// Rewrites the bundled UI for `mount`.
    ///
    /// # Errors
    /// The UI does not have the shape the rewrite expects (another apalis-board release).
    pub(crate) fn prepare(mount: &str) -> Result<Self, String> {
        let index = file_text("index.html")?;
        let glue_name = between(&index, "from '/", "'")
            .ok_or("apalis-board's index.html imports no module")?
            .to_owned();
        let mut body = file_text(&glue_name)?;
        for (find, replace, count) in GLUE_REWRITES {
            body = rewrite(&body, find, replace, *count, &glue_name)?;
        }
        let glue = format!("{}{body}", SHIM.replace("MOUNT", mount));
        let glue_hash =
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha384::digest(&glue));
        let mut index = index;
        for (find, count) in [("href=\"/", 4), ("from '/", 1), ("module_or_path: '/", 1)] {
            let replace = find.replace('/', &format!("{mount}/"));
            index = rewrite(&index, find, &replace, count, "index.html")?;
        }
        let old_integrity = between(
            &index,
            &format!("href=\"{mount}/{glue_name}\" crossorigin=\"anonymous\" integrity=\""),
            "\"",
        )
        .ok_or("apalis-board's index.html preloads its module without an integrity")?
        .to_owned();
        index = rewrite(
            &index,
            &old_integrity,
            &format!("sha384-{glue_hash}"),
            1,
            "index.html",
        )?;
        let inline = between(&index, "<script type=\"module\">", "</script>")
            .ok_or("apalis-board's index.html has no inline module")?;
        let inline_hash =
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(inline));
        let csp = HeaderValue::from_str(&format!(
            "default-src 'none'; script-src 'self' 'sha256-{inline_hash}' 'wasm-unsafe-eval'; \
             style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
             form-action 'none'; frame-ancestors 'none'; base-uri 'self'"
        ))
        .map_err(|e| e.to_string())?;
        Ok(Self {
            index,
            glue_name,
            glue,
            csp,
        })
    }

    /// The answer for a path under the mount: an asset, or the app's page (it routes itself).
    fn answer(&self, path: &str) -> Response {
        let path = path.trim_start_matches('/');
        let (body, content_type, cache): (Vec<u8>, &str, Option<&str>) = if path == self.glue_name {
            (
                self.glue.clone().into_bytes(),
                ServeUI::content_type(path),
                ServeUI::cache_control(path),
            )
        } else if let Some(file) = ServeUI::get_file(path).filter(|_| path.contains('.'))
            && path != "index.html"
        {
            (
                file.contents().to_vec(),
                ServeUI::content_type(path),
                ServeUI::cache_control(path),
            )
        } else {
            (
                self.index.clone().into_bytes(),
                "text/html; charset=utf-8",
                None,
            )
        };
        let mut response = (StatusCode::OK, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(cache) = cache {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        }
        headers.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        response
    }
}

/// The queue view's routes (answering 404 when the console has no queue view).
pub(crate) fn routes(console: &Console) -> Router<Console> {
    let Some((settings, ui)) = console.inner.queue_board.clone() else {
        return Router::new();
    };
    let closing = console.inner.closing.clone();
    let events = get(move || events(closing.subscribe()));
    let api: Router = ApiBuilder::new(Router::new().route("/events", events))
        .register(QUEUE_NAME, settings.backend.clone())
        .build();
    let api = api.layer(axum::middleware::from_fn(read_only));
    let page = {
        let ui = ui.clone();
        move |request: Request| {
            let ui = ui.clone();
            async move {
                let path = request
                    .uri()
                    .path()
                    .strip_prefix(QUEUE_PATH)
                    .unwrap_or_default()
                    .to_owned();
                ui.answer(&path)
            }
        }
    };
    Router::new()
        .route(
            QUEUE_PATH,
            get(|| async { Redirect::to(&format!("{QUEUE_PATH}/")) }),
        )
        .route(&format!("{QUEUE_PATH}/"), get(page.clone()))
        .route(&format!("{QUEUE_PATH}/{{*path}}"), get(page))
        .nest_service(&format!("{QUEUE_PATH}/api/v1"), api)
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            operators_only,
        ))
}

/// The board's log stream. apalis-board streams its own process's tracing events; the
/// console's process runs no worker, so there is nothing to stream: the stream stays open
/// (with keep-alives, so the board shows its backend as reachable) until the console stops.
async fn events(
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> axum::response::sse::Sse<
    impl tokio_stream::Stream<Item = Result<axum::response::sse::Event, Infallible>>,
> {
    let until_closed = async move {
        let _ = closing.wait_for(|closed| *closed).await;
    };
    let stream =
        futures_util::StreamExt::filter_map(futures_util::stream::once(until_closed), |()| async {
            None::<Result<axum::response::sse::Event, Infallible>>
        });
    axum::response::sse::Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default())
}

/// Only installation operators pass.
async fn operators_only(State(console): State<Console>, request: Request, next: Next) -> Response {
    let api = request
        .uri()
        .path()
        .starts_with(&format!("{QUEUE_PATH}/api/"));
    let session = match console.session(request.headers()).await {
        Ok(session) => session,
        // No session: the page asks to sign in, the API says 401; anything else (sign-ins
        // cannot be checked now) is passed on as it is.
        Err(refused) if api && refused.status().is_redirection() => {
            return (StatusCode::UNAUTHORIZED, "sign in to the console first").into_response();
        }
        Err(refused) => return refused,
    };
    let allowed = console
        .inner
        .queue_board
        .as_ref()
        .is_some_and(|(settings, _)| settings.operators.contains(&session.identity.actor.user_id));
    if !allowed {
        let message = "The queue view shows every organization's polls: only the installation's \
                       operators may open it.";
        return if api {
            (StatusCode::FORBIDDEN, message).into_response()
        } else {
            error_page(StatusCode::FORBIDDEN, "Not allowed", message)
        };
    }
    next.run(request).await
}

/// The board's API only looks: any method but GET (its task-pushing PUT) is refused.
async fn read_only(request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let body = serde_json::json!({
        "error": "the queue view is read-only: polls are enqueued by the scheduler"
    });
    (StatusCode::FORBIDDEN, axum::Json::<Value>(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_ui_is_rewritten_for_the_mount_path() {
        let ui = BoardUi::prepare(QUEUE_PATH).unwrap();
        assert!(
            ui.index.contains("<base href=\"/console/queue/\""),
            "{}",
            ui.index
        );
        assert!(
            ui.index
                .contains(&format!("from '/console/queue/{}'", ui.glue_name))
        );
        assert!(!ui.index.contains("href=\"/apalis") && !ui.index.contains("href=\"/input"));
        assert!(ui.glue.starts_with("const chamberlainMount"));
        assert_eq!(ui.glue.matches("chamberlainMount.url(").count(), 5);
        // The preload's integrity is the rewritten glue's.
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha384::digest(&ui.glue));
        assert!(ui.index.contains(&format!("integrity=\"sha384-{hash}\"")));
        let csp = ui.csp.to_str().unwrap();
        assert!(
            csp.contains("'wasm-unsafe-eval'") && csp.contains("'sha256-"),
            "{csp}"
        );
    }

    #[test]
    fn a_ui_of_another_shape_is_refused_with_the_pattern_named() {
        let err = rewrite("nothing here", "arg0.location", "x", 1, "glue.js").unwrap_err();
        assert!(
            err.contains("arg0.location") && err.contains("0 times"),
            "{err}"
        );
    }
}
