//! Shared pieces of the end-to-end tests: a registered fleet on a fresh database, the services
//! wired in-process, and the `chamberlain` binary for tests that kill processes.

use std::collections::HashMap;
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{Chamber, LedgerEntry, PollOutcome, Role};
use chamberlain_domain::ports::{
    Clock, LedgerQuery, PollLedgerRepository, ReadingQuery, ReadingRepository, ReadingScope,
};
use chamberlain_domain::schedule::SlotGrid;
use chamberlain_domain::usecases::{
    Actor, AdminSettings, ChamberAdmin, NewChamber, NewDetector, NewSection, NewUser, PollHandler,
    PollSettings, UserAdmin,
};
use chamberlain_memory::{MemoryChamberChanges, MemoryEventBus, SystemClock};
use chamberlain_postgres::PgStore;
use chamberlain_postgres::testing::TestDatabase;
use chamberlain_redis::testing::TestPrefix;
use chamberlain_redis::{RedisLeaderLease, RedisPollQueue, RedisScheduleCheckpoint};
use chamberlain_simulator::{Format, SimulatorHandle};

pub struct Fleet {
    pub store: Arc<PgStore>,
    pub db: Arc<TestDatabase>,
    pub actor: Actor,
    pub chambers: Vec<Chamber>,
    pub admin: ChamberAdmin,
}

/// A fresh database with the simulator's first `n` chambers registered (JSON, 2 detectors, 1 s).
pub async fn fleet(sim: &SimulatorHandle, n: u32) -> Fleet {
    let (store, db) = chamberlain_postgres::testing::fresh_store().await;
    let store = Arc::new(store);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let users = UserAdmin {
        organizations: store.clone(),
        users: store.clone(),
        clock: clock.clone(),
    };
    let (org, admin_user) = users
        .create_organization(
            "Lab",
            NewUser {
                email: "a@lab.example".into(),
                display_name: "A".into(),
                role: "admin".into(),
                password_hash: None,
            },
        )
        .await
        .unwrap();
    let actor = Actor {
        user_id: admin_user.id,
        organization_id: org.id,
        role: Role::Admin,
    };
    let admin = ChamberAdmin {
        sections: store.clone(),
        chambers: store.clone(),
        detectors: store.clone(),
        batches: store.clone(),
        changes: Arc::new(MemoryChamberChanges::default()),
        events: Arc::new(MemoryEventBus::default()),
        clock,
        settings: AdminSettings::default(),
    };
    let section = admin
        .create_section(
            &actor,
            NewSection {
                name: "room".into(),
                description: String::new(),
            },
        )
        .await
        .unwrap();
    let mut chambers = Vec::new();
    for i in 0..n {
        let created = admin
            .create_chamber(
                &actor,
                NewChamber {
                    section_id: section.id,
                    name: format!("c{i:04}"),
                    url: sim.chamber_url(i, Format::Json),
                    format: "json".into(),
                    interval: Duration::from_secs(1),
                    timeout: None,
                    detectors: (0..2)
                        .map(|j| NewDetector {
                            name: format!("d{j}"),
                            key: format!("/detectors/{j}/value"),
                            ..Default::default()
                        })
                        .collect(),
                },
            )
            .await
            .unwrap();
        chambers.push(created.chamber);
    }
    Fleet {
        store,
        db,
        actor,
        chambers,
        admin,
    }
}

impl Fleet {
    /// The database URL for processes.
    pub fn url(&self) -> String {
        let server = chamberlain_postgres::testing::server_url();
        format!(
            "{}/{}",
            server
                .rsplit_once('/')
                .map_or(server.as_str(), |(base, _)| base),
            self.db.name
        )
    }

    /// The chamber's ledger for slots in `from..=to`.
    pub async fn ledger(
        &self,
        chamber: &Chamber,
        from: Timestamp,
        to: Timestamp,
    ) -> Vec<LedgerEntry> {
        self.store
            .list(
                self.actor.organization_id,
                &LedgerQuery {
                    from,
                    to: Timestamp::from_unix_millis(to.as_unix_millis() + 1),
                    ..LedgerQuery::all(chamber.id)
                },
            )
            .await
            .unwrap()
            .items
    }
}

/// The chamber's grid slots in `from..=to`.
pub fn slots(chamber: &Chamber, from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
    let grid = SlotGrid::new(chamber.id, chamber.interval);
    std::iter::successors(Some(grid.at_or_after(from)), |s| Some(grid.after(*s)))
        .take_while(|s| *s <= to)
        .collect()
}

