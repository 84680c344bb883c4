//! Whole-server events on a private Redis (nextest runs tests named `server_restart::` one at a
//! time): a pause, a restart, and a leader dying.

mod server_restart {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use chamberlain_domain::Timestamp;
    use chamberlain_domain::conformance::fixtures::poll_job;
    use chamberlain_domain::model::{ChamberId, OrganizationId, PollJob};
    use chamberlain_domain::ports::{LeaderLease, PollQueue};
    use chamberlain_memory::SystemClock;
    use chamberlain_redis::testing::{PrivateRedis, TestPrefix};
    use chamberlain_redis::{RedisLeaderLease, RedisPollQueue};

    fn jobs(n: usize) -> Vec<PollJob> {
        let org = OrganizationId::random();
        let t = Timestamp::from_unix_millis(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        );
        (0..n)
            .map(|_| poll_job(org, ChamberId::random(), t, 1, t))
            .collect()
    }

    /// A consumer as a worker runs it: lease, ack, and on an error try again.
    async fn consume(q: RedisPollQueue, want: usize, within: Duration) -> (usize, usize) {
        let deadline = Instant::now() + within;
        let (mut done, mut errors) = (0, 0);
        while done < want && Instant::now() < deadline {
            match q
                .lease(100, Duration::from_secs(30), Duration::from_millis(500))
                .await
            {
                Ok(leased) => {
                    let receipts: Vec<_> = leased.iter().map(|l| l.receipt.clone()).collect();
                    match q.ack(&receipts).await {
                        Ok(n) => done += n as usize,
                        Err(_) => errors += 1,
                    }
                }
                Err(_) => errors += 1,
            }
        }
        (done, errors)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumers_carry_on_through_a_two_second_pause() {
        let redis = PrivateRedis::start();
        let prefix = TestPrefix::on(&redis.url());
        let q = RedisPollQueue::connect(&prefix.config).await.unwrap();
        q.enqueue(&jobs(100)).await.unwrap();
        let client = redis::Client::open(redis.url()).unwrap();
        let mut admin = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(2000)
            .query_async(&mut admin)
            .await
            .unwrap();
        let consumer = tokio::spawn(consume(q.clone(), 200, Duration::from_secs(20)));
        // Enqueued during the pause: the call waits it out instead of failing.
        let report = q
            .enqueue(&jobs(100))
            .await
            .expect("enqueue rides out the pause");
        assert_eq!(report.new, 100);
        let (done, errors) = consumer.await.unwrap();
        assert_eq!(done, 200);
        assert_eq!(errors, 0, "no call failed during a 2 s pause");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumers_carry_on_after_a_redis_restart() {
        let mut redis = PrivateRedis::start();
        let prefix = TestPrefix::on(&redis.url());
        let q = RedisPollQueue::connect(&prefix.config).await.unwrap();
        q.enqueue(&jobs(10)).await.unwrap();
        assert_eq!(consume(q.clone(), 10, Duration::from_secs(10)).await.0, 10);
        // Restarted without persistence: the stream and its consumer group are gone.
        redis.restart();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut enqueued = 0;
        while enqueued < 10 {
            assert!(Instant::now() < deadline, "enqueue never recovered");
            if let Ok(r) = q.enqueue(&jobs(10)).await {
                enqueued += r.new;
            }
        }
        let (done, _errors) = consume(q, 10, Duration::from_secs(15)).await;
        assert_eq!(
            done, 10,
            "the same queue object consumes again, no restart of the worker needed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lease_has_one_holder_and_passes_on_within_two_ttls() {
        let prefix = TestPrefix::new();
        let ttl = Duration::from_millis(1000);
        let a = Arc::new(
            RedisLeaderLease::connect(&prefix.config, Arc::new(SystemClock))
                .await
                .unwrap(),
        );
        let b = RedisLeaderLease::connect(&prefix.config, Arc::new(SystemClock))
            .await
            .unwrap();
        let grant_a = a
            .acquire("scheduler-a", ttl)
            .await
            .unwrap()
            .expect("free lease");
        // A renews every TTL/5 for three TTLs; B contends all along and never gets it.
        let renewer = {
            let (a, grant) = (a.clone(), grant_a.clone());
            tokio::spawn(async move {
                let until = Instant::now() + ttl * 3;
                while Instant::now() < until {
                    assert!(
                        a.renew(&grant, ttl).await.unwrap().is_some(),
                        "the holder lost its lease"
                    );
                    tokio::time::sleep(ttl / 5).await; // the renewal period, not a wait for a condition
                }
            })
        };
        let contend_until = Instant::now() + ttl * 3;
        while Instant::now() < contend_until {
            assert!(
                b.acquire("scheduler-b", ttl).await.unwrap().is_none(),
                "two holders at once"
            );
            tokio::time::sleep(ttl / 10).await; // the contention period
        }
        renewer.await.unwrap();
        // A dies (stops renewing, releases nothing). B takes over within two TTLs.
        let died = Instant::now();
        let grant_b = loop {
            if let Some(g) = b.acquire("scheduler-b", ttl).await.unwrap() {
                break g;
            }
            assert!(died.elapsed() < ttl * 2, "no takeover within two TTLs");
            tokio::time::sleep(ttl / 10).await; // the contention period
        };
        assert!(grant_b.fencing_token > grant_a.fencing_token);
        assert!(
            a.renew(&grant_a, ttl).await.unwrap().is_none(),
            "the old holder learns it is deposed"
        );
    }
}
