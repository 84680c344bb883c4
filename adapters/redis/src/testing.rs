//! Test support: a unique key prefix per test (its keys deleted afterwards), and private Redis
//! servers on free ports for tests that pause or restart a whole server.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::RedisConfig;

/// The shared test server (`scripts/test` sets `CHAMBERLAIN_TEST_REDIS_URL`).
pub fn server_url() -> String {
    std::env::var("CHAMBERLAIN_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!("CHAMBERLAIN_TEST_REDIS_URL is not set: run the tests with scripts/test, which starts or finds Redis")
    })
}

/// A key prefix of its own; its keys are deleted when dropped.
#[derive(Debug)]
pub struct TestPrefix {
    pub config: RedisConfig,
}

impl TestPrefix {
    /// On the shared test server.
    pub fn new() -> Self {
        Self::on(&server_url())
    }

    /// On the server at `url`.
    pub fn on(url: &str) -> Self {
        let prefix = format!("{{chamberlain-test-{}}}", uuid::Uuid::new_v4().simple());
        let config = RedisConfig::from_url(url)
            .expect("a redis:// test URL")
            .with_key_prefix(&prefix)
            .expect("a valid prefix");
        Self { config }
    }
}

impl Default for TestPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestPrefix {
    fn drop(&mut self) {
        let client = self.config.client.clone();
        let pattern = format!(
            "{}:*",
            self.config
                .key_prefix
                .replace('{', "\\{")
                .replace('}', "\\}")
        );
        // Synchronous and best effort: a test that leaves keys behind must not fail for it.
        let _ = std::thread::spawn(move || -> redis::RedisResult<()> {
            let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
            let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut conn)?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(keys).query::<()>(&mut conn)?;
            }
            Ok(())
        })
        .join();
    }
}

/// A Redis server of the test's own, on a free port, in a temporary directory.
#[derive(Debug)]
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one and waits until it answers.
    ///
    /// # Panics
    /// If `redis-server` is missing or does not come up (`scripts/test` installs it).
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!(
            "chamberlain-redis-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut redis = Self {
            port,
            dir,
            child: None,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        self.wait_until_up();
    }

    fn wait_until_up(&self) {
        let client = redis::Client::open(self.url()).expect("url");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let up = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if up.is_ok() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "private redis on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts a new one on the same port (nothing persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
