//! The console in a real headless Chromium (Debian's, driven by playwright-core from
//! `tests/browser`), against `chamberlain standalone --simulate 3` and against the distributed
//! mode through Envoy: the script
//! `tests/browser/console.mjs` signs in, watches the overview go live, changes an interval and
//! sees it in the ledger, tries a cross-site post and a viewer's forged edit, and signs out. Its
//! screenshots are kept in `target/browser-screenshots/{standalone,envoy}/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chamberlain_domain::model::Role;
use chamberlain_simulator::{Format, Simulator, SimulatorConfig};
use chamberlain_tests::api_stack::{Stack, StackOptions};
use tonic::transport::Channel;

use chamberlain_proto::v1::{
    self, alert_service_client::AlertServiceClient, chamber_service_client::ChamberServiceClient,
    user_service_client::UserServiceClient,
};
use chamberlain_tests::api_stack::free_port;
use chamberlain_tests::chamberlain_bin;

use crate::api::{authed, section};
use crate::standalone::{Standalone, connect, free_port_on_127_0_0_2, start_simulating};

const VIEWER_EMAIL: &str = "viewer@lab.example";
const VIEWER_PASSWORD: &str = "correct horse battery";
const ADMIN_PASSWORD: &str = "battery staple horse";

/// Where the script signs in, and what it finds there.
struct ConsoleUnderTest {
    /// The console's origin (`http://127.0.0.1:port`).
    origin: String,
    admin_email: String,
    admin_password: String,
    /// A chamber with a "down" alert rule, which the script makes fail.
    failing_chamber: String,
    /// A name for the screenshots' directory.
    label: &'static str,
}

fn chromium_and_script() -> (String, PathBuf, PathBuf) {
    let chromium = std::env::var("CHAMBERLAIN_TEST_CHROMIUM").unwrap_or_else(|_| {
        panic!("CHAMBERLAIN_TEST_CHROMIUM is not set: run the tests with scripts/test, which installs Debian's chromium")
    });
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let browser_dir = root.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in tests/browser: run the tests with scripts/test"
    );
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    (chromium, browser_dir, target.join("browser-screenshots"))
}

/// Runs `tests/browser/console.mjs` against `console` and fails the test with its output if it
/// fails.
async fn run_console_script(console: ConsoleUnderTest) {
    run_browser_script(
        "console.mjs",
        console.label,
        vec![
            ("CONSOLE", console.origin),
            ("ADMIN_EMAIL", console.admin_email),
            ("ADMIN_PASSWORD", console.admin_password),
            ("VIEWER_EMAIL", VIEWER_EMAIL.into()),
            ("VIEWER_PASSWORD", VIEWER_PASSWORD.into()),
            ("FAILING_CHAMBER", console.failing_chamber),
        ],
    )
    .await;
}

