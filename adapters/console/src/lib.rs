#![doc = include_str!("../README.md")]

mod accounts;
mod assets;
mod charts;
mod download;
mod forms;
mod import;
mod live;
mod pages;
mod queue_board;
mod sections;
mod session;
mod transmitters;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use chamberlain_domain::ports::{Clock, Rate, RateLimiter};
use chamberlain_domain::usecases::ApiUseCases;

pub use queue_board::{BoardBackend, BoardError, QUEUE_NAME, QUEUE_PATH, QueueBoardSettings};
pub use session::SESSION_COOKIE;

/// Where the console lives: every page and asset is under this path.
pub const CONSOLE_PATH: &str = "/console";

/// Settings of the console.
#[derive(Clone)]
pub struct ConsoleSettings {
    /// Secret of the CSRF tokens (each is an HMAC of the session token under it); at least 32
    /// bytes (the installation's identity key, or random per process in the embedded mode).
    pub csrf_key: Vec<u8>,
    /// Marks the session cookie `Secure` (the console is reached over HTTPS).
    pub secure_cookies: bool,
    /// Sign-in attempts per client address (in memory in the embedded mode, shared in Redis
    /// in the distributed one); beyond, the form answers 429 without checking the password.
    pub sign_in_limit: Option<(Arc<dyn RateLimiter>, Rate)>,
    /// The queue on the console (apalis-board at [`QUEUE_PATH`]), for installation operators;
    /// `None`: no queue view.
    pub queue_board: Option<QueueBoardSettings>,
}

impl std::fmt::Debug for ConsoleSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSettings")
            .field("secure_cookies", &self.secure_cookies)
            .field(
                "sign_in_limit",
                &self.sign_in_limit.as_ref().map(|(_, rate)| rate),
            )
            .field("queue_board", &self.queue_board)
            .finish_non_exhaustive()
    }
}

/// The console: a driving adapter beside the gRPC one, calling the same use cases. It renders
/// pages on the server; it has no business rule of its own.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    api: ApiUseCases,
    clock: Arc<dyn Clock>,
    settings: ConsoleSettings,
    /// The queue view and its UI rewritten for its path, when the console has one.
    queue_board: Option<(QueueBoardSettings, Arc<queue_board::BoardUi>)>,
    /// Set when the server stops: live streams end, so a graceful shutdown is not held up by
    /// a browser that keeps a page open.
    closing: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Console {
    pub fn new(api: ApiUseCases, clock: Arc<dyn Clock>, settings: ConsoleSettings) -> Self {
        // The UI is compiled in and its rewrite is tested, so this fails only in a build whose
        // tests failed; then the console runs without its queue view.
        let queue_board = settings.queue_board.clone().and_then(|board| {
            match queue_board::BoardUi::prepare(QUEUE_PATH) {
                Ok(ui) => Some((board, Arc::new(ui))),
                Err(e) => {
                    tracing::error!(error = %e, "the queue view is off");
                    None
                }
            }
        });
        Self {
            inner: Arc::new(Inner {
                api,
                clock,
                settings,
                queue_board,
                closing: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// The console's routes, all under [`CONSOLE_PATH`], with its security headers on every
    /// answer; `/` redirects to it.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(pages::to_console))
            .route(CONSOLE_PATH, get(pages::to_console))
            .route("/console/", get(pages::overview))
            .route(
                "/console/sign-in",
                get(pages::sign_in_form).post(pages::sign_in),
            )
            .route("/console/sign-out", post(pages::sign_out))
            .route("/console/chambers/{id}", get(pages::chamber))
            .route("/console/chambers/{id}/interval", post(pages::set_interval))
            .route("/console/chambers/{id}/pause", post(pages::pause))
            .route("/console/chambers/{id}/resume", post(pages::resume))
            .route("/console/chambers/{id}/settings", post(pages::set_settings))
            .route("/console/chambers/{id}/series", get(charts::series))
            .route(
                "/console/chambers/{id}/readings.csv",
                get(download::chamber_csv),
            )
            .route(
                "/console/sections",
                get(sections::sections).post(sections::create_section),
            )
            .route(
                "/console/sections/{id}/rename",
                post(sections::rename_section),
            )
            .route(
                "/console/sections/{id}/delete",
                post(sections::delete_section),
            )
            .route(
                "/console/sections/{id}/readings.csv",
                get(download::section_csv),
            )
            .route(
                "/console/users",
                get(accounts::users).post(accounts::add_user),
            )
            .route("/console/users/{id}/role", post(accounts::set_role))
            .route("/console/users/{id}/delete", post(accounts::delete_user))
            .route("/console/account/name", post(accounts::set_own_name))
            .route("/console/tokens", post(accounts::create_token))
            .route("/console/tokens/{id}/revoke", post(accounts::revoke_token))
            .route(
                "/console/import",
                get(import::import_form).post(import::import).layer(
                    axum::extract::DefaultBodyLimit::max(import::MAX_IMPORT_BYTES),
                ),
            )
            .route(
                "/console/transmitters",
                get(transmitters::transmitters).post(transmitters::create_transmitter),
            )
            .route("/console/transmitters/{id}", get(transmitters::transmitter))
            .route(
                "/console/transmitters/{id}/delete",
                post(transmitters::delete_transmitter),
            )
            .route("/console/batches", post(sections::start_batch))
            .route("/console/batches/{id}", get(sections::batch))
            .route("/console/batches/{id}/end", post(sections::end_batch))
            .route(
                "/console/batches/{id}/readings.csv",
                get(download::batch_csv),
            )
            .route(
                "/console/chambers/{id}/health-policy",
                post(pages::set_health_policy),
            )
            .route(
                "/console/chambers/{id}/detectors",
                post(pages::add_detector),
            )
            .route(
                "/console/chambers/{id}/detectors/{detector}",
                post(pages::update_detector),
            )
            .route(
                "/console/chambers/{id}/detectors/{detector}/delete",
                post(pages::remove_detector),
            )
            .route("/console/chambers/{id}/rules", post(pages::add_rule))
            .route(
                "/console/chambers/{id}/rules/{rule}/delete",
                post(pages::delete_rule),
            )
            .route("/console/alerts", get(pages::alerts))
            .route("/console/alerts/{id}/acknowledge", post(pages::acknowledge))
            .route("/console/static/{name}", get(assets::asset))
            .route("/console/live", get(live::live))
            .merge(queue_board::routes(self))
            .fallback(pages::not_found)
            .with_state(self.clone())
            .layer(axum::middleware::map_response(session::security_headers))
    }

    /// Ends every live stream (as [`Console::serve`] does when its shutdown comes).
    pub fn close_live_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Serves the console, and the routes of `beside` (the embedded mode's JSON API), on
    /// `listener` until `shutdown` resolves; then live streams end and requests in flight
    /// finish.
    ///
    /// # Errors
    /// The listener's error.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        beside: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(
            listener,
            self.router()
                .merge(beside)
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown({
            let console = self.clone();
            async move {
                shutdown.await;
                console.close_live_streams();
            }
        })
        .await
    }
}
