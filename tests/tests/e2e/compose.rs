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
        "descriptor-set",
        "envoy-config",
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

/// The one-shot `envoy-config` service's settings, given to the real binary, render a
/// configuration the real Envoy accepts, pointing at the compose network's gateway and auth.
#[test]
fn the_compose_envoy_config_service_renders_a_config_envoy_accepts() {
    let out = config(&[], Some("a-compose-test-key-of-at-least-32-bytes"));
    assert!(out.status.success());
    let resolved = String::from_utf8(out.stdout).unwrap();
    // The service's block: from `  envoy-config:` to the next service at the same indent.
    let start = resolved
        .find("\n  envoy-config:\n")
        .expect("an envoy-config service");
    let block: Vec<&str> = resolved[start + 1..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("   ") || l.is_empty())
        .collect();
    let block = block.join("\n");
    assert!(
        block.contains("- envoy-config") && block.contains("/etc/envoy/envoy.yaml"),
        "{block}"
    );
    let env: Vec<(String, String)> = block
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("CHAMBERLAIN_ENVOY_"))
        .map(|(k, v)| (k.to_owned(), v.trim_matches(['\'', '"']).to_owned()))
        .collect();
    assert!(
        env.iter()
            .any(|(k, v)| k == "CHAMBERLAIN_ENVOY_GATEWAY" && v == "gateway:50051"),
        "{env:?}"
    );
    let dir = std::env::temp_dir().join(format!("chamberlain-compose-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let rendered = dir.join("envoy.yaml");
    let bin = chamberlain_tests::chamberlain_bin();
    let described = Command::new(&bin)
        .args(["descriptor-set", "--out"])
        .arg(dir.join("chamberlain.pb"))
        .output()
        .unwrap();
    assert!(described.status.success());
    let mut cmd = Command::new(&bin);
    cmd.arg("envoy-config").arg("--out").arg(&rendered);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    // The descriptor where this test wrote it, not the container's path.
    cmd.env("CHAMBERLAIN_ENVOY_DESCRIPTOR", dir.join("chamberlain.pb"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = std::fs::read_to_string(&rendered).unwrap();
    for upstream in [
        r#"address: "gateway", port_value: 50051"#,
        r#"address: "auth", port_value: 50052"#,
        r#"address: "0.0.0.0", port_value: 8080"#,
    ] {
        assert!(yaml.contains(upstream), "{upstream} in {yaml}");
    }
    let validated = Command::new(chamberlain_tests::api_stack::envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(&rendered)
        .output()
        .unwrap();
    assert!(
        validated.status.success(),
        "envoy --mode validate: {}",
        String::from_utf8_lossy(&validated.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
