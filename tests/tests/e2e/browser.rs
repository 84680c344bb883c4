//! The console in a real headless Chromium (Debian's, driven by playwright-core from
//! `tests/browser`), against `chamberlain standalone --simulate 3`: the script
//! `tests/browser/console.mjs` signs in, watches the overview go live, changes an interval and
//! sees it in the ledger, tries a cross-site post and a viewer's forged edit, and signs out. Its
//! screenshots are kept in `target/browser-screenshots/`.

use std::path::PathBuf;
use std::process::Command;

use chamberlain_proto::v1::{
    self, alert_service_client::AlertServiceClient, chamber_service_client::ChamberServiceClient,
    user_service_client::UserServiceClient,
};
use chamberlain_tests::api_stack::free_port;
use chamberlain_tests::chamberlain_bin;

use crate::api::authed;
use crate::standalone::{connect, free_port_on_127_0_0_2, start_simulating};

const VIEWER_PASSWORD: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_chromium() {
    let chromium = std::env::var("CHAMBERLAIN_TEST_CHROMIUM").unwrap_or_else(|_| {
        panic!("CHAMBERLAIN_TEST_CHROMIUM is not set: run the tests with scripts/test, which installs Debian's chromium")
    });
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let browser_dir = root.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in tests/browser: run the tests with scripts/test"
    );
    let dir = std::env::temp_dir().join(format!("chamberlain-browser-{}", uuid::Uuid::new_v4()));
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
    // An alert rule on sim-0000, which the browser makes fail.
    let failing = ChamberServiceClient::new(channel.clone())
        .list_chambers(authed(v1::ListChambersRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .chambers
        .into_iter()
        .find(|c| c.name == "sim-0000")
        .expect("sim-0000 is registered");
    AlertServiceClient::new(channel.clone())
        .create_alert_rule(authed(
            v1::CreateAlertRuleRequest {
                chamber_id: failing.id.clone(),
                name: "sim-0000 down".into(),
                condition: Some(v1::create_alert_rule_request::Condition::ChamberDown(
                    v1::ChamberDownCondition {
                        after: Some(prost_types::Duration {
                            seconds: 1,
                            nanos: 0,
                        }),
                    },
                )),
            },
            &token,
        ))
        .await
        .expect("an alert rule is created");
    UserServiceClient::new(channel)
        .create_user(authed(
            v1::CreateUserRequest {
                email: "viewer@lab.example".into(),
                display_name: "Viewer".into(),
                role: "viewer".into(),
                password: VIEWER_PASSWORD.into(),
            },
            &token,
        ))
        .await
        .expect("a viewer is created");

    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    let shots = target.join("browser-screenshots");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("console.mjs")
            .current_dir(&browser_dir)
            .env("CONSOLE", format!("http://127.0.0.1:{}", standalone.http))
            .env("ADMIN_EMAIL", "admin@localhost")
            .env("ADMIN_PASSWORD", password)
            .env("VIEWER_EMAIL", "viewer@lab.example")
            .env("VIEWER_PASSWORD", VIEWER_PASSWORD)
            .env("CHROMIUM", chromium)
            .env("FAILING_CHAMBER", failing.id)
            .env("SCREENSHOTS", &shots)
            .output()
            .map(|o| (o, standalone))
    })
    .await
    .unwrap()
    .expect("node runs");
    let (output, standalone) = output;
    drop(standalone);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "the browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
