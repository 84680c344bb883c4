use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::T0;
use chamberlain_domain::model::{
    ChamberId, JobMetadata, PollId, PollInterval, PollJob, PollKind, Role,
};
use chamberlain_domain::ports::{
    DomainEvent, FetchError, LeasedJob, PollQueue, QueueError, Repositories, StoreError,
};
use chamberlain_domain::usecases::{
    Actor, ChamberAdmin, Completion, JobOutcome, NewChamber, NewDetector, NewSection, NewUser,
    PollHandler, ReadingQueries, UserAdmin,
};
use chamberlain_fakes::{
    InsecureTestPasswordHasher, ManualClock, MemoryStore, ScriptedChamberClient,
};
use chamberlain_memory::{
    MemoryAccessEpoch, MemoryChamberChanges, MemoryEventBus, MemoryPollQueue,
};
use tokio::sync::broadcast;

/// The whole domain wired to in-memory adapters, on a manual clock.
pub struct Harness {
    pub store: Arc<MemoryStore>,
    /// Every repository port, over `store`.
    pub repositories: Repositories,
    pub queue: Arc<MemoryPollQueue>,
    pub clock: Arc<ManualClock>,
    pub client: Arc<ScriptedChamberClient>,
    pub events: Arc<MemoryEventBus>,
    pub changes: Arc<MemoryChamberChanges>,
    /// The access epoch every authenticator and `users` share, as replicas share Redis's.
    pub access: Arc<MemoryAccessEpoch>,
    pub handler: PollHandler,
    pub admin: ChamberAdmin,
    pub users: UserAdmin,
    pub queries: ReadingQueries,
}

impl Harness {
    pub fn new() -> Self {
        let store = Arc::new(MemoryStore::new());
        let clock = ManualClock::at(T0);
        let queue = Arc::new(MemoryPollQueue::new(clock.clone()));
        let client = Arc::new(ScriptedChamberClient::new());
        let events = Arc::new(MemoryEventBus::new(1024));
        let changes = Arc::new(MemoryChamberChanges::new(1024));
        let repositories = Repositories::of(store.clone());
        let access = Arc::new(MemoryAccessEpoch::default());
        let handler =
            PollHandler::new(&repositories, client.clone(), events.clone(), clock.clone());
        let admin = ChamberAdmin::new(
            &repositories,
            changes.clone(),
            events.clone(),
            clock.clone(),
        );
        let users = UserAdmin::new(
            &repositories,
            Arc::new(InsecureTestPasswordHasher),
            access.clone(),
            clock.clone(),
        );
        let queries = ReadingQueries::new(&repositories);
        Self {
            store,
            repositories,
            queue,
            clock,
            client,
            events,
            changes,
            access,
            handler,
            admin,
            users,
            queries,
        }
    }

    /// Another user of `admin`'s organization, with the given role.
    pub async fn tenant_user(&self, admin: &Actor, label: &str, role: Role) -> Actor {
        let user = self
            .users
            .create_user(
                admin,
                NewUser {
                    email: format!("{label}@users.example"),
                    display_name: label.into(),
                    role: role.as_str().into(),
                    password: None,
                },
            )
            .await
            .expect("user created");
        Actor {
            user_id: user.id,
            organization_id: admin.organization_id,
            role,
        }
    }

    /// A new organization and an actor of the given role in it.
    pub async fn tenant(&self, label: &str, role: Role) -> Actor {
        let (org, admin) = self
            .users
            .create_organization(
                &format!("org {label}"),
                NewUser {
                    email: format!("admin@{label}.example"),
                    display_name: format!("{label} admin"),
                    role: "admin".into(),
                    password: None,
                },
            )
            .await
            .expect("organization created");
        let admin_actor = Actor {
            user_id: admin.id,
            organization_id: org.id,
            role: Role::Admin,
        };
        if role == Role::Admin {
            return admin_actor;
        }
        let user = self
            .users
            .create_user(
                &admin_actor,
                NewUser {
                    email: format!("{role}@{label}.example"),
                    display_name: format!("{label} {role}"),
                    role: role.as_str().into(),
                    password: None,
                },
            )
            .await
            .expect("user created");
        Actor {
            user_id: user.id,
            organization_id: org.id,
            role,
        }
    }

