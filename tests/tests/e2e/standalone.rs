//! The embedded default, as a newcomer runs it: `chamberlain standalone --simulate 20` in an
//! empty directory prints an admin token once, polls the simulated chambers and answers the API;
//! stopped with SIGTERM and started again, it still has its chambers and readings, records the
//! slots it missed while stopped, and polls on.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chamberlain_proto::v1::{
    self, chamber_service_client::ChamberServiceClient, poll_service_client::PollServiceClient,
    reading_service_client::ReadingServiceClient,
};
use chamberlain_tests::api_stack::{free_port, http_exchange};
use chamberlain_tests::chamberlain_bin;
use tonic::transport::Channel;

use crate::api::authed;
use chamberlain_grpc::identity::IDENTITY_HEADER;

pub(crate) struct Standalone {
    pub(crate) child: Child,
    /// The token line, if this start printed one.
    pub(crate) token: Option<String>,
    /// The console's password, if this start printed one.
    pub(crate) console_password: Option<String>,
    /// Where the console answers.
    pub(crate) http: u16,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(bin: &std::path::Path, dir: &std::path::Path, api: u16, sim: u16) -> Standalone {
    start_simulating(bin, dir, api, sim, 20)
}

/// `chamberlain standalone --simulate N` in `dir`, the API on 127.0.0.1:`api`.
pub(crate) fn start_simulating(
    bin: &std::path::Path,
    dir: &std::path::Path,
    api: u16,
    sim: u16,
    simulate: u32,
) -> Standalone {
    let http = free_port();
    let mut child = Command::new(bin)
        .args([
            "standalone",
            "--simulate",
            &simulate.to_string(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{api}"),
            "--simulate-listen",
            &format!("127.0.0.2:{sim}"),
        ])
        .env("CHAMBERLAIN_METRICS_LISTEN", "127.0.0.1:0")
        .env("CHAMBERLAIN_HTTP_LISTEN", format!("127.0.0.1:{http}"))
        .env("CHAMBERLAIN_LOG", "warn")
        .env_remove("CHAMBERLAIN_DATABASE_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start chamberlain standalone");
    // The first lines on stdout are the first start's greeting; later starts print nothing.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut token, mut console_password) = (None, None);
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(3)) {
        if let Some(sign_in) = line.strip_prefix("console sign-in (shown once, keep it): ") {
            console_password = sign_in.split(" / ").nth(1).map(str::to_owned);
        }
        if let Some(t) = line.strip_prefix("api token (shown once, keep it): ") {
            token = Some(t.trim().to_owned());
            break;
        }
    }
    Standalone {
        child,
        token,
        console_password,
        http,
    }
}

pub(crate) async fn connect(port: u16) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "the API never answered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn chamber_ids(channel: &Channel, token: &str) -> Vec<String> {
    let mut ids: Vec<String> = ChamberServiceClient::new(channel.clone())
        .list_chambers(authed(v1::ListChambersRequest::default(), token))
        .await
        .expect("list chambers")
        .into_inner()
        .chambers
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

/// The latest stored slot of each chamber, in Unix milliseconds.
async fn latest(channel: &Channel, token: &str, ids: &[String]) -> Vec<i64> {
    ReadingServiceClient::new(channel.clone())
        .latest_readings(authed(
            v1::LatestReadingsRequest {
                chamber_ids: ids.to_vec(),
            },
            token,
        ))
        .await
        .expect("latest readings")
        .into_inner()
        .chambers
        .into_iter()
        .map(|c| {
            let s = c.slot.expect("a slot");
            s.seconds * 1000 + i64::from(s.nanos) / 1_000_000
        })
        .collect()
}

fn terminate(s: &mut Standalone) {
    let pid = s.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = s.child.try_wait().unwrap() {
            assert!(exit.success(), "a clean stop on SIGTERM: {exit:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn free_port_on_127_0_0_2() -> u16 {
    chamberlain_tests::api_stack::free_port_on("127.0.0.2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_polls_simulated_chambers_and_resumes_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("chamberlain-standalone-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    let (api, sim) = (free_port(), free_port_on_127_0_0_2());

    let bin = chamberlain_bin();
    let started = Instant::now();
    let mut first = start(&bin, &dir, api, sim);
    let token = first
        .token
        .clone()
        .expect("the first start prints an API token once");
    assert!(token.starts_with("chm_"), "{token}");
    let channel = connect(api).await;
    let ids = chamber_ids(&channel, &token).await;
    assert_eq!(ids.len(), 20, "the simulated chambers are registered");
    let deadline = Instant::now() + Duration::from_secs(60);
    while latest(&channel, &token, &ids).await.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "readings of every chamber within a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "standalone: every simulated chamber had a stored reading {:.1} s after the start",
        started.elapsed().as_secs_f64()
    );
    // Without Envoy, only the in-process layer vouches for a caller: a client-sent identity
    // header is dropped, with a token or without one.
    let mut forged = tonic::Request::new(v1::ListChambersRequest::default());
    forged
        .metadata_mut()
        .insert(IDENTITY_HEADER, "v1.forged.identity".parse().unwrap());
    let refused = ChamberServiceClient::new(channel.clone())
        .list_chambers(forged)
        .await
        .expect_err("no token, a forged identity");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let mut with_token = authed(v1::WhoAmIRequest {}, &token);
    with_token
        .metadata_mut()
        .insert(IDENTITY_HEADER, "v1.forged.identity".parse().unwrap());
    let me = v1::user_service_client::UserServiceClient::new(channel.clone())
        .who_am_i(with_token)
        .await
        .expect("the token decides who calls")
        .into_inner();
    assert_eq!(me.email, "admin@localhost");
    let bad = ChamberServiceClient::new(channel.clone())
        .list_chambers(authed(v1::ListChambersRequest::default(), "chm_forged"))
        .await
        .expect_err("a bad token");
    assert_eq!(bad.code(), tonic::Code::Unauthenticated);

    let stored_before_stop = latest(&channel, &token, &ids[..1]).await[0];
    terminate(&mut first);
    let stopped_at = std::time::SystemTime::now();
    drop(channel);
    // Stopped for a few slots: those are missed.
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage itself, not a wait for a condition

    let second = start(&bin, &dir, api, sim);
    assert_eq!(
        second.token, None,
        "the token is shown once, on the first start only"
    );
    let channel = connect(api).await;
    assert_eq!(
        chamber_ids(&channel, &token).await,
        ids,
        "the same chambers, no duplicates"
    );
    // Polling resumed: every chamber gets a slot later than the restart.
    let restart_ms = stopped_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = latest(&channel, &token, &ids).await;
        if l.len() == 20 && l.iter().all(|s| *s > restart_ms + 3000) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "polling resumes after the restart: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing stored before the stop was lost, and the outage is in the ledger as missed.
    let now = prost_types::Timestamp {
        seconds: restart_ms / 1000,
        nanos: 0,
    };
    let range = |failures_only| v1::ListPollsRequest {
        chamber_id: ids[0].clone(),
        from: Some(prost_types::Timestamp {
            seconds: now.seconds - 3600,
            nanos: 0,
        }),
        to: Some(prost_types::Timestamp {
            seconds: now.seconds + 3600,
            nanos: 0,
        }),
        failures_only,
        page: Some(v1::PageRequest {
            page_size: 1000,
            page_token: String::new(),
        }),
    };
    let polls = PollServiceClient::new(channel.clone())
        .list_polls(authed(range(true), &token))
        .await
        .expect("list polls")
        .into_inner()
        .polls;
    assert!(
        polls.iter().any(|p| p.outcome == "missed"),
        "the slots missed while stopped are recorded: {polls:?}"
    );
    let all = PollServiceClient::new(channel.clone())
        .list_polls(authed(range(false), &token))
        .await
        .expect("list polls")
        .into_inner()
        .polls;
    let slots: Vec<i64> = all
        .iter()
        .map(|p| {
            let s = p.slot.as_ref().unwrap();
            s.seconds * 1000 + i64::from(s.nanos) / 1_000_000
        })
        .collect();
    assert!(
        slots.windows(2).all(|w| w[0] < w[1]),
        "one ledger entry per slot: {slots:?}"
    );
    assert!(
        slots.contains(&stored_before_stop),
        "polls from before the stop are still there"
    );
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The console on the standalone's HTTP address: nothing without a session, and the password
/// the first start printed signs the administrator in to a page listing the chambers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_answers_on_the_http_address_and_the_printed_password_signs_in() {
    let dir = std::env::temp_dir().join(format!("chamberlain-console-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    let (api, sim) = (free_port(), free_port_on_127_0_0_2());
    let standalone = start_simulating(&chamberlain_bin(), &dir, api, sim, 3);
    let password = standalone
        .console_password
        .clone()
        .expect("the first start prints the console's password");
    connect(api).await;
    let get = |path: &str, cookie: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncookie: {cookie}\r\n\r\n"
        )
    };
    let (status, headers, _) = http_exchange(standalone.http, get("/console/", "")).await;
    assert_eq!(status, 303);
    assert!(headers.contains(&("location".into(), "/console/sign-in".into())));

    let form = format!("email=admin%40localhost&password={password}");
    let (status, headers, body) = http_exchange(
        standalone.http,
        format!(
            "POST /console/sign-in HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\norigin: http://127.0.0.1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{form}",
            form.len()
        ),
    )
    .await;
    assert_eq!(status, 303, "{body}");
    let cookie = headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .expect("a session cookie");
    let (status, _, page) = http_exchange(standalone.http, get("/console/", &cookie)).await;
    assert_eq!(status, 200);
    for name in ["sim-0000", "sim-0001", "sim-0002", "simulated"] {
        assert!(page.contains(name), "{name} not on the overview");
    }
    drop(standalone);
    let _ = std::fs::remove_dir_all(&dir);
}
