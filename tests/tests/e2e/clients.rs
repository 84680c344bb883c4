//! Chamberlain as clients nobody here wrote see it: Python's grpcio with grpcio-reflection (as
//! shipped, installed by `scripts/test` into its venv), through Envoy, without the `.proto`
//! files (tests/clients/grpcio_client.py).

use std::path::PathBuf;
use std::process::Command;

use chamberlain_domain::model::Role;
use chamberlain_tests::api_stack::{Stack, StackOptions};

/// The venv's Python, where `scripts/test` installed grpcio and grpcio-reflection.
fn python() -> PathBuf {
    if let Ok(python) = std::env::var("CHAMBERLAIN_TEST_PYTHON") {
        return python.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.is_file(),
        "no venv Python: run the tests with scripts/test, which installs grpcio into .venv"
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_client_uses_the_api_through_envoy_by_reflection_alone() {
    let stack = Stack::start(StackOptions::default()).await;
    let (_, token) = stack.tenant("py", Role::Operator).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/grpcio_client.py");
    let address = format!("127.0.0.1:{}", stack.ports.envoy);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(address)
            .arg(token)
            .output()
            .expect("run the Python client")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for step in [
        "ok reflection",
        "ok health SERVING without a token",
        "ok section",
        "ok invalid utf-8 INVALID_ARGUMENT",
        "ok chamber",
        "format=json",
        "ok interval 10s",
        "ok get 2 detectors",
        "ok list 2 detectors",
        "ok stream",
        "batch_started",
    ] {
        assert!(
            stdout.contains(step),
            "{step} missing from:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        stdout.contains("grpc.health.v1.Health") && stdout.contains("chamberlain.v1.EventService"),
        "{stdout}"
    );
}
