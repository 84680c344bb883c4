//! The `chamberlain` binary as an operator runs it: real processes, real databases.

use std::process::Command;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

fn chamberlain() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chamberlain"));
    cmd.env_remove("CHAMBERLAIN_DATABASE_URL")
        .env_remove("CHAMBERLAIN_DATA_DIR")
        .env("CHAMBERLAIN_METRICS_LISTEN", "127.0.0.1:0");
    cmd
}

#[tokio::test]
async fn migrates_an_empty_postgres_database_and_is_safe_to_run_again() {
    let server = chamberlain_postgres::testing::server_url();
    let name = format!("chamberlain_cli_{}", uuid_like());
    let mut admin = PgConnection::connect(&server).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{}/{name}", server.rsplit_once('/').unwrap().0);

    for run in 0..2 {
        let out = chamberlain()
            .args(["migrate", "--database-url", &url])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("migrated"), "{stdout}");
    }
    let mut db = PgConnection::connect(&url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE '%\\_p2%' ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    for gone in [
        "readings",
        "poll_ledger",
        "legacy_readings",
        "legacy_poll_ledger",
    ] {
        assert!(
            !tables.iter().any(|x| x == gone),
            "a new database has no {gone}: {tables:?}"
        );
    }
    for t in [
        "api_tokens",
        "batches",
        "chamber_health",
        "chamber_latest",
        "chambers",
        "detector_layouts",
        "detectors",
        "organizations",
        "polls",
        "sections",
        "users",
    ] {
        assert!(
            tables.iter().any(|x| x == t),
            "table {t} missing from {tables:?}"
        );
    }
    let partitions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = 'polls'::regclass")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(
        partitions >= 8,
        "yesterday, today and a week ahead: {partitions}"
    );
    db.close().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

