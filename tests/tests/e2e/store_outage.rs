//! The pipeline while its PostgreSQL is away, on a private server with its default settings
//! (nextest runs `server_restart::` tests one at a time): frozen with SIGSTOP, or stopped and
//! started again, under load. A `chamberlain worker` process (its `/metrics` scraped as
//! Prometheus would), the scheduler in this process, Redis under a prefix of the test's own,
//! simulated chambers that count every request.

mod server_restart {
    use std::collections::HashMap;
    use std::process::Child;
    use std::sync::Arc;
    use std::time::Duration;

    use chamberlain_domain::Timestamp;
    use chamberlain_postgres::testing::{PrivatePostgres, fresh_store_on};
    use chamberlain_redis::RedisPollQueue;
    use chamberlain_redis::testing::TestPrefix;
    use chamberlain_simulator::{Simulator, SimulatorConfig, SimulatorHandle};
    use tokio::sync::oneshot;

    use crate::support::{self, Fleet, check_every_slot_once, drained, now, spawn, terminate};

    const CHAMBERS: u32 = 200;
    /// The worker's bound on results waiting: five seconds of the fleet.
    const BOUND: u64 = 1_000;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// The worker's gauges, as Prometheus reads them.
    #[derive(Debug, Default, Clone, Copy)]
    struct Gauges {
        waiting: u64,
        waiting_bytes: u64,
        behind: bool,
    }

