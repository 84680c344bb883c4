//! Shared pieces of the end-to-end tests: a registered fleet on a fresh database, the services
//! wired in-process, and the `chamberlain` binary for tests that kill processes.

use std::collections::HashMap;
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chamberlain_compose::Distributed;
use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{Chamber, LedgerEntry, PollOutcome, Role};
use chamberlain_domain::ports::{
    Clock, LedgerQuery, PollLedgerRepository, ReadingQuery, ReadingRepository, ReadingScope,
    Repositories,
};
use chamberlain_domain::schedule::SlotGrid;
use chamberlain_domain::usecases::{
    Actor, ChamberAdmin, NewChamber, NewDetector, NewSection, NewUser, UserAdmin,
};
use chamberlain_fakes::InsecureTestPasswordHasher;
use chamberlain_memory::{MemoryChamberChanges, MemoryEventBus, SystemClock};
use chamberlain_postgres::PgStore;
use chamberlain_postgres::testing::TestDatabase;
use chamberlain_redis::testing::TestPrefix;
use chamberlain_simulator::{Format, SimulatorHandle};

pub struct Fleet {
    pub store: Arc<PgStore>,
    /// The database's URL, for processes.
    pub url: String,
    /// A throwaway database on the shared server, dropped with the fleet (none on a private
    /// server).
    _db: Option<Arc<TestDatabase>>,
    pub actor: Actor,
    pub chambers: Vec<Chamber>,
}

/// A fresh database with the simulator's first `n` chambers registered (JSON, 2 detectors, 1 s).
pub async fn fleet(sim: &SimulatorHandle, n: u32) -> Fleet {
    let (store, db) = chamberlain_postgres::testing::fresh_store().await;
    let server = chamberlain_postgres::testing::server_url();
    let url = format!(
        "{}/{}",
        server
            .rsplit_once('/')
            .map_or(server.as_str(), |(base, _)| base),
        db.name
    );
    fleet_on(sim, n, store, url, Some(db)).await
}

/// The simulator's first `n` chambers registered in `store` (on `url`).
pub async fn fleet_on(
    sim: &SimulatorHandle,
    n: u32,
    store: PgStore,
    url: String,
    db: Option<Arc<TestDatabase>>,
) -> Fleet {
    let store = Arc::new(store);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let repositories = Repositories::of(store.clone());
    let users = UserAdmin::new(
        &repositories,
        Arc::new(InsecureTestPasswordHasher),
        Arc::new(chamberlain_memory::MemoryAccessEpoch::default()),
        clock.clone(),
    );
    let (org, admin_user) = users
        .create_organization(
            "Lab",
            NewUser {
                email: "a@lab.example".into(),
                display_name: "A".into(),
                role: "admin".into(),
                password: None,
            },
        )
        .await
        .unwrap();
    let actor = Actor {
        user_id: admin_user.id,
        organization_id: org.id,
        role: Role::Admin,
    };
    let admin = ChamberAdmin::new(
        &repositories,
        Arc::new(MemoryChamberChanges::default()),
        Arc::new(MemoryEventBus::default()),
        clock,
    );
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
        url,
        _db: db,
        actor,
        chambers,
    }
}

impl Fleet {
    /// An admin publishing its changes on the prefix's Redis change feed, as a gateway does, so
    /// that the workers and schedulers of that prefix hear of them.
    pub async fn admin_on(&self, prefix: &TestPrefix) -> ChamberAdmin {
        ChamberAdmin::new(
            &Repositories::of(self.store.clone()),
            Arc::new(
                chamberlain_redis::RedisChamberChanges::connect(&prefix.config, 64)
                    .await
                    .unwrap(),
            ),
            Arc::new(MemoryEventBus::default()),
            Arc::new(SystemClock),
        )
    }

    /// The database URL for processes.
    pub fn url(&self) -> String {
        self.url.clone()
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

/// A scheduler on the fleet's database and the prefix's Redis keys, wired by the composition
/// layer as `chamberlain scheduler` is (with a 5 s resync).
pub fn scheduler(
    fleet: &Fleet,
    prefix: &TestPrefix,
    name: &str,
) -> impl Future<Output = chamberlain_scheduler::Scheduler> {
    let repositories = Repositories::of(fleet.store.clone());
    let distributed = Distributed::new(prefix.config.clone());
    let name = name.to_owned();
    async move {
        let mut config = chamberlain_scheduler::SchedulerConfig::new(name);
        config.resync_every = Duration::from_secs(5);
        distributed.scheduler(&repositories, config).await.unwrap()
    }
}

/// A worker wired as `chamberlain worker` is, polling the simulator's address, with a 3 s
/// visibility timeout; its chamber cache follows the prefix's change feed (see
/// [`Fleet::admin_on`]), and reads chambers every 500 ms should it lose the feed.
pub async fn worker(fleet: &Fleet, prefix: &TestPrefix) -> chamberlain_worker::Worker {
    let http = chamberlain_http::HttpClientConfig::default()
        .with_egress_allow("127.0.0.2/32")
        .unwrap();
    Distributed::new(prefix.config.clone())
        .worker(
            &Repositories::of(fleet.store.clone()),
            &http,
            chamberlain_worker::WorkerConfig {
                visibility: Duration::from_secs(3),
                ..Default::default()
            },
            Duration::from_millis(500),
        )
        .await
        .unwrap()
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

/// Stops a process as `docker stop` would (SIGTERM) and waits for it.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// Waits (a minute at most) until the queue holds no job: none ready, leased or delayed.
pub async fn drained(queue: &chamberlain_redis::RedisPollQueue) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = chamberlain_domain::ports::PollQueue::depth(queue)
            .await
            .unwrap();
        if d.ready == 0 && d.leased == 0 && d.delayed == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue never drained: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling the condition, with a deadline
    }
}
