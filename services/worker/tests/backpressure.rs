//! Backpressure from the store, on paused time against the memory adapters: while results
//! cannot be stored (a write that hangs, a write that fails) the worker keeps what it fetched,
//! at most its bound, and fetches nothing more; once the store is back every slot ends with
//! exactly one ledger entry: fetched and stored, or expired because the store was behind. On
//! shutdown, what could not be stored is left unacknowledged, to be fetched again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::{self, T0};
use chamberlain_domain::model::{
    Chamber, ChamberId, Detector, DetectorId, OrganizationId, Page, PollOutcome, Reading,
};
use chamberlain_domain::ports::{
    ChamberClient, ChamberRepository, DetectorRepository, FetchError, FetchRequest,
    FetchedResponse, LatestReadings, LedgerQuery, OrganizationRepository, PollLedgerRepository,
    PollQueue, PollRecord, ReadingCursor, ReadingQuery, ReadingRepository, ReadingScope,
    Repositories, SectionRepository, StoreError, WriteReport,
};
use chamberlain_domain::usecases::PollHandler;
use chamberlain_fakes::{MemoryStore, TokioClock};
use chamberlain_memory::{MemoryEventBus, MemoryPollQueue};
use chamberlain_worker::{CachedChambers, Worker, WorkerConfig, WorkerReport};
use tokio::sync::Notify;

const CHAMBERS: usize = 50;
const SLOTS: usize = 20;
const BOUND: usize = 60;

/// A detector an operator removes while its chamber is being polled.
struct Removal {
    url: String,
    store: Arc<MemoryStore>,
    org: OrganizationId,
    detector: DetectorId,
}

/// Answers at once, counting requests, and those made while the store was unavailable.
#[derive(Default)]
struct CountingChamber {
    requests: AtomicU64,
    requests_while_away: AtomicU64,
    store_away: Arc<AtomicBool>,
    /// Removed during the first request to its chamber (after the poll read the chamber).
    remove_on_fetch: std::sync::Mutex<Option<Removal>>,
}

#[async_trait]
impl ChamberClient for CountingChamber {
    async fn fetch(&self, request: &FetchRequest) -> Result<FetchedResponse, FetchError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let removal = {
            let mut pending = self.remove_on_fetch.lock().unwrap();
            match pending.as_ref() {
                Some(r) if r.url == request.url.as_str() => pending.take(),
                _ => None,
            }
        };
        if let Some(r) = removal {
            DetectorRepository::delete(&*r.store, r.org, r.detector)
                .await
                .unwrap();
        }
        if self.store_away.load(Ordering::SeqCst) {
            self.requests_while_away.fetch_add(1, Ordering::SeqCst);
        }
        Ok(FetchedResponse {
            status: 200,
            body: br#"{"t": 21}"#.to_vec(),
        })
    }
}

/// How the store is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Away {
    /// Writes never answer (a server stopped with SIGSTOP).
    Hangs,
    /// Writes fail at once (a server restarting).
    Fails,
    /// Always there, but slow: each write takes [`SLOW_PER_POLL`] per poll and
    /// [`SLOW_PER_READING`] per reading (a store that cannot keep up with every poll).
    Slow,
}

const SLOW_PER_POLL: Duration = Duration::from_millis(1);
const SLOW_PER_READING: Duration = Duration::from_millis(30);

/// The memory store's readings, with writes that hang or fail while the store is away.
struct FlakyReadings {
    inner: Arc<MemoryStore>,
    how: Away,
    away: Arc<AtomicBool>,
    back: Notify,
    writes_tried: AtomicU64,
    /// The polls of each write tried, in order.
    write_sizes: std::sync::Mutex<Vec<usize>>,
}

impl FlakyReadings {
    fn come_back(&self) {
        self.away.store(false, Ordering::SeqCst);
        self.back.notify_waiters();
    }
}