    async fn scrape(port: u16) -> Option<Gauges> {
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(2),
            chamberlain_tests::api_stack::http_request(port, "GET", "/metrics", None, None, &[]),
        )
        .await
        .ok()?;
        if status != 200 {
            return None;
        }
        let value = |name: &str| {
            body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
                let (metric, value) = l.rsplit_once(' ')?;
                let bare = metric.split('{').next()?;
                (bare == name).then(|| value.parse::<f64>().ok())?
            })
        };
        Some(Gauges {
            waiting: value("chamberlain_worker_results_waiting")? as u64,
            waiting_bytes: value("chamberlain_worker_results_waiting_bytes")? as u64,
            behind: value("chamberlain_worker_store_behind")? > 0.0,
        })
    }

    struct Run {
        sim: SimulatorHandle,
        fleet: Fleet,
        prefix: TestPrefix,
        queue: Arc<RedisPollQueue>,
        worker: Child,
        metrics_port: u16,
    }

    async fn start(pg: &PrivatePostgres) -> Run {
        let sim = Simulator::start(
            SimulatorConfig::builder()
                .chambers(CHAMBERS)
                .detectors(2)
                .interval(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
        let store = fresh_store_on(&pg.url()).await;
        let fleet = support::fleet_on(&sim, CHAMBERS, store, pg.url(), None).await;
        let prefix = TestPrefix::new();
        let queue = Arc::new(RedisPollQueue::connect(&prefix.config).await.unwrap());
        let metrics_port = free_port();
        let worker = spawn_worker(&fleet, &prefix, metrics_port);
        Run {
            sim,
            fleet,
            prefix,
            queue,
            worker,
            metrics_port,
        }
    }

    /// A `chamberlain worker` with a bound of `BOUND` results waiting and a 10 s visibility.
    fn spawn_worker(fleet: &Fleet, prefix: &TestPrefix, metrics_port: u16) -> Child {
        let listen = format!("127.0.0.1:{metrics_port}");
        let bound = BOUND.to_string();
        spawn(
            "worker",
            fleet,
            prefix,
            &[
                ("CHAMBERLAIN_METRICS_LISTEN", listen.as_str()),
                ("CHAMBERLAIN_WORKER_MAX_RESULTS_WAITING", bound.as_str()),
                ("CHAMBERLAIN_WORKER_VISIBILITY_SECS", "10"),
            ],
        )
    }

    /// Scrapes the worker every 200 ms until `stop` fires; returns every sample.
    fn watch(port: u16, mut stop: oneshot::Receiver<()>) -> tokio::task::JoinHandle<Vec<Gauges>> {
        tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                if let Some(g) = scrape(port).await {
                    samples.push(g);
                }
                tokio::select! {
                    _ = &mut stop => return samples,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {} // the scrape interval
                }
            }
        })
    }

    /// Every ok entry in the fleet's whole ledger.
    async fn stored_ok(fleet: &Fleet) -> u64 {
        let (from, to) = (
            Timestamp::from_unix_millis(0),
            Timestamp::from_unix_millis(i64::MAX / 4),
        );
        let mut ok = 0;
        for c in &fleet.chambers {
            ok += fleet
                .ledger(c, from, to)
                .await
                .iter()
                .filter(|e| e.outcome.code() == "ok")
                .count() as u64;
        }
        ok
    }

    /// What happens to the database (and the worker) five seconds into the run.
    #[derive(Debug, Clone, Copy)]
    enum Outage {
        /// PostgreSQL frozen with SIGSTOP for this long.
        Freeze(Duration),
        /// PostgreSQL stopped for this long, then started again.
        Stop(Duration),
        /// PostgreSQL frozen until the worker is behind; the worker gets SIGTERM and must exit
        /// within Docker's 10 s; PostgreSQL thaws and a second worker takes over.
        FreezeAndStopTheWorker,
    }

    /// Runs the fleet for five seconds, lets `outage` do its worst, runs ten seconds more,
    /// stops everything in order, and checks the ledger: every slot of the window once, every
    /// answer a chamber gave stored (or, for a worker stopped with results it could not store,
    /// its job left unacknowledged and so fetched again or expired), nothing fetched twice on
    /// its first attempt. Returns the outcomes, the gauges seen, and the chambers' report.
    async fn through_an_outage(
        pg: &PrivatePostgres,
        outage: Outage,
    ) -> (HashMap<&'static str, usize>, Vec<Gauges>, u64, u64) {
        let mut run = start(pg).await;
        let scheduler = support::scheduler(&run.fleet, &run.prefix, "scheduler-outage").await;
        let (stop_scheduler, scheduler_stopped) = oneshot::channel::<()>();
        let started = now();
        let scheduler = tokio::spawn(scheduler.run(async {
            let _ = scheduler_stopped.await;
        }));
        let (stop_watching, watching) = oneshot::channel();
        let watcher = watch(run.metrics_port, watching);
        tokio::time::sleep(Duration::from_secs(5)).await; // polling before the outage
        match outage {
            Outage::Freeze(d) => {
                pg.pause();
                tokio::time::sleep(d).await; // the freeze itself
                pg.resume();
            }
            Outage::Stop(d) => {
                pg.stop();
                tokio::time::sleep(d).await; // the outage itself
                pg.start_again();
            }
            Outage::FreezeAndStopTheWorker => {
                pg.pause();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while !scrape(run.metrics_port).await.is_some_and(|g| g.behind) {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the worker never fell behind"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await; // polling the condition, with a deadline
                }
                let stopping = std::time::Instant::now();
                terminate(&mut run.worker);
                let took = stopping.elapsed();
                assert!(
                    took < Duration::from_secs(10),
                    "the worker took {took:?} to stop; Docker kills it at 10 s"
                );
                pg.resume();
                run.worker = spawn_worker(&run.fleet, &run.prefix, run.metrics_port);
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await; // polling after it
        let _ = stop_scheduler.send(());
        scheduler.await.unwrap();
        let ended = now();
        drained(&run.queue).await;
        let _ = stop_watching.send(());
        let samples = watcher.await.unwrap();
        terminate(&mut run.worker);

        let outcomes = check_every_slot_once(
            &run.fleet,
            Timestamp::from_unix_millis(started.as_unix_millis() + 2000),
            Timestamp::from_unix_millis(ended.as_unix_millis() - 1000),
        )
        .await;
        assert!(
            outcomes.keys().all(|k| ["ok", "expired"].contains(k)),
            "{outcomes:?}"
        );
        let ok = stored_ok(&run.fleet).await;
        let report = run.sim.shutdown().await;
        assert_eq!(
            report.duplicates.attempt_one, 0,
            "no poll fetched twice on its first attempt"
        );
        drop(run.prefix);
        (outcomes, samples, report.requests, ok)
    }

    fn assert_bounded(samples: &[Gauges]) {
        assert!(
            samples.len() > 50,
            "the worker's metrics were read: {}",
            samples.len()
        );
        let most = samples.iter().map(|g| g.waiting).max().unwrap_or(0);
        let most_bytes = samples.iter().map(|g| g.waiting_bytes).max().unwrap_or(0);
        assert!(
            most <= BOUND,
            "results waiting peaked at {most}; the bound is {BOUND}"
        );
        assert!(
            most_bytes <= 64 * 1024 * 1024,
            "results waiting peaked at {most_bytes} bytes"
        );
        assert!(
            samples.iter().any(|g| g.behind),
            "the worker stopped taking polls while the store was away"
        );
        assert!(
            !samples.last().unwrap().behind,
            "and took them again by itself once it was back"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_frozen_for_30_s_under_load_bounds_the_worker_and_loses_nothing() {
        let pg = PrivatePostgres::start();
        let (outcomes, samples, answered, stored) =
            through_an_outage(&pg, Outage::Freeze(Duration::from_secs(30))).await;
        assert_bounded(&samples);
        assert_eq!(
            answered, stored,
            "every request a chamber answered is stored, once: {outcomes:?}"
        );
        assert!(
            outcomes.get("expired").copied().unwrap_or(0) > 0,
            "slots due while the worker held back expired: {outcomes:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_stopped_for_20_s_under_load_and_started_again_loses_nothing() {
        let pg = PrivatePostgres::start();
        let (outcomes, samples, answered, stored) =
            through_an_outage(&pg, Outage::Stop(Duration::from_secs(20))).await;
        assert_bounded(&samples);
        assert_eq!(
            answered, stored,
            "every request a chamber answered is stored, once: {outcomes:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_stopped_with_results_it_cannot_store_acknowledges_none_of_them() {
        let pg = PrivatePostgres::start();
        let (outcomes, _samples, answered, stored) =
            through_an_outage(&pg, Outage::FreezeAndStopTheWorker).await;
        // Every slot has its one entry (checked): what the first worker fetched and could not
        // store was not acknowledged, so its job came back — fetched again on a later attempt,
        // or expired. Nothing was stored twice.
        assert!(
            answered > stored,
            "the first worker's unstored answers were fetched again or expired: {answered} answered, {stored} stored ({outcomes:?})"
        );
    }
}
