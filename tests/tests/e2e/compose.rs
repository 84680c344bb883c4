//! `docker/docker-compose.yml` is valid for Debian's docker-compose and wires every role with
//! the same settings. No container is started.

use std::path::PathBuf;
use std::process::Command;

fn compose() -> PathBuf {
    std::env::var_os("CHAMBERLAIN_TEST_DOCKER_COMPOSE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("docker-compose"))
}

fn config(args: &[&str], key: Option<&str>) -> std::process::Output {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(compose());
    cmd.current_dir(&root)
        .args(["-f", "docker/docker-compose.yml", "config"])
        .args(args)
        .env_remove("CHAMBERLAIN_IDENTITY_KEY");
    if let Some(key) = key {
        cmd.env("CHAMBERLAIN_IDENTITY_KEY", key);
    }
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "{} cannot run ({e}): run the tests with scripts/test, which installs docker-compose",
            compose().display()
        )
    })
}

#[test]
fn the_compose_file_is_valid_and_runs_every_role() {
    let key = "a-compose-test-key-of-at-least-32-bytes";
    let out = config(&["--services"], Some(key));
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let services = String::from_utf8(out.stdout).unwrap();
    for role in [
        "postgres",
        "redis",
        "migrate",
        "envoy",
        "otel-collector",
        "jaeger",
        "gateway",
        "auth",
        "scheduler-a",
        "scheduler-b",
        "worker",
        "alerter",
    ] {
        assert!(
            services.lines().any(|s| s == role),
            "{role} is a service: {services}"
        );
    }
    let out = config(&[], Some(key));
    let resolved = String::from_utf8(out.stdout).unwrap();
    for setting in [
        "CHAMBERLAIN_DATABASE_URL: postgres://chamberlain:chamberlain@postgres:5432/chamberlain",
        "CHAMBERLAIN_REDIS_URL: redis://redis:6379",
        "OTEL_EXPORTER_OTLP_ENDPOINT: http://otel-collector:4317",
    ] {
        assert!(resolved.contains(setting), "{setting} in the resolved file");
    }
    // Every chamberlain role gets the shared key from the environment.
    assert!(resolved.matches(key).count() >= 7, "{resolved}");
}

#[test]
fn the_compose_file_refuses_to_run_without_an_identity_key() {
    let out = config(&["-q"], None);
    assert!(!out.status.success(), "no key, no stack");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CHAMBERLAIN_IDENTITY_KEY"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
