//! API benchmark: GetChamber and a 1,000-row readings query, straight to the gateway and through
//! Envoy + the auth service, at fixed offered rates (open loop: requests are sent on schedule
//! whatever the replies do, and latency counts from the scheduled send time).
//!
//! ```sh
//! scripts/bench-api            # release build, 10 s per step
//! ```
//! Rate limits are raised for the run. Everything shares this machine's 2 cores: the load
//! generator (this process), Envoy, the gateway, the auth service and PostgreSQL.
//! `CHAMBERLAIN_BENCH_SMOKE=1` runs one tiny step per target for a second;
//! `CHAMBERLAIN_BENCH_ONLY=<text>` runs only the targets whose name contains the text.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::future::Future;

use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures;
use chamberlain_domain::model::{ApiTokenId, ChamberId, DetectorId, Role};
use chamberlain_domain::ports::{ChamberRepository, DetectorRepository, ReadingRepository};
use chamberlain_domain::usecases::Identity;
use chamberlain_grpc::IdentityKey;
use chamberlain_proto::v1::{
    self, chamber_service_client::ChamberServiceClient,
    reading_service_client::ReadingServiceClient,
};
use chamberlain_tests::api_stack::{IDENTITY_KEY, Stack, StackOptions};
use tonic::transport::Channel;

#[derive(Debug, Default)]
struct Stats {
    offered: u32,
    sent: usize,
    ok: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

/// Sends `rate` requests per second for `secs`, each made by `call`, and waits for them all.
async fn drive<F, Fut>(rate: u32, secs: f64, call: F) -> Stats
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = (f64::from(rate) * secs) as u64;
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut handles = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for i in 0..n {
        let at = start + gap * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(at).await;
        let fut = call(i);
        handles.push(tokio::spawn(async move {
            let ok = fut.await;
            (ok, at.elapsed(), tokio::time::Instant::now())
        }));
    }
    let mut stats = Stats {
        offered: rate,
        sent: handles.len(),
        ..Stats::default()
    };
    let mut last = start;
    for h in handles {
        if let Ok((ok, latency, done)) = h.await {
            if ok {
                stats.ok += 1;
                stats.latencies.push(latency);
            }
            last = last.max(done);
        }
    }
    stats.elapsed = last.saturating_duration_since(start);
    stats.latencies.sort_unstable();
    stats
}

fn print_header() {
    println!(
        "{:<34} {:>9} {:>10} {:>7} {:>8} {:>8} {:>8}",
        "target", "offered/s", "achieved/s", "ok %", "p50 ms", "p99 ms", "max ms"
    );
}

fn print_row(target: &str, s: &Stats) {
    #[allow(clippy::cast_precision_loss)]
    let achieved = s.ok as f64 / s.elapsed.as_secs_f64().max(1e-9);
    #[allow(clippy::cast_precision_loss)]
    let ok_pct = 100.0 * s.ok as f64 / (s.sent.max(1) as f64);
    println!(
        "{target:<34} {:>9} {achieved:>10.0} {ok_pct:>7.2} {:>8.2} {:>8.2} {:>8.2}",
        s.offered,
        s.pct(0.5),
        s.pct(0.99),
        s.pct(1.0)
    );
}

async fn channels(port: u16, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    out
}

#[derive(Clone)]
enum Credential {
    /// Through Envoy: a bearer token.
    Token(String),
    /// Straight to the gateway: the identity header the auth service would have set.
    Identity(Identity),
}

fn request<T>(message: T, credential: &Credential, key: &IdentityKey) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    match credential {
        Credential::Token(t) => {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Credential::Identity(identity) => {
            let now = Timestamp::from_unix_millis(
                i64::try_from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis(),
                )
                .unwrap_or(0),
            );
            r.metadata_mut().insert(
                chamberlain_grpc::identity::IDENTITY_HEADER,
                key.sign(identity, now).parse().unwrap(),
            );
        }
    }
    r
}