/// Runs `tests/browser/{script}` with `vars` (and the browser and screenshot directory) and fails
/// the test with its output if it fails.
async fn run_browser_script(
    script: &'static str,
    label: &'static str,
    vars: Vec<(&'static str, String)>,
) {
    let (chromium, browser_dir, shots) = chromium_and_script();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .current_dir(&browser_dir)
            .envs(vars)
            .env("CHROMIUM", chromium)
            .env("SCREENSHOTS", shots.join(label))
            .output()
    })
    .await
    .unwrap()
    .expect("node runs");
    assert!(
        output.status.success(),
        "the browser test {script} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `chamberlain standalone --simulate 3` in a fresh data directory, with its first start's
/// token and console password, for a browser script.
struct ConsoleStandalone {
    dir: PathBuf,
    standalone: Standalone,
    token: String,
    password: String,
    channel: Channel,
}

impl ConsoleStandalone {
    async fn start(label: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("chamberlain-{label}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let (api, sim) = (free_port(), free_port_on_127_0_0_2());
        let standalone = start_simulating(&chamberlain_bin(), &dir, api, sim, 3);
        let token = standalone
            .token
            .clone()
            .expect("the first start prints a token");
        let password = standalone
            .console_password
            .clone()
            .expect("the first start prints the console's password");
        let channel = connect(api).await;
        Self {
            dir,
            standalone,
            token,
            password,
            channel,
        }
    }

    /// The console's origin.
    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.standalone.http)
    }

    /// Stops the standalone, then removes its data directory.
    fn finish(self) {
        drop(self.standalone);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A "down after 1 s" alert rule on the chamber named `name`; returns the chamber's id.
async fn down_rule_on(channel: &Channel, token: &str, name: &str) -> String {
    let failing = ChamberServiceClient::new(channel.clone())
        .list_chambers(authed(v1::ListChambersRequest::default(), token))
        .await
        .unwrap()
        .into_inner()
        .chambers
        .into_iter()
        .find(|c| c.name == name)
        .expect("the chamber is registered");
    AlertServiceClient::new(channel.clone())
        .create_alert_rule(authed(
            v1::CreateAlertRuleRequest {
                chamber_id: failing.id.clone(),
                name: format!("{name} down"),
                condition: Some(v1::create_alert_rule_request::Condition::ChamberDown(
                    v1::ChamberDownCondition {
                        after: Some(prost_types::Duration {
                            seconds: 1,
                            nanos: 0,
                        }),
                    },
                )),
            },
            token,
        ))
        .await
        .expect("an alert rule is created");
    failing.id
}

/// Creates a user; returns its id.
async fn add_user(
    channel: &Channel,
    token: &str,
    email: &str,
    role: &str,
    password: &str,
) -> String {
    UserServiceClient::new(channel.clone())
        .create_user(authed(
            v1::CreateUserRequest {
                email: email.into(),
                display_name: role.into(),
                role: role.into(),
                password: password.into(),
            },
            token,
        ))
        .await
        .unwrap_or_else(|e| panic!("{role} {email} is created: {e}"))
        .into_inner()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_chromium() {
    chromium_and_script();
    let lab = ConsoleStandalone::start("browser").await;
    let (token, password, channel) = (lab.token.clone(), lab.password.clone(), lab.channel.clone());
    let failing_chamber = down_rule_on(&channel, &token, "sim-0000").await;
    add_user(&channel, &token, VIEWER_EMAIL, "viewer", VIEWER_PASSWORD).await;

    run_console_script(ConsoleUnderTest {
        origin: lab.origin(),
        admin_email: "admin@localhost".into(),
        admin_password: password,
        failing_chamber,
        label: "standalone",
    })
    .await;
    lab.finish();
}

/// An administrator runs the organization from the console (`tests/browser/admin.mjs`):
/// sections, a CSV import, a batch, tokens, a viewer, a webhook transmitter to a receiver the
/// script starts, and an export checked against the API's readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_runs_the_organization_from_chromium() {
    chromium_and_script();
    let lab = ConsoleStandalone::start("admin").await;
    let (token, password, channel) = (lab.token.clone(), lab.password.clone(), lab.channel.clone());
    let charted = ChamberServiceClient::new(channel.clone())
        .list_chambers(authed(v1::ListChambersRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .chambers
        .into_iter()
        .find(|c| c.name == "sim-0000")
        .expect("the simulated chambers are registered");

    run_browser_script(
        "admin.mjs",
        "admin",
        vec![
            ("CONSOLE", lab.origin()),
            ("ADMIN_EMAIL", "admin@localhost".into()),
            ("ADMIN_PASSWORD", password),
            ("ADMIN_TOKEN", token),
            ("CHAMBER_URL", charted.url.clone()),
            // The simulator's address, which `--simulate` lets the egress policy reach.
            ("RECEIVER_HOST", "127.0.0.2".into()),
            ("CHARTED_CHAMBER", charted.id),
        ],
    )
    .await;
    lab.finish();
}

/// The same script in the distributed mode: Envoy in front of a gateway (which serves the
/// console) and the auth service, with a scheduler, a worker and an alerter on PostgreSQL and
/// Redis, and three simulated chambers registered through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_chromium_through_envoy() {
    chromium_and_script();
    let sim = Simulator::start(
        SimulatorConfig::builder()
            .chambers(3)
            .detectors(8)
            .interval(Duration::from_secs(1))
            .bind(SocketAddr::from(([127, 0, 0, 2], free_port_on_127_0_0_2())))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let mut stack = Stack::start(StackOptions::default()).await;
    let channel = stack.channel().await;
    let (_, token) = stack.tenant("browser", Role::Admin).await;
    let section = section(&channel, &token, "simulated").await;
    for i in 0..3 {
        ChamberServiceClient::new(channel.clone())
            .create_chamber(authed(
                v1::CreateChamberRequest {
                    section_id: section.id.clone(),
                    name: format!("sim-{i:04}"),
                    url: sim.chamber_url(i, Format::Json),
                    format: "json".into(),
                    interval: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                    timeout: None,
                    detectors: (0..8)
                        .map(|j| v1::NewDetector {
                            name: format!("d{j}"),
                            key: format!("/detectors/{j}/value"),
                            ..Default::default()
                        })
                        .collect(),
                },
                &token,
            ))
            .await
            .expect("a simulated chamber is registered");
    }
    let failing_chamber = down_rule_on(&channel, &token, "sim-0000").await;
    let admin_email = "admin.console@browser.example";
    let operator = add_user(&channel, &token, admin_email, "admin", ADMIN_PASSWORD).await;
    add_user(&channel, &token, VIEWER_EMAIL, "viewer", VIEWER_PASSWORD).await;
    let org_admin = "orgadmin@browser.example";
    add_user(&channel, &token, org_admin, "admin", ADMIN_PASSWORD).await;
    let chambers = [("CHAMBERLAIN_EGRESS_ALLOW", "127.0.0.2/32")];
    stack.spawn("scheduler", &chambers);
    stack.spawn(
        "worker",
        &[
            ("CHAMBERLAIN_EGRESS_ALLOW", "127.0.0.2/32"),
            ("HOSTNAME", "envoy-test-worker"),
        ],
    );
    stack.spawn(
        "alerter",
        &[
            ("CHAMBERLAIN_EGRESS_ALLOW", "127.0.0.1/32"),
            ("CHAMBERLAIN_ALERTER_RELOAD_SECS", "1"),
        ],
    );

    run_console_script(ConsoleUnderTest {
        origin: format!("http://127.0.0.1:{}", stack.ports.envoy),
        admin_email: admin_email.into(),
        admin_password: ADMIN_PASSWORD.into(),
        failing_chamber,
        label: "envoy",
    })
    .await;

    // The queue view on the Redis queue, through Envoy: the console's admin becomes the
    // installation's operator (a gateway restarted with the setting).
    let (stuck, holding) = stuck_chamber(&channel, &token).await;
    let (started, _) = stack
        .restart_gateway_at_once(&[("CHAMBERLAIN_INSTALLATION_OPERATORS", operator)])
        .await;
    started.expect("the gateway restarts with its installation operators");
    run_browser_script(
        "queue.mjs",
        "queue-envoy",
        vec![
            ("CONSOLE", format!("http://127.0.0.1:{}", stack.ports.envoy)),
            ("ADMIN_EMAIL", admin_email.into()),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
            ("ORG_ADMIN_EMAIL", org_admin.into()),
            ("ORG_ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
            ("VIEWER_EMAIL", VIEWER_EMAIL.into()),
            ("VIEWER_PASSWORD", VIEWER_PASSWORD.into()),
            ("STUCK_CHAMBER", stuck),
            ("WORKER", "envoy-test-worker-".into()),
        ],
    )
    .await;
    holding.abort();
    drop(stack);
    drop(sim);
}

/// The queue on the console (`tests/browser/queue.mjs`): the standalone's first admin — the
/// installation's operator — opens apalis-board under `/console/queue` and finds the worker and
/// the job of a chamber whose endpoint accepts and never answers; an organization admin and a
/// viewer are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installation_operator_sees_the_queue_in_chromium() {
    chromium_and_script();
    let lab = ConsoleStandalone::start("queue").await;
    let (token, password, channel) = (lab.token.clone(), lab.password.clone(), lab.channel.clone());
    let (stuck, holding) = stuck_chamber(&channel, &token).await;
    add_user(
        &channel,
        &token,
        "orgadmin@lab.example",
        "admin",
        ADMIN_PASSWORD,
    )
    .await;
    add_user(&channel, &token, VIEWER_EMAIL, "viewer", VIEWER_PASSWORD).await;

    run_browser_script(
        "queue.mjs",
        "queue",
        vec![
            ("CONSOLE", lab.origin()),
            ("ADMIN_EMAIL", "admin@localhost".into()),
            ("ADMIN_PASSWORD", password),
            ("ORG_ADMIN_EMAIL", "orgadmin@lab.example".into()),
            ("ORG_ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
            ("VIEWER_EMAIL", VIEWER_EMAIL.into()),
            ("VIEWER_PASSWORD", VIEWER_PASSWORD.into()),
            ("STUCK_CHAMBER", stuck),
            ("WORKER", "in-process".into()),
        ],
    )
    .await;
    holding.abort();
    lab.finish();
}

/// A chamber (in a section of its own) whose endpoint, on 127.0.0.2, takes every request and
/// never answers: its poll stays leased until its 10 s timeout, and the next one is leased as
/// it ends. Returns the chamber's id and the task holding the connections.
async fn stuck_chamber(channel: &Channel, token: &str) -> (String, tokio::task::JoinHandle<()>) {
    let silent = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let stuck = ChamberServiceClient::new(channel.clone())
        .create_chamber(authed(
            v1::CreateChamberRequest {
                section_id: section(channel, token, "stuck").await.id,
                name: "stuck-oven".into(),
                url: format!("http://{silent_address}/values"),
                format: "json".into(),
                interval: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                timeout: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                detectors: vec![v1::NewDetector {
                    name: "t".into(),
                    key: "/t".into(),
                    ..Default::default()
                }],
            },
            token,
        ))
        .await
        .expect("the stuck chamber is created")
        .into_inner();
    (stuck.id, holding)
}
