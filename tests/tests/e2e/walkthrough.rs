//! The README's "distributed mode, by hand" block, run as written: the shell block is read from
//! README.md and run by bash, with only what is the reader's own replaced (their database and
//! Redis URLs, their chambers' network, `localhost:8080`) and the listen addresses moved to free
//! ports through the settings' environment variables, which the README leaves at their
//! defaults. The test then checks what the block promises: two schedulers and two workers
//! beside the gateway, auth and alerter, each serving `/metrics` on its own port; `curl`
//! through Envoy answering with the bootstrap token; and a chamber created through Envoy polled
//! and its readings stored.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chamberlain_tests::api_stack::{envoy_bin, free_port, http_request};

/// The first ```sh block under `## The distributed mode, by hand`.
fn readme_block() -> String {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = readme
        .split_once("## The distributed mode, by hand")
        .expect("the README has the walkthrough section")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("a sh block in the section")
        .1;
    block
        .split_once("```")
        .expect("the block ends")
        .0
        .to_owned()
}

/// Replaces `from` (which must be in the block: the test fails when the README changes under
/// it, rather than running something else).
fn swap(block: &str, from: &str, to: &str) -> String {
    assert!(
        block.contains(from),
        "the README's block no longer has `{from}`"
    );
    block.replace(from, to)
}

/// Kills the script's whole process group (every `&` it started) when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.0.id();
        // SIGTERM to the group, then SIGKILL whatever is left (`kill -- -pgid`: after `--`,
        // so that the group is not read as a signal).
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &format!("-{pgid}")])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_)))
                && !Command::new("kill")
                    .args(["-s", "0", "--", &format!("-{pgid}")])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pgid}")])
            .status();
        let _ = self.0.wait();
    }
}

/// `metrics at /metrics` log lines so far: port → count.
fn metrics_ports(log: &Path) -> BTreeMap<u16, usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut ports = BTreeMap::new();
    for line in text.lines().filter(|l| l.contains("metrics at /metrics")) {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let listen = entry["fields"]["listen"]
            .as_str()
            .or_else(|| entry["listen"].as_str())
            .unwrap_or_default();
        if let Some(port) = listen.rsplit(':').next().and_then(|p| p.parse().ok()) {
            *ports.entry(port).or_insert(0) += 1;
        }
    }
    ports
}