#[allow(clippy::too_many_lines)]
fn main() {
    let smoke = std::env::var("CHAMBERLAIN_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let stack = Stack::start(StackOptions {
            auth_env: vec![
                ("CHAMBERLAIN_RATE_LIMIT_PER_SEC", "1000000".into()),
                ("CHAMBERLAIN_RATE_LIMIT_BURST", "1000000".into()),
                ("CHAMBERLAIN_ORG_RATE_LIMIT_PER_SEC", "1000000".into()),
                ("CHAMBERLAIN_ORG_RATE_LIMIT_BURST", "1000000".into()),
            ],
            listener_rate_limit: Some(1_000_000),
            release: !cfg!(debug_assertions),
            ..StackOptions::default()
        })
        .await;
        let (actor, token) = stack.tenant("bench", Role::Operator).await;
        let key = IdentityKey::new(IDENTITY_KEY.as_bytes().to_vec()).unwrap();

        // One chamber with 8 detectors and 125 slots of readings: 1,000 rows.
        let org = actor.organization_id;
        let section = fixtures::section(org, "bench");
        chamberlain_domain::ports::SectionRepository::create(&*stack.store, &section)
            .await
            .unwrap();
        let chamber = fixtures::chamber(org, section.id, "bench", 1);
        let detectors: Vec<_> = (0..8)
            .map(|i| fixtures::detector(&chamber, &format!("d{i}")))
            .collect();
        ChamberRepository::create(&*stack.store, &chamber, &detectors)
            .await
            .unwrap();
        let t0 = fixtures::T0;
        let polls: Vec<_> = (0..125u64)
            .map(|i| {
                fixtures::poll_record(
                    &chamber,
                    &detectors,
                    t0 + Duration::from_secs(i),
                    20.0,
                    None,
                )
            })
            .collect();
        stack.store.store_polls(&polls).await.unwrap();
        let _: Vec<DetectorId> =
            DetectorRepository::list_for_chamber(&*stack.store, org, chamber.id)
                .await
                .unwrap()
                .iter()
                .map(|d| d.id)
                .collect();
        let chamber_id: ChamberId = chamber.id;
        let range = (t0, t0 + Duration::from_secs(125));

        let identity = Identity {
            actor,
            token_id: ApiTokenId::random(),
        };
        let direct = channels(stack.ports.gateway, 4).await;
        let envoy = channels(stack.ports.envoy, 4).await;
        let (secs, get_direct, get_envoy, query_rates): (f64, Vec<u32>, Vec<u32>, Vec<u32>) =
            if smoke {
                (1.0, vec![50], vec![50], vec![10])
            } else {
                (
                    10.0,
                    vec![5_000, 10_000, 15_000, 20_000],
                    vec![1_000, 2_000, 3_000, 4_000],
                    vec![100, 200, 400],
                )
            };
        if smoke {
            println!(
                "smoke mode (CHAMBERLAIN_BENCH_SMOKE=1): tiny steps, figures are not measurements"
            );
        }
        let only = std::env::var("CHAMBERLAIN_BENCH_ONLY").unwrap_or_default();
        let wanted = |target: &str| target.contains(only.as_str());
        print_header();
        let get = |via: Vec<Channel>, credential: Credential| {
            let key = key.clone();
            move |i: u64| {
                let mut client = ChamberServiceClient::new(
                    via[usize::try_from(i).unwrap_or(0) % via.len()].clone(),
                );
                let r = request(
                    v1::GetChamberRequest {
                        id: chamber_id.to_string(),
                    },
                    &credential,
                    &key,
                );
                async move { client.get_chamber(r).await.is_ok() }
            }
        };
        let query = |via: Vec<Channel>, credential: Credential| {
            let key = key.clone();
            move |i: u64| {
                let mut client = ReadingServiceClient::new(
                    via[usize::try_from(i).unwrap_or(0) % via.len()].clone(),
                );
                let r = request(
                    v1::QueryReadingsRequest {
                        selector: Some(v1::ReadingSelector {
                            scope: Some(v1::reading_selector::Scope::ChamberId(
                                chamber_id.to_string(),
                            )),
                        }),
                        from: Some(prost_types::Timestamp {
                            seconds: range.0.as_unix_millis() / 1000,
                            nanos: 0,
                        }),
                        to: Some(prost_types::Timestamp {
                            seconds: range.1.as_unix_millis() / 1000,
                            nanos: 0,
                        }),
                        page: Some(v1::PageRequest {
                            page_size: 1000,
                            page_token: String::new(),
                        }),
                    },
                    &credential,
                    &key,
                );
                async move {
                    client
                        .query_readings(r)
                        .await
                        .is_ok_and(|r| r.into_inner().readings.len() == 1000)
                }
            }
        };
        for &rate in get_direct.iter().filter(|_| wanted("GetChamber direct")) {
            let s = drive(
                rate,
                secs,
                get(direct.clone(), Credential::Identity(identity)),
            )
            .await;
            print_row("GetChamber direct", &s);
        }
        for &rate in get_envoy
            .iter()
            .filter(|_| wanted("GetChamber via Envoy + auth"))
        {
            let s = drive(
                rate,
                secs,
                get(envoy.clone(), Credential::Token(token.clone())),
            )
            .await;
            print_row("GetChamber via Envoy + auth", &s);
        }
        for &rate in query_rates
            .iter()
            .filter(|_| wanted("QueryReadings 1,000 rows direct"))
        {
            let s = drive(
                rate,
                secs,
                query(direct.clone(), Credential::Identity(identity)),
            )
            .await;
            print_row("QueryReadings 1,000 rows direct", &s);
        }
        for &rate in query_rates
            .iter()
            .filter(|_| wanted("QueryReadings 1,000 rows via Envoy"))
        {
            let s = drive(
                rate,
                secs,
                query(envoy.clone(), Credential::Token(token.clone())),
            )
            .await;
            print_row("QueryReadings 1,000 rows via Envoy", &s);
        }
    });
}