#[async_trait]
impl ReadingRepository for FlakyReadings {
    async fn store_polls(&self, polls: &[PollRecord]) -> Result<WriteReport, StoreError> {
        self.writes_tried.fetch_add(1, Ordering::SeqCst);
        self.write_sizes.lock().unwrap().push(polls.len());
        if self.how == Away::Slow {
            let readings: usize = polls.iter().map(|p| p.readings.len()).sum();
            let took = SLOW_PER_POLL * polls.len() as u32 + SLOW_PER_READING * readings as u32;
            tokio::time::sleep(took).await;
            return self.inner.store_polls(polls).await;
        }
        loop {
            let back = self.back.notified();
            if !self.away.load(Ordering::SeqCst) {
                break;
            }
            match self.how {
                Away::Fails => {
                    return Err(StoreError::Unavailable {
                        message: "the database system is starting up".into(),
                    });
                }
                Away::Hangs | Away::Slow => back.await,
            }
        }
        self.inner.store_polls(polls).await
    }
    async fn query(
        &self,
        org: OrganizationId,
        query: &ReadingQuery,
    ) -> Result<Page<Reading, ReadingCursor>, StoreError> {
        self.inner.query(org, query).await
    }
    async fn latest(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<LatestReadings>, StoreError> {
        self.inner.latest(org, chambers).await
    }
    async fn prune_before(&self, cutoff: Timestamp) -> Result<(), StoreError> {
        self.inner.prune_before(cutoff).await
    }
}

struct Lab {
    store: Arc<MemoryStore>,
    org: OrganizationId,
    chambers: Vec<Chamber>,
    detectors: Vec<Detector>,
    queue: Arc<MemoryPollQueue>,
    client: Arc<CountingChamber>,
    readings: Arc<FlakyReadings>,
    handler: PollHandler,
}

/// `CHAMBERS` chambers polled every second, and a poll of each for the `SLOTS` seconds after
/// T0, all enqueued at T0 (the worker holds them until their slot).
async fn lab(how: Away) -> Lab {
    let clock = TokioClock::at(T0);
    let store = Arc::new(MemoryStore::new());
    let org = fixtures::organization("backpressure");
    OrganizationRepository::create(&*store, &org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    SectionRepository::create(&*store, &section).await.unwrap();
    let queue = Arc::new(MemoryPollQueue::new(clock.clone()));
    let mut chambers = Vec::new();
    let mut detectors = Vec::new();
    let mut jobs = Vec::new();
    for i in 0..CHAMBERS {
        let chamber = fixtures::chamber(org.id, section.id, &format!("c{i}"), 1);
        let detector = fixtures::detector(&chamber, "t");
        ChamberRepository::create(&*store, &chamber, std::slice::from_ref(&detector))
            .await
            .unwrap();
        detectors.push(detector);
        chambers.push(chamber);
    }
    // In slot order, as a scheduler enqueues them.
    for s in 1..=SLOTS {
        let slot = T0 + Duration::from_secs(s as u64);
        for chamber in &chambers {
            jobs.push(fixtures::poll_job(org.id, chamber.id, slot, 1, T0));
        }
    }
    queue.enqueue(&jobs).await.unwrap();
    let away = Arc::new(AtomicBool::new(false));
    let client = Arc::new(CountingChamber {
        store_away: away.clone(),
        ..CountingChamber::default()
    });
    let readings = Arc::new(FlakyReadings {
        inner: store.clone(),
        how,
        away,
        back: Notify::new(),
        writes_tried: AtomicU64::new(0),
        write_sizes: std::sync::Mutex::default(),
    });
    let mut handler = PollHandler::new(
        &Repositories::of(store.clone()),
        client.clone(),
        Arc::new(MemoryEventBus::new(1024)),
        clock,
    );
    handler.readings = readings.clone();
    Lab {
        store,
        org: org.id,
        chambers,
        detectors,
        queue,
        client,
        readings,
        handler,
    }
}

fn config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 16,
        max_results_waiting: BOUND,
        write_timeout: Duration::from_secs(2),
        flush_every: Duration::from_millis(50),
        ..WorkerConfig::default()
    }
}