pub fn scheduler(
    fleet: &Fleet,
    prefix: &TestPrefix,
    queue: Arc<RedisPollQueue>,
    name: &str,
) -> impl Future<Output = chamberlain_scheduler::Scheduler> {
    let (store, config) = (fleet.store.clone(), prefix.config.clone());
    let name = name.to_owned();
    async move {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let mut cfg = chamberlain_scheduler::SchedulerConfig::new(name);
        cfg.resync_every = Duration::from_secs(5);
        chamberlain_scheduler::Scheduler {
            chambers: store.clone(),
            health: store.clone(),
            ledger: store,
            queue,
            lease: Arc::new(
                RedisLeaderLease::connect(&config, clock.clone())
                    .await
                    .unwrap(),
            ),
            checkpoint: Arc::new(RedisScheduleCheckpoint::connect(&config).await.unwrap()),
            changes: Arc::new(MemoryChamberChanges::default()),
            clock,
            config: cfg,
        }
    }
}

pub async fn worker(fleet: &Fleet, prefix: &TestPrefix) -> chamberlain_worker::Worker {
    let http = chamberlain_http::HttpClientConfig::default()
        .with_egress_allow("127.0.0.2/32")
        .unwrap();
    let queue = Arc::new(RedisPollQueue::connect(&prefix.config).await.unwrap());
    let cached = Arc::new(chamberlain_worker::CachedChambers::new(
        fleet.store.clone(),
        fleet.store.clone(),
        Duration::from_millis(500),
    ));
    chamberlain_worker::Worker {
        handler: PollHandler {
            chambers: cached.clone(),
            batches: cached,
            readings: fleet.store.clone(),
            health: fleet.store.clone(),
            queue: queue.clone(),
            client: Arc::new(chamberlain_http::HttpChamberClient::new(&http)),
            events: Arc::new(MemoryEventBus::default()),
            clock: Arc::new(SystemClock),
            settings: PollSettings::default(),
        },
        queue,
        config: chamberlain_worker::WorkerConfig {
            visibility: Duration::from_secs(3),
            ..Default::default()
        },
    }
}

pub use chamberlain_tests::chamberlain_bin;

/// A `chamberlain` service process on the fleet's database and the prefix's Redis keys.
pub fn spawn(role: &str, fleet: &Fleet, prefix: &TestPrefix, extra: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(chamberlain_bin());
    cmd.arg(role)
        .env("CHAMBERLAIN_DATABASE_URL", fleet.url())
        .env(
            "CHAMBERLAIN_REDIS_URL",
            chamberlain_redis::testing::server_url(),
        )
        .env("CHAMBERLAIN_REDIS_PREFIX", &prefix.config.key_prefix)
        .env("CHAMBERLAIN_EGRESS_ALLOW", "127.0.0.2/32")
        .env("CHAMBERLAIN_LOG", "warn")
        .env("CHAMBERLAIN_METRICS_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start chamberlain")
}

pub fn now() -> Timestamp {
    SystemClock.now()
}

/// Every slot of every chamber in `from..=to` has exactly one ledger entry; readings are two per
/// ok poll. Returns the outcome counts.
pub async fn check_every_slot_once(
    fleet: &Fleet,
    from: Timestamp,
    to: Timestamp,
) -> HashMap<&'static str, usize> {
    let mut outcomes = HashMap::new();
    for c in &fleet.chambers {
        let ledger = fleet.ledger(c, from, to).await;
        let got: Vec<Timestamp> = ledger.iter().map(|e| e.poll.slot).collect();
        assert_eq!(
            got,
            slots(c, from, to),
            "chamber {}: one ledger entry per slot",
            c.name
        );
        for e in &ledger {
            *outcomes.entry(e.outcome.code()).or_insert(0) += 1;
        }
        let ok = ledger
            .iter()
            .filter(|e| e.outcome == PollOutcome::Ok)
            .count();
        let readings = fleet
            .store
            .query(
                fleet.actor.organization_id,
                &ReadingQuery {
                    from,
                    to: Timestamp::from_unix_millis(to.as_unix_millis() + 1),
                    ..ReadingQuery::all(ReadingScope::Chamber(c.id))
                },
            )
            .await
            .unwrap()
            .items;
        assert_eq!(
            readings.len(),
            2 * ok,
            "chamber {}: readings only for ok polls, once",
            c.name
        );
    }
    outcomes
}