    /// A section and a JSON chamber at 1 s with detectors `temperature` (/t, -40..=125) and
    /// `humidity` (/h, 0..=100), answering at `http://chamber.test/<label>`.
    pub async fn json_chamber(
        &self,
        actor: &Actor,
        label: &str,
    ) -> chamberlain_domain::ports::ChamberWithDetectors {
        let section = self
            .admin
            .create_section(
                actor,
                NewSection {
                    name: format!("room {label}"),
                    description: String::new(),
                },
            )
            .await
            .expect("section created");
        self.admin
            .create_chamber(
                actor,
                NewChamber {
                    section_id: section.id,
                    name: label.into(),
                    url: format!("http://chamber.test/{label}"),
                    format: "json".into(),
                    interval: Duration::from_secs(1),
                    timeout: None,
                    detectors: vec![
                        NewDetector {
                            name: "temperature".into(),
                            unit: "°C".into(),
                            key: "/t".into(),
                            min: Some(-40.0),
                            max: Some(125.0),
                            ..Default::default()
                        },
                        NewDetector {
                            name: "humidity".into(),
                            unit: "%RH".into(),
                            key: "/h".into(),
                            min: Some(0.0),
                            max: Some(100.0),
                            ..Default::default()
                        },
                    ],
                },
            )
            .await
            .expect("chamber created")
    }

    /// Enqueues the poll of `chamber` at `slot` and leases it.
    pub async fn lease_poll(
        &self,
        actor: &Actor,
        chamber: ChamberId,
        slot: Timestamp,
        kind: PollKind,
    ) -> LeasedJob {
        self.lease_poll_every(actor, chamber, slot, kind, 1).await
    }

    /// As [`Harness::lease_poll`], for a job scheduled with an interval of `interval_s`.
    pub async fn lease_poll_every(
        &self,
        actor: &Actor,
        chamber: ChamberId,
        slot: Timestamp,
        kind: PollKind,
        interval_s: u64,
    ) -> LeasedJob {
        let job = PollJob {
            poll: PollId {
                chamber_id: chamber,
                slot,
            },
            organization_id: actor.organization_id,
            interval: PollInterval::from_secs(interval_s).unwrap(),
            kind,
            meta: JobMetadata {
                trace: None,
                attempt: 1,
                enqueued_at: slot,
            },
        };
        let report = self.queue.enqueue(&[job]).await.unwrap();
        assert_eq!(report.new, 1);
        let mut leased = self
            .queue
            .lease(1, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
        leased.pop().expect("job leased")
    }
}

/// Everything published so far (without waiting).
pub fn drain(rx: &mut broadcast::Receiver<Arc<DomainEvent>>) -> Vec<DomainEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(Arc::unwrap_or_clone(e));
    }
    out
}

/// What [`play_worker`] did with one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Completed(Completion),
    Retried { delay: Duration, error: FetchError },
    Discarded,
}

/// Why [`play_worker`] left a job to be delivered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotHandled {
    Store(StoreError),
    Queue(QueueError),
}

/// Plays the worker's part for one job, as `chamberlain-worker` does for many: the handler's
/// outcome, then one call to the queue (acknowledged after a completed write or for a
/// discard, released for a retry; nothing when the poll could not be handled).
pub async fn play_worker(
    handler: &PollHandler,
    queue: &dyn PollQueue,
    leased: LeasedJob,
) -> Result<Handled, NotHandled> {
    let receipt = std::slice::from_ref(&leased.receipt);
    match handler
        .fetch(&leased.job)
        .await
        .map_err(NotHandled::Store)?
    {
        JobOutcome::Done(poll) => {
            let done = handler
                .complete(vec![poll])
                .await
                .map_err(NotHandled::Store)?;
            queue.ack(receipt).await.map_err(NotHandled::Queue)?;
            Ok(Handled::Completed(done))
        }
        JobOutcome::Retry { delay, error } => {
            queue
                .release(&leased.receipt, delay)
                .await
                .map_err(NotHandled::Queue)?;
            Ok(Handled::Retried { delay, error })
        }
        JobOutcome::Discard => {
            queue.ack(receipt).await.map_err(NotHandled::Queue)?;
            Ok(Handled::Discarded)
        }
    }
}

impl Harness {
    /// [`play_worker`] with the harness's handler and queue.
    pub async fn handle(&self, leased: LeasedJob) -> Result<Handled, NotHandled> {
        play_worker(&self.handler, &*self.queue, leased).await
    }
}