impl Lab {
    /// Every ledger entry, by outcome code (with the expiry's reason).
    async fn ledger(&self) -> (usize, HashMap<String, usize>, bool) {
        let mut by_outcome = HashMap::new();
        let mut total = 0;
        let mut one_per_slot = true;
        for chamber in &self.chambers {
            let entries =
                PollLedgerRepository::list(&*self.store, self.org, &LedgerQuery::all(chamber.id))
                    .await
                    .unwrap()
                    .items;
            let mut slots: Vec<Timestamp> = entries.iter().map(|e| e.poll.slot).collect();
            slots.sort();
            slots.dedup();
            one_per_slot &= slots.len() == entries.len();
            total += entries.len();
            for e in entries {
                let key = match e.outcome {
                    PollOutcome::Expired { reason } => format!("expired:{}", reason.code()),
                    other => other.code().to_string(),
                };
                *by_outcome.entry(key).or_insert(0) += 1;
            }
        }
        (total, by_outcome, one_per_slot)
    }

    /// Waits (on paused time) until every slot has its ledger entry.
    async fn until_every_slot_is_recorded(&self) {
        for _ in 0..600 {
            if self.ledger().await.0 >= CHAMBERS * SLOTS {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "not every slot recorded after a minute: {:?}",
            self.ledger().await
        );
    }
}

/// Runs a worker while `during` runs, then stops it and reports.
async fn run_worker_while<F: Future<Output = ()>>(lab: &Lab, during: F) -> WorkerReport {
    run_worker_with_while(lab, config(), during).await
}

/// [`run_worker_while`] with `config`.
async fn run_worker_with_while<F: Future<Output = ()>>(
    lab: &Lab,
    config: WorkerConfig,
    during: F,
) -> WorkerReport {
    let worker = Worker::new(lab.handler.clone(), lab.queue.clone(), config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let working = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    during.await;
    stop.send(()).unwrap();
    working.await.unwrap()
}

async fn store_away_from_5_to_12_s(lab: &Lab) {
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_millis(5_500)).await;
    lab.readings.away.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(7)).await;
    lab.readings.come_back();
    lab.until_every_slot_is_recorded().await;
}