async fn wait_for<T>(what: &str, log: &Path, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not within 90 s; the walkthrough's output:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_distributed_walkthrough_runs_as_written() {
    let (_store, db) = chamberlain_postgres::testing::fresh_store().await;
    let redis = chamberlain_redis::testing::TestPrefix::new();
    let server = chamberlain_postgres::testing::server_url();
    let database_url = format!(
        "{}/{}",
        server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b),
        db.name
    );
    let redis_url = chamberlain_redis::testing::server_url();
    let (envoy_port, envoy_admin, gateway, auth, chamber_port, console) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );

    let block = readme_block();
    let block = swap(
        &block,
        "CHAMBERLAIN_DATABASE_URL=postgres://postgres@127.0.0.1/chamberlain",
        &format!("CHAMBERLAIN_DATABASE_URL={database_url}"),
    );
    let block = swap(
        &block,
        "CHAMBERLAIN_REDIS_URL=redis://127.0.0.1:6379",
        &format!("CHAMBERLAIN_REDIS_URL={redis_url}"),
    );
    let block = swap(
        &block,
        "CHAMBERLAIN_EGRESS_ALLOW=10.20.0.0/16",
        "CHAMBERLAIN_EGRESS_ALLOW=127.0.0.0/8",
    );
    let block = swap(&block, "localhost:8080", &format!("127.0.0.1:{envoy_port}"));
    // The last line is the reader's first call; the test makes it once the stack is up.
    let (script, curl) = block
        .trim_end()
        .rsplit_once('\n')
        .expect("the block has lines");
    assert!(
        curl.starts_with("curl "),
        "the block ends with a curl: {curl}"
    );
    let curl = curl.to_owned();

    let dir =
        std::env::temp_dir().join(format!("chamberlain-walkthrough-{}", uuid::Uuid::new_v4()));
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    // `chamberlain` and `envoy` on PATH, as after an install. Envoy gets a dynamic base id so
    // that it can run beside the other tests' Envoys (a shared-memory detail, not a setting).
    std::os::unix::fs::symlink(
        chamberlain_tests::chamberlain_bin(),
        bin_dir.join("chamberlain"),
    )
    .unwrap();
    std::fs::write(
        bin_dir.join("envoy"),
        format!(
            "#!/bin/sh\nexec '{}' --use-dynamic-base-id --log-level warn \"$@\"\n",
            envoy_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin_dir.join("envoy"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        dir.join("walkthrough.sh"),
        format!("set -e\n{script}\nwait\n"),
    )
    .unwrap();
    let log = dir.join("walkthrough.log");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = std::fs::File::create(&log).unwrap();
    let walkthrough = Group(
        // `timeout` signals its whole process group: nothing outlives a test that is killed.
        Command::new("timeout")
            .args(["-k", "10", "240", "bash", "walkthrough.sh"])
            .current_dir(&dir)
            .env("PATH", &path)
            .env("CHAMBERLAIN_REDIS_PREFIX", &redis.config.key_prefix)
            .env("CHAMBERLAIN_LOG_FORMAT", "json")
            .env("CHAMBERLAIN_GATEWAY_LISTEN", format!("127.0.0.1:{gateway}"))
            .env("CHAMBERLAIN_AUTH_LISTEN", format!("127.0.0.1:{auth}"))
            .env(
                "CHAMBERLAIN_ENVOY_LISTEN",
                format!("127.0.0.1:{envoy_port}"),
            )
            .env(
                "CHAMBERLAIN_ENVOY_ADMIN",
                format!("127.0.0.1:{envoy_admin}"),
            )
            .env("CHAMBERLAIN_ENVOY_GATEWAY", format!("127.0.0.1:{gateway}"))
            .env("CHAMBERLAIN_ENVOY_AUTH", format!("127.0.0.1:{auth}"))
            .env(
                "CHAMBERLAIN_GATEWAY_HTTP_LISTEN",
                format!("127.0.0.1:{console}"),
            )
            .env("CHAMBERLAIN_ENVOY_CONSOLE", format!("127.0.0.1:{console}"))
            .env_remove("CHAMBERLAIN_METRICS_LISTEN")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            // One file description for both, so their lines interleave instead of overwriting.
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .process_group(0)
            .spawn()
            .expect("bash"),
    );

    // Every process of the block says where its metrics are: two schedulers (946[1], 947[1]…),
    // two workers (…2), a gateway (…3), auth (…4) and the alerter (…5), one port each.
    let ports = wait_for("seven metrics listeners", &log, async || {
        let ports = metrics_ports(&log);
        (ports.len() >= 7).then_some(ports)
    })
    .await;
    assert!(
        ports.values().all(|n| *n == 1),
        "one process per port: {ports:?}"
    );
    let role_of = |port: &u16| port % 10;
    for (role, digit, replicas) in [
        ("scheduler", 1, 2),
        ("worker", 2, 2),
        ("gateway", 3, 1),
        ("auth", 4, 1),
        ("alerter", 5, 1),
    ] {
        let of_role: Vec<u16> = ports
            .keys()
            .copied()
            .filter(|p| role_of(p) == digit)
            .collect();
        assert_eq!(of_role.len(), replicas, "{role} metrics ports: {ports:?}");
    }

    // The README's token line worked, and the README's curl answers through Envoy.
    let token = std::fs::read_to_string(dir.join("bootstrap.txt"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("api token (shown once): "))
        .expect("bootstrap printed a token")
        .to_owned();
    let curl_out = wait_for("the README's curl through Envoy", &log, async || {
        let out = Command::new("bash")
            .args(["-c", &format!("{curl} --silent --show-error --fail")])
            .env("TOKEN", &token)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    assert!(
        serde_json::from_str::<serde_json::Value>(&curl_out).is_ok_and(|v| v.is_object()),
        "the chamber list as JSON: {curl_out}"
    );

    // A chamber created through Envoy is polled by the block's workers and stored.
    let mut simulator = Command::new(chamberlain_tests::chamberlain_bin())
        .args(["simulate", "--chambers", "1", "--detectors", "2", "--bind"])
        .arg(format!("127.0.0.1:{chamber_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (status, body) = http_request(
        envoy_port,
        "POST",
        "/v1/sections",
        Some(&token),
        Some(r#"{"name":"Walkthrough"}"#),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let section: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, body) = http_request(
        envoy_port,
        "POST",
        "/v1/chambers",
        Some(&token),
        Some(&format!(
            r#"{{"sectionId":"{}","name":"Climate 1","url":"http://127.0.0.1:{chamber_port}/chambers/0","interval":"1s","detectors":[{{"name":"t","unit":"C","key":"/detectors/0/value"}},{{"name":"h","unit":"%","key":"/detectors/1/value"}}]}}"#,
            section["id"].as_str().unwrap()
        )),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let chamber: serde_json::Value = serde_json::from_str(&body).unwrap();
    let chamber_id = chamber["id"].as_str().unwrap().to_owned();
    let latest = wait_for("a stored reading of the new chamber", &log, async || {
        let (status, body) = http_request(
            envoy_port,
            "GET",
            &format!("/v1/readings:latest?chamberIds={chamber_id}"),
            Some(&token),
            None,
            &[],
        )
        .await;
        (status == 200 && body.contains("value")).then_some(body)
    })
    .await;
    assert!(latest.contains(&chamber_id), "{latest}");

    // Each process serves its metrics where it said; the auth service counted the calls above.
    for port in ports.keys() {
        let (status, body) = http_request(*port, "GET", "/metrics", None, None, &[]).await;
        assert_eq!(status, 200, "/metrics on {port}");
        assert!(
            body.contains("chamberlain_telemetry_spans_dropped_total"),
            "every process exports its telemetry loss counter (port {port})"
        );
        if role_of(port) == 4 {
            assert!(
                body.lines().any(
                    |l| l.starts_with("chamberlain_auth_checks_total") && l.contains("allowed")
                ),
                "auth counts allowed checks: {body}"
            );
        }
    }

    let _ = simulator.kill();
    let _ = simulator.wait();
    drop(walkthrough);
    std::fs::remove_dir_all(&dir).unwrap();
}