#[test]
fn migrates_the_embedded_sqlite_database_in_the_data_dir_by_default() {
    let dir = std::env::temp_dir().join(format!("chamberlain-cli-{}", uuid_like()));
    let out = chamberlain()
        .args(["migrate", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("chamberlain.db").exists());
    let again = chamberlain()
        .arg("migrate")
        .env("CHAMBERLAIN_DATA_DIR", &dir)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_setting_is_named_and_exits_with_2() {
    let out = chamberlain()
        .arg("migrate")
        .env("CHAMBERLAIN_DATABASE_URL", "mysql://db/x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--database-url") && err.contains("CHAMBERLAIN_DATABASE_URL"),
        "{err}"
    );
}

#[test]
fn an_unreachable_server_fails_with_1_and_says_so() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = chamberlain()
        .args([
            "migrate",
            "--database-url",
            &format!("postgres://postgres@127.0.0.1:{port}/x"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unavailable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bootstrap_runs_once_and_admin_token_is_the_way_back_in() {
    let dir = std::env::temp_dir().join(format!("chamberlain-cli-{}", uuid_like()));
    let run = |args: &[&str]| {
        let out = chamberlain()
            .args(args)
            .env("CHAMBERLAIN_DATA_DIR", &dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let token_of = |stdout: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("api token (shown once): "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no token in {stdout}"))
    };
    let bootstrap = [
        "bootstrap",
        "--organization",
        "Lab",
        "--admin-email",
        "admin@lab.example",
    ];
    let (code, first, err) = run(&bootstrap);
    assert_eq!(code, Some(0), "{err}");
    let first = token_of(&first);

    // Again: not a bad setting (exit 1, not 2), and it says what to do instead.
    let (code, _, err) = run(&bootstrap);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("an organization with this name already exists")
            && err.contains("chamberlain admin-token --email"),
        "{err}"
    );

    let (code, out, err) = run(&["admin-token", "--email", "admin@lab.example"]);
    assert_eq!(code, Some(0), "{err}");
    assert_ne!(token_of(&out), first, "a new token");
    let (code, _, err) = run(&["admin-token", "--email", "nobody@lab.example"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no user nobody@lab.example"), "{err}");
    let (code, _, err) = run(&["admin-token", "--email", "admin@lab.example", "--name", " "]);
    assert_eq!(code, Some(2), "a blank token name is bad input: {err}");
    assert!(err.contains("--name"), "{err}");
    let (code, _, err) = run(&["admin-token", "--email", "not an email"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--email"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{}", nanos, std::process::id())
}

#[test]
fn simulate_serves_a_fleet_for_its_duration_and_prints_the_report() {
    let out = chamberlain()
        .args([
            "simulate",
            "--chambers",
            "3",
            "--detectors",
            "2",
            "--duration",
            "200ms",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("127.0.0.2"),
        "binds 127.0.0.2 by default: {stdout}"
    );
    // Its log goes to a pipe here: plain text, no ANSI colour codes.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("simulator listening"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );
    let bad = chamberlain()
        .args(["simulate", "--chambers", "0"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn the_services_refuse_a_bad_setting_at_start_naming_it() {
    for (args, named) in [
        (
            vec!["worker", "--egress-allow", "10.0.0.0/33"],
            "CHAMBERLAIN_EGRESS_ALLOW",
        ),
        (
            vec!["worker", "--redis-url", "http://nope"],
            "CHAMBERLAIN_REDIS_URL",
        ),
        (
            vec!["scheduler", "--redis-prefix", "has space"],
            "CHAMBERLAIN_REDIS_PREFIX",
        ),
        (
            vec!["worker", "--database-url", "mysql://x/y"],
            "CHAMBERLAIN_DATABASE_URL",
        ),
        (
            vec![
                "gateway",
                "--identity-key",
                "a-key-of-at-least-thirty-two-bytes-long",
                "--redis-url",
                "http://nope",
            ],
            "CHAMBERLAIN_REDIS_URL",
        ),
        (vec!["gateway", "--watch-buffer", "0"], "--watch-buffer"),
        (
            vec!["gateway", "--watch-max-lag-secs", "0"],
            "--watch-max-lag-secs",
        ),
        (
            vec!["alerter", "--egress-allow", "not-a-cidr"],
            "CHAMBERLAIN_EGRESS_ALLOW",
        ),
        (
            vec![
                "alerter",
                "--backoff-ms",
                "5000",
                "--max-backoff-ms",
                "1000",
            ],
            "CHAMBERLAIN_TRANSMIT_BACKOFF_MS",
        ),
        (vec!["alerter", "--attempts", "0"], "--attempts"),
        (vec!["alerter", "--reload-secs", "0"], "--reload-secs"),
        (
            vec!["worker", "--metrics-listen", "localhost:nope"],
            "CHAMBERLAIN_METRICS_LISTEN",
        ),
        (vec!["worker", "--log-format", "xml"], "--log-format"),
        (
            vec!["scheduler", "--enqueue-ahead-ms", "10001"],
            "--enqueue-ahead-ms",
        ),
        (vec!["worker", "--max-waiting", "100001"], "--max-waiting"),
        (vec!["worker", "--concurrency", "0"], "--concurrency"),
        (
            vec!["worker", "--http-pool-idle-per-host", "1025"],
            "--http-pool-idle-per-host",
        ),
        (vec!["standalone", "--max-waiting", "many"], "--max-waiting"),
        // Settings shared by several commands, each declared once, refused the same way.
        (vec!["standalone", "--concurrency", "0"], "--concurrency"),
        (
            vec!["standalone", "--egress-allow", "10.0.0.0/33"],
            "CHAMBERLAIN_EGRESS_ALLOW",
        ),
        (
            vec!["worker", "--body-cap", "10"],
            "CHAMBERLAIN_HTTP_BODY_CAP",
        ),
        (
            vec!["standalone", "--max-message-bytes", "10"],
            "--max-message-bytes",
        ),
        (vec!["standalone", "--timeout-secs", "0"], "--timeout-secs"),
        (vec!["gateway", "--timeout-secs", "0"], "--timeout-secs"),
        (vec!["gateway", "--listen", "nowhere"], "--listen"),
        (vec!["standalone", "--listen", "nowhere"], "--listen"),
    ] {
        let out = chamberlain().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(named), "{args:?} should name {named}: {err}");
    }
}

#[test]
fn a_metrics_address_already_taken_stops_the_service_at_start_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = chamberlain()
        .args(["worker", "--metrics-listen", &addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("CHAMBERLAIN_METRICS_LISTEN") && err.contains(&addr),
        "{err}"
    );
}

/// A database of the previous layout (one ledger row plus one row per reading), as an operator
/// upgrading has it: `migrate` converts it with progress, reports what it moved and the readings
/// that had no ledger entry, and a second run has nothing to do.
#[tokio::test]
async fn migrate_converts_readings_of_the_previous_layout_and_then_has_nothing_to_do() {
    let (_, db) = chamberlain_postgres::testing::fresh_database_before(20_261_206_000_000).await;
    let server = chamberlain_postgres::testing::server_url();
    let url = format!("{}/{}", server.rsplit_once('/').unwrap().0, db.name);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    // One chamber of two detectors, 30 polls at 1 s (values 10·slot + detector), a timeout
    // without readings among them, and one reading without a ledger entry.
    for sql in [
        "INSERT INTO organizations VALUES ('00000000-0000-0000-0000-00000000000a', 'lab', now())",
        "INSERT INTO sections (id, organization_id, name, created_at) VALUES \
         ('00000000-0000-0000-0000-00000000000b', '00000000-0000-0000-0000-00000000000a', 'room', now())",
        "INSERT INTO chambers (id, organization_id, section_id, name, endpoint, format, interval_ms, timeout_ms, \
         state, health_policy, schedule_since, created_at, updated_at) VALUES \
         ('00000000-0000-0000-0000-00000000000c', '00000000-0000-0000-0000-00000000000a', \
          '00000000-0000-0000-0000-00000000000b', 'climate 1', 'http://127.0.0.1:1/', 'json', 1000, 500, 'active', \
          '{\"degraded_after\": 3, \"down_after_failures\": 10, \"down_after_ms\": 60000}', now(), now(), now())",
        "INSERT INTO detectors (id, organization_id, chamber_id, name, unit, key_kind, key) \
         SELECT ('00000000-0000-0000-0000-00000000001' || d)::uuid, '00000000-0000-0000-0000-00000000000a', \
                '00000000-0000-0000-0000-00000000000c', 'd' || d, '°C', 'json_pointer', '/d' || d \
         FROM generate_series(1, 2) d",
        "CREATE TABLE poll_ledger_p20260101 PARTITION OF poll_ledger \
         FOR VALUES FROM ('2026-01-01T00:00:00Z') TO ('2026-01-02T00:00:00Z')",
        "CREATE TABLE readings_p20260101 PARTITION OF readings \
         FOR VALUES FROM ('2026-01-01T00:00:00Z') TO ('2026-01-02T00:00:00Z')",
        "INSERT INTO poll_ledger (chamber_id, slot, outcome, detail, attempt, requested_at, recorded_at, latency_ms, lateness_ms) \
         SELECT '00000000-0000-0000-0000-00000000000c', timestamptz '2026-01-01' + s * interval '1 s', \
                CASE WHEN s = 7 THEN 'timeout' ELSE 'ok' END, \
                CASE WHEN s = 7 THEN '{\"outcome\": \"timeout\"}' ELSE '{\"outcome\": \"ok\"}' END::jsonb, 1, \
                timestamptz '2026-01-01' + s * interval '1 s', timestamptz '2026-01-01' + s * interval '1 s' + interval '5 ms', \
                CASE WHEN s = 7 THEN NULL ELSE 5 END, 2 \
         FROM generate_series(0, 29) s",
        "INSERT INTO readings (detector_id, chamber_id, slot, value, requested_at, received_at) \
         SELECT ('00000000-0000-0000-0000-00000000001' || d)::uuid, '00000000-0000-0000-0000-00000000000c', \
                timestamptz '2026-01-01' + s * interval '1 s', 10 * s + d, \
                timestamptz '2026-01-01' + s * interval '1 s', timestamptz '2026-01-01' + s * interval '1 s' + interval '5 ms' \
         FROM generate_series(0, 29) s, generate_series(1, 2) d WHERE s <> 7",
        "INSERT INTO readings (detector_id, chamber_id, slot, value, requested_at, received_at) VALUES \
         ('00000000-0000-0000-0000-000000000011', '00000000-0000-0000-0000-00000000000c', \
          '2026-01-01T00:01:00Z', 1, '2026-01-01T00:01:00Z', '2026-01-01T00:01:00Z')",
    ] {
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    let out = chamberlain()
        .args(["migrate", "--database-url", &url, "--chunk-polls", "7"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("converting readings to one row per poll, 7 polls a transaction"),
        "{stdout}"
    );
    assert!(
        stdout.contains("converted 30 polls (58 readings)")
            && stdout.contains("1 readings without a ledger entry dropped"),
        "{stdout}"
    );
    let (polls, values, total): (i64, i64, f64) = sqlx::query_as(
        "SELECT count(DISTINCT slot), count(v), coalesce(sum(v), 0) \
         FROM polls LEFT JOIN LATERAL unnest(value) v ON true",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    // Σ over 29 slots of (10s + 1) + (10s + 2), s = 0..29 without 7.
    let expected: f64 = (0..30)
        .filter(|s| *s != 7)
        .map(|s| f64::from(20 * s + 3))
        .sum();
    assert_eq!((polls, values, total), (30, 58, expected));
    let legacy: Option<String> = sqlx::query_scalar("SELECT to_regclass('legacy_readings')::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(legacy, None, "the old tables are dropped once converted");

    let again = chamberlain()
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(!stdout.contains("converting"), "nothing left: {stdout}");
    conn.close().await.unwrap();
}

/// The embedded mode's database made before one row per poll: `chamberlain migrate` converts it
/// in chunks, reports what it moved and dropped, and a second run has nothing to do.
#[tokio::test]
async fn migrate_converts_an_embedded_database_of_the_previous_layout() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
    let dir = std::env::temp_dir().join(format!("chamberlain-cli-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("chamberlain.db");
    let before = sqlx::migrate::Migrator {
        migrations: sqlx::migrate!("../../migrations/sqlite")
            .migrations
            .iter()
            .filter(|m| m.version < 20_261_207_000_000)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate!("../../migrations/sqlite")
    };
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true)
            .foreign_keys(true),
    )
    .await
    .unwrap();
    before.run(&mut conn).await.unwrap();
    // One chamber of two detectors, 30 polls at 1 s (values 10·slot + detector), a timeout
    // without readings among them, and one reading without a ledger entry.
    for sql in [
        "INSERT INTO organizations VALUES (unhex('0000000000000000000000000000000a'), 'lab', 0)",
        "INSERT INTO sections (id, organization_id, name, created_at) VALUES \
         (unhex('0000000000000000000000000000000b'), unhex('0000000000000000000000000000000a'), 'room', 0)",
        "INSERT INTO chambers (id, organization_id, section_id, name, endpoint, format, interval_ms, timeout_ms, \
         state, health_policy, schedule_since, created_at, updated_at) VALUES \
         (unhex('0000000000000000000000000000000c'), unhex('0000000000000000000000000000000a'), \
          unhex('0000000000000000000000000000000b'), 'climate 1', 'http://127.0.0.1:1/', 'json', 1000, 500, 'active', \
          '{\"degraded_after\": 3, \"down_after_failures\": 10, \"down_after_ms\": 60000}', 0, 0, 0)",
        "INSERT INTO detectors (id, organization_id, chamber_id, name, unit, key_kind, key) \
         SELECT unhex('0000000000000000000000000000001' || d), unhex('0000000000000000000000000000000a'), \
                unhex('0000000000000000000000000000000c'), 'd' || d, '°C', 'json_pointer', '/d' || d \
         FROM (SELECT 1 AS d UNION ALL SELECT 2)",
        "WITH RECURSIVE s(s) AS (SELECT 0 UNION ALL SELECT s + 1 FROM s WHERE s < 29) \
         INSERT INTO poll_ledger (chamber_id, slot, outcome, detail, attempt, requested_at, recorded_at, latency_ms, lateness_ms) \
         SELECT unhex('0000000000000000000000000000000c'), 1767225600000 + s * 1000, \
                CASE WHEN s = 7 THEN 'timeout' ELSE 'ok' END, \
                CASE WHEN s = 7 THEN '{\"outcome\": \"timeout\"}' ELSE '{\"outcome\": \"ok\"}' END, 1, \
                1767225600000 + s * 1000, 1767225600000 + s * 1000 + 5, \
                CASE WHEN s = 7 THEN NULL ELSE 5 END, 2 \
         FROM s",
        "WITH RECURSIVE s(s) AS (SELECT 0 UNION ALL SELECT s + 1 FROM s WHERE s < 29) \
         INSERT INTO readings (detector_id, chamber_id, slot, value, requested_at, received_at) \
         SELECT unhex('0000000000000000000000000000001' || d), unhex('0000000000000000000000000000000c'), \
                1767225600000 + s * 1000, 10.0 * s + d, 1767225600000 + s * 1000, 1767225600000 + s * 1000 + 5 \
         FROM s, (SELECT 1 AS d UNION ALL SELECT 2) WHERE s <> 7",
        "INSERT INTO readings (detector_id, chamber_id, slot, value, requested_at, received_at) VALUES \
         (unhex('00000000000000000000000000000011'), unhex('0000000000000000000000000000000c'), \
          1767225660000, 1, 1767225660000, 1767225660000)",
    ] {
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    conn.close().await.unwrap();

    let out = chamberlain()
        .args(["migrate", "--chunk-polls", "7", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("converting readings to one row per poll, 7 polls a transaction"),
        "{stdout}"
    );
    assert!(
        stdout.contains("converted 30 polls (58 readings)")
            && stdout.contains("1 readings without a ledger entry dropped"),
        "{stdout}"
    );
    let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&file))
        .await
        .unwrap();
    // 29 polls with two values (16 bytes), a timeout without (in `polls`, or the newest in
    // `polls_recent`); the old tables gone.
    let (polls, with_values, bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(value), coalesce(sum(length(value)), 0) FROM \
         (SELECT value FROM polls UNION ALL SELECT value FROM polls_recent)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((polls, with_values, bytes), (30, 29, 29 * 16));
    let legacy: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE name IN ('legacy_readings', 'legacy_poll_ledger')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(legacy, 0, "the old tables are dropped once converted");
    conn.close().await.unwrap();

    let again = chamberlain()
        .args(["migrate", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(!stdout.contains("converting"), "nothing left: {stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The process runs without transparent huge pages (mimalloc asks for them on its arenas, and
/// a huge page is resident whole): the kernel reports `THP_enabled: 0` for it.
#[cfg(target_os = "linux")]
#[test]
fn the_process_runs_without_transparent_huge_pages() {
    use std::io::{BufRead, BufReader};
    let mut child = chamberlain()
        .args(["simulate", "--chambers", "1", "--duration", "60s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its first line says where it listens: main has run by then.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let thp = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned());
    // Kernels before 5.0 do not report it; there is nothing to check then.
    if let Some(thp) = thp {
        assert_eq!(thp, "0", "first line {first:?}");
    }
}