fn assert_every_slot_once_nothing_fetched_lost_and_fetching_bounded(
    lab: &Lab,
    ledger: &(usize, HashMap<String, usize>, bool),
) {
    let (total, by_outcome, one_per_slot) = ledger;
    assert_eq!(*total, CHAMBERS * SLOTS, "{by_outcome:?}");
    assert!(one_per_slot, "a slot with two entries: {by_outcome:?}");
    let ok = by_outcome.get("ok").copied().unwrap_or(0);
    let behind = by_outcome.get("expired:store_behind").copied().unwrap_or(0);
    assert_eq!(
        ok + behind,
        CHAMBERS * SLOTS,
        "every slot fetched or expired because the store was behind: {by_outcome:?}"
    );
    assert!(behind > 0, "the stall made polls expire: {by_outcome:?}");
    let while_away = lab.client.requests_while_away.load(Ordering::SeqCst);
    assert!(
        while_away as usize <= BOUND,
        "{while_away} polls fetched while the store was away; the bound is {BOUND}"
    );
    assert_eq!(
        lab.client.requests.load(Ordering::SeqCst),
        ok as u64,
        "every poll fetched was stored, and none fetched twice"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_that_hangs_stops_the_fetching_and_nothing_fetched_is_lost() {
    let lab = lab(Away::Hangs).await;
    let report = run_worker_while(&lab, store_away_from_5_to_12_s(&lab)).await;

    let ledger = lab.ledger().await;
    assert_every_slot_once_nothing_fetched_lost_and_fetching_bounded(&lab, &ledger);
    assert!(
        report.failed_writes >= 2,
        "hung writes were abandoned at the write timeout and tried again: {report:?}"
    );
    let depth = lab.queue.depth().await.unwrap();
    assert_eq!((depth.ready, depth.leased, depth.delayed), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_store_back_after_a_stall_catches_up_in_writes_larger_than_usual() {
    let lab = lab(Away::Hangs).await;
    // Above the 16 results a burst of fetches (the concurrency) hands the writer at once.
    let usual = 20;
    let config = WorkerConfig {
        flush_max_polls: usual,
        ..config()
    };
    run_worker_with_while(&lab, config, store_away_from_5_to_12_s(&lab)).await;

    let ledger = lab.ledger().await;
    assert_every_slot_once_nothing_fetched_lost_and_fetching_bounded(&lab, &ledger);
    let sizes = lab.readings.write_sizes.lock().unwrap().clone();
    // Without catching up every write would take at most `usual`.
    assert_eq!(
        sizes.iter().copied().max(),
        Some(BOUND.min(4 * usual)),
        "the {BOUND} results held behind the stall went in one write: {sizes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_that_fails_keeps_the_results_and_writes_them_when_it_is_back() {
    let lab = lab(Away::Fails).await;
    let report = run_worker_while(&lab, store_away_from_5_to_12_s(&lab)).await;

    let ledger = lab.ledger().await;
    assert_every_slot_once_nothing_fetched_lost_and_fetching_bounded(&lab, &ledger);
    let tried = lab.readings.writes_tried.load(Ordering::SeqCst);
    assert!(
        report.failed_writes >= 3 && tried > report.failed_writes,
        "failed writes were tried again, at a pause: {report:?}, {tried} tried"
    );
    // Seven seconds away with retries doubling up to 2 s: not a write every flush.
    assert!(
        report.failed_writes <= 10,
        "retries pause between attempts: {report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_the_store_away_acknowledges_nothing_unstored_and_stays_bounded() {
    let lab = lab(Away::Hangs).await;
    let started = tokio::time::Instant::now();
    let mut stopping_at = started;
    let report = run_worker_while(&lab, async {
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        lab.readings.away.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        stopping_at = tokio::time::Instant::now();
    })
    .await;
    let stop_took = stopping_at.elapsed();
    let config = config();
    assert!(
        stop_took <= config.drain_timeout + config.shutdown_flush,
        "the stop took {stop_took:?}"
    );
    let fetched = lab.client.requests.load(Ordering::SeqCst);
    let (stored, ..) = lab.ledger().await;
    assert_eq!(report.polls_completed, stored as u64);
    assert!(
        (stored as u64) < fetched,
        "some results could not be stored before the stop: {stored} of {fetched}"
    );

    // The store comes back and a second worker takes over: every slot once, and what the
    // first fetched but could not store was not acknowledged, so it is fetched again (or
    // expired by then) — never lost, never twice.
    lab.readings.come_back();
    run_worker_while(&lab, lab.until_every_slot_is_recorded()).await;
    let (total, by_outcome, one_per_slot) = lab.ledger().await;
    assert_eq!(total, CHAMBERS * SLOTS, "{by_outcome:?}");
    assert!(one_per_slot, "{by_outcome:?}");
    let ok = by_outcome.get("ok").copied().unwrap_or(0);
    let expired: usize = by_outcome
        .iter()
        .filter(|(k, _)| k.starts_with("expired"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(ok + expired, CHAMBERS * SLOTS, "{by_outcome:?}");
    let depth = lab.queue.depth().await.unwrap();
    assert_eq!((depth.ready, depth.leased, depth.delayed), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_poll_the_store_refuses_does_not_hold_up_the_others() {
    // An operator removes a chamber's only detector while a poll of it is being fetched: the
    // store refuses that poll's reading (its detector is gone), and with it the whole batch.
    // The worker reads chambers through its cache, as `chamberlain worker` does: the refusal
    // must make it read the chamber again, or every later poll of it is refused too.
    let mut lab = lab(Away::Fails).await;
    lab.handler.reads = Arc::new(CachedChambers::new(
        lab.handler.reads.clone(),
        Duration::from_secs(60),
    ));
    let refused = &lab.chambers[0];
    *lab.client.remove_on_fetch.lock().unwrap() = Some(Removal {
        url: refused.endpoint.as_str().to_owned(),
        store: lab.store.clone(),
        org: lab.org,
        detector: lab.detectors[0].id,
    });
    let report = run_worker_while(&lab, lab.until_every_slot_is_recorded()).await;

    let (total, by_outcome, one_per_slot) = lab.ledger().await;
    assert_eq!(total, CHAMBERS * SLOTS, "{by_outcome:?}");
    assert!(one_per_slot, "a slot with two entries: {by_outcome:?}");
    let ok = by_outcome.get("ok").copied().unwrap_or(0);
    assert!(
        ok >= CHAMBERS * SLOTS - 1,
        "every other poll stored (the refused one fetched again, or expired): {by_outcome:?}"
    );
    assert!(
        report.failed_writes >= 1,
        "the store refused a write: {report:?}"
    );
    // The refused poll's reading of the removed detector is not stored: only its chamber's
    // later polls, without it.
    let stored = ReadingRepository::query(
        &*lab.store,
        lab.org,
        &ReadingQuery::all(ReadingScope::Chamber(refused.id)),
    )
    .await
    .unwrap();
    assert!(
        stored
            .items
            .iter()
            .all(|r| r.detector_id != lab.detectors[0].id),
        "nothing stored for the removed detector: {:?}",
        stored.items
    );
    let requests = lab.client.requests.load(Ordering::SeqCst);
    assert!(
        requests as usize <= ok + 2,
        "only the refused poll fetched again: {requests} requests, {ok} stored"
    );
    let depth = lab.queue.depth().await.unwrap();
    assert_eq!((depth.ready, depth.leased, depth.delayed), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn jobs_held_longer_than_the_visibility_timeout_are_not_taken_by_another_worker() {
    // The first worker leases every job at once and holds each until its slot, up to 20 s
    // ahead; the visibility timeout is 3 s, so a second worker would take over every job held
    // past it, and both would fetch it, unless the holder keeps its leases.
    let lab = lab(Away::Fails).await;
    let config = WorkerConfig {
        visibility: Duration::from_secs(3),
        ..config()
    };
    let mut stops = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let worker = Worker::new(lab.handler.clone(), lab.queue.clone(), config.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        workers.push(tokio::spawn(worker.run(async {
            let _ = stopped.await;
        })));
        stops.push(stop);
        // The first worker leases everything before the second asks.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lab.until_every_slot_is_recorded().await;
    for stop in stops {
        stop.send(()).unwrap();
    }
    for worker in workers {
        worker.await.unwrap();
    }

    let (total, by_outcome, one_per_slot) = lab.ledger().await;
    assert_eq!(total, CHAMBERS * SLOTS, "{by_outcome:?}");
    assert!(one_per_slot, "{by_outcome:?}");
    assert_eq!(
        by_outcome.get("ok").copied().unwrap_or(0),
        CHAMBERS * SLOTS,
        "{by_outcome:?}"
    );
    assert_eq!(
        lab.client.requests.load(Ordering::SeqCst) as usize,
        CHAMBERS * SLOTS,
        "every poll fetched once: none taken over by the second worker while held"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_slower_than_the_polls_stores_what_it_can_and_records_every_slot() {
    // Fetching every poll would take the store 1.55 s of writing a second: it can keep about
    // 31 of the 50 polls a second (each poll's entry 1 ms, its reading 30 ms). The worker,
    // holding at most a second of polls ahead (the rest wait in the queue), fetches what the
    // store can keep and no more; the other slots are recorded expired, store_behind.
    let lab = lab(Away::Slow).await;
    let config = WorkerConfig {
        max_waiting: CHAMBERS,
        lease_batch: CHAMBERS,
        ..config()
    };
    run_worker_with_while(&lab, config, lab.until_every_slot_is_recorded()).await;

    let (total, by_outcome, one_per_slot) = lab.ledger().await;
    assert_eq!(total, CHAMBERS * SLOTS, "{by_outcome:?}");
    assert!(one_per_slot, "{by_outcome:?}");
    let ok = by_outcome.get("ok").copied().unwrap_or(0);
    let behind = by_outcome.get("expired:store_behind").copied().unwrap_or(0);
    assert_eq!(ok + behind, CHAMBERS * SLOTS, "{by_outcome:?}");
    assert!(
        ok * 2 >= CHAMBERS * SLOTS,
        "at least half the slots fetched and stored (the store can keep about 62 %): {by_outcome:?}"
    );
    assert_eq!(
        lab.client.requests.load(Ordering::SeqCst),
        ok as u64,
        "every poll fetched was stored"
    );
}
