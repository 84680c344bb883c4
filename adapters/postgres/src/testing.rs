//! A throwaway database per test: created on the server named by
//! `CHAMBERLAIN_TEST_DATABASE_URL` (which `scripts/test` sets), migrated, and dropped when the
//! guard goes away.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::{PgConfig, PgStore};

/// The server the tests use; panics with a clear message when unset (run `scripts/test`).
pub fn server_url() -> String {
    std::env::var("CHAMBERLAIN_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("CHAMBERLAIN_TEST_DATABASE_URL is not set: run the tests with scripts/test, which starts or finds PostgreSQL")
    })
}

/// Drops its database when dropped (from a helper thread, since Drop cannot await).
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    admin_url: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (name, url) = (self.name.clone(), self.admin_url.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&url).await.ok()?;
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("warning: test database {} was not dropped", self.name);
        }
    }
}

/// A fresh database migrated only by the migrations before `version` (to test a later
/// migration on data of an earlier schema), and the configuration to open it with.
///
/// # Panics
/// If the server cannot be reached or a migration fails.
pub async fn fresh_database_before(version: i64) -> (PgConfig, Arc<TestDatabase>) {
    let url = server_url();
    let name = format!("chamberlain_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&url)
        .await
        .expect("connect to the test server");
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let guard = Arc::new(TestDatabase {
        name: name.clone(),
        admin_url: url.clone(),
    });
    let config = PgConfig::from_url(&url)
        .expect("CHAMBERLAIN_TEST_DATABASE_URL is a postgres URL")
        .with_database(&name)
        .with_max_connections(4)
        .expect("valid pool size");
    let before = sqlx::migrate::Migrator {
        migrations: crate::MIGRATOR
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate!("../../migrations/postgres")
    };
    let mut db = PgConnection::connect_with(&config.connect)
        .await
        .expect("connect to the test database");
    before.run(&mut db).await.expect("earlier migrations");
    db.close().await.expect("close");
    (config, guard)
}

/// A fresh, migrated database and a store on it, with a small pool.
///
/// # Panics
/// If the server cannot be reached: a test cannot run without it.
pub async fn fresh_store() -> (PgStore, Arc<TestDatabase>) {
    let url = server_url();
    let name = format!("chamberlain_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&url)
        .await
        .expect("connect to the test server");
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let guard = Arc::new(TestDatabase {
        name: name.clone(),
        admin_url: url.clone(),
    });
    let config = PgConfig::from_url(&url)
        .expect("CHAMBERLAIN_TEST_DATABASE_URL is a postgres URL")
        .with_database(&name)
        .with_max_connections(4)
        .expect("valid pool size");
    let store = PgStore::connect(&config)
        .await
        .expect("connect and migrate the test database");
    (store, guard)
}

/// A PostgreSQL server of one test's own, on a free port, with its default settings: for tests
/// that pause, stop or restart a server (nextest runs those, named `server_restart::`, one at a
/// time). Removed, data and all, when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    /// As root, the user the server runs as (initdb and postgres refuse root).
    run_as: Option<String>,
    paused: std::sync::Mutex<Vec<u32>>,
}

impl PrivatePostgres {
    /// Creates a cluster and starts it.
    ///
    /// # Panics
    /// If PostgreSQL's binaries are missing (`scripts/test` installs them) or it does not start.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir =
            std::env::temp_dir().join(format!("chamberlain-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let run_as = is_root().then(|| {
            let user = if user_exists("postgres") {
                "postgres"
            } else {
                "nobody"
            };
            let status = std::process::Command::new("chown")
                .arg(user)
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown {user} {}", dir.display());
            user.to_owned()
        });
        let server = Self {
            port,
            dir,
            bin: postgres_bin(),
            run_as,
            paused: std::sync::Mutex::default(),
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        server.start_again();
        server
    }

    /// The server's URL, database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again, after [`PrivatePostgres::stop`]) and waits until it answers.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log.display().to_string(),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Freezes every process of the server with SIGSTOP, as a hung machine would: connections
    /// stay open and nothing answers.
    pub fn pause(&self) {
        let postmaster = self.postmaster_pid();
        let mut pids = children_of(postmaster);
        pids.push(postmaster);
        signal("STOP", &pids);
        *self.frozen() = pids;
    }

    /// Thaws what [`PrivatePostgres::pause`] froze.
    pub fn resume(&self) {
        let pids = std::mem::take(&mut *self.frozen());
        signal("CONT", &pids);
    }

    fn frozen(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.paused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn postmaster_pid(&self) -> u32 {
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .expect("the server is running");
        pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("postmaster.pid starts with the pid")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let path = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => std::process::Command::new(&path),
        };
        let output = cmd
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.resume();
        let path = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = match &self.run_as {
            Some(user) => std::process::Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(&path)
                .args(args)
                .current_dir("/")
                .output(),
            None => std::process::Command::new(&path)
                .args(args)
                .current_dir("/")
                .output(),
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh, migrated database on `server` (a [`PrivatePostgres`]'s URL) and a store on it.
///
/// # Panics
/// If the server cannot be reached.
pub async fn fresh_store_on(server: &str) -> PgStore {
    let config = PgConfig::from_url(server)
        .expect("a postgres URL")
        .with_max_connections(4)
        .expect("valid pool size");
    PgStore::connect(&config)
        .await
        .expect("connect and migrate the private server's database")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn user_exists(name: &str) -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The directory of `initdb` and `pg_ctl`: on the PATH, else Debian's newest.
fn postgres_bin() -> std::path::PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").is_file() && p.join("pg_ctl").is_file())
    });
    on_path
        .or_else(|| {
            let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(|e| Some(e.ok()?.path().join("bin")))
                .filter(|p| p.join("initdb").is_file())
                .collect();
            versions.sort_by_key(|p| {
                p.parent()
                    .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                    .unwrap_or(0)
            });
            versions.pop()
        })
        .expect("PostgreSQL's initdb and pg_ctl are installed (scripts/test installs them)")
}

/// The processes whose parent is `parent` (a server's backends and helpers).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = stat.rsplit_once(')')?.1;
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn signal(name: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pids:?}");
}
