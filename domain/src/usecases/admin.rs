//! Configuration by lab operators: sections, chambers, detectors and batches, with role checks
//! and tenant isolation. Every chamber write is published on the change feed.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Rule, ValidationError};
use crate::limits::{MAX_DETECTORS_PER_CHAMBER, MAX_POLL_INTERVAL};
use crate::model::{
    Batch, BatchId, Chamber, ChamberId, ChamberState, Description, Detector, DetectorId,
    DetectorKey, EndpointUrl, HealthPolicy, HealthState, IntervalFloor, Name, Page, PageRequest,
    PlausibleRange, PollInterval, PollTimeout, ResponseFormat, Role, Section, SectionId, Unit,
};
use crate::ports::{
    BatchRepository, ChamberChange, ChamberChanges, ChamberFilter, ChamberHealthRepository,
    ChamberRepository, ChamberWithDetectors, Clock, DetectorRepository, DomainEvent,
    EventPublisher, Repositories, RoutingTag, SectionRepository,
};
use crate::usecases::{Actor, UseCaseError};

/// A section as a user submits it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewSection {
    pub name: String,
    pub description: String,
}

/// A detector as a user submits it; checked against its chamber's format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewDetector {
    pub name: String,
    pub alias: Option<String>,
    pub unit: String,
    pub key: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// A chamber with its detectors, as a user submits it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChamber {
    pub section_id: SectionId,
    pub name: String,
    pub url: String,
    /// `json` or `prometheus`; empty means `json`.
    pub format: String,
    pub interval: Duration,
    /// Default: min(interval, 10 s).
    pub timeout: Option<Duration>,
    pub detectors: Vec<NewDetector>,
}

/// Changes to a chamber; `None` leaves a field as it is. Interval, pause and resume have their
/// own calls because they move the schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChamberPatch {
    pub name: Option<String>,
    pub url: Option<String>,
    pub section_id: Option<SectionId>,
    pub timeout: Option<Duration>,
}

/// Installation-wide settings of chamber administration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdminSettings {
    pub interval_floor: IntervalFloor,
}

/// A chamber as the API and the console show it: its detectors and its health as last
/// observed (`None` before its first poll).
#[derive(Debug, Clone, PartialEq)]
pub struct ChamberView {
    pub chamber: Chamber,
    pub detectors: Vec<Detector>,
    pub health: Option<HealthState>,
}

/// The configuration use cases.
#[derive(Clone)]
pub struct ChamberAdmin {
    pub sections: Arc<dyn SectionRepository>,
    pub chambers: Arc<dyn ChamberRepository>,
    pub detectors: Arc<dyn DetectorRepository>,
    pub batches: Arc<dyn BatchRepository>,
    /// Read only, for [`ChamberView`]s.
    pub health: Arc<dyn ChamberHealthRepository>,
    pub changes: Arc<dyn ChamberChanges>,
    pub events: Arc<dyn EventPublisher>,
    pub clock: Arc<dyn Clock>,
    pub settings: AdminSettings,
}

impl std::fmt::Debug for ChamberAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChamberAdmin")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

type Result<T> = std::result::Result<T, UseCaseError>;

/// Validates one submitted detector for a chamber of `format`; fields are named
/// `detectors[index].field`.
///
/// # Errors
/// The first [`ValidationError`] found.
pub fn validate_detector(
    format: ResponseFormat,
    index: usize,
    d: &NewDetector,
) -> std::result::Result<(Name, Option<Name>, Unit, DetectorKey, PlausibleRange), ValidationError> {
    let at = format!("detectors[{index}]");
    let name = Name::parse(&d.name).map_err(|e| e.within(&at))?;
    let alias = match d.alias.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(a) => Some(Name::parse(a).map_err(|e| e.for_field("alias").within(&at))?),
    };
    let unit = Unit::parse(&d.unit).map_err(|e| e.within(&at))?;
    let key = DetectorKey::parse(format, &d.key).map_err(|e| e.within(&at))?;
    let range = PlausibleRange::new(d.min, d.max).map_err(|e| e.within(&at))?;
    Ok((name, alias, unit, key, range))
}

impl ChamberAdmin {
    /// With the default [`AdminSettings`].
    pub fn new(
        repositories: &Repositories,
        changes: Arc<dyn ChamberChanges>,
        events: Arc<dyn EventPublisher>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            sections: repositories.sections.clone(),
            chambers: repositories.chambers.clone(),
            detectors: repositories.detectors.clone(),
            batches: repositories.batches.clone(),
            health: repositories.health.clone(),
            changes,
            events,
            clock,
            settings: AdminSettings::default(),
        }
    }

    #[must_use]
    pub fn with_settings(mut self, settings: AdminSettings) -> Self {
        self.settings = settings;
        self
    }

    // ----- sections -----

    /// # Errors
    /// `Forbidden` below operator; `Invalid` (`section.name`, `section.description`);
    /// `Duplicate`; `Unavailable`.
    pub async fn create_section(&self, actor: &Actor, new: NewSection) -> Result<Section> {
        actor.require(Role::Operator, "create a section")?;
        let section = Section {
            id: SectionId::random(),
            organization_id: actor.organization_id,
            name: Name::parse(&new.name).map_err(|e| e.within("section"))?,
            description: Description::parse(&new.description).map_err(|e| e.within("section"))?,
            created_at: self.clock.now(),
        };
        self.sections.create(&section).await?;
        Ok(section)
    }

    /// # Errors
    /// `NotFound`; `Unavailable`.
    pub async fn get_section(&self, actor: &Actor, id: SectionId) -> Result<Section> {
        actor.require(Role::Viewer, "read sections")?;
        Ok(self.sections.get(actor.organization_id, id).await?)
    }

    /// # Errors
    /// `Unavailable`.
    pub async fn list_sections(
        &self,
        actor: &Actor,
        page: PageRequest<SectionId>,
    ) -> Result<Page<Section, SectionId>> {
        actor.require(Role::Viewer, "list sections")?;
        Ok(self.sections.list(actor.organization_id, page).await?)
    }

    /// # Errors
    /// `Forbidden`; `Invalid`; `NotFound`; `Duplicate`; `Unavailable`.
    pub async fn update_section(
        &self,
        actor: &Actor,
        id: SectionId,
        new: NewSection,
    ) -> Result<Section> {
        actor.require(Role::Operator, "update a section")?;
        let mut section = self.sections.get(actor.organization_id, id).await?;
        section.name = Name::parse(&new.name).map_err(|e| e.within("section"))?;
        section.description =
            Description::parse(&new.description).map_err(|e| e.within("section"))?;
        self.sections.update(&section).await?;
        Ok(section)
    }

    /// # Errors
    /// `Forbidden`; `NotFound`; `FailedPrecondition` while it holds chambers or batches;
    /// `Unavailable`.
    pub async fn delete_section(&self, actor: &Actor, id: SectionId) -> Result<()> {
        actor.require(Role::Operator, "delete a section")?;
        Ok(self.sections.delete(actor.organization_id, id).await?)
    }

    // ----- chambers -----

    /// Creates a chamber with its detectors, all or nothing.
    ///
    /// # Errors
    /// `Forbidden`; `Invalid` naming the field (`chamber.url`, `detectors[2].key`, ...);
    /// `NotFound { entity: "section" }`; `Duplicate`; `Unavailable`.
    pub async fn create_chamber(
        &self,
        actor: &Actor,
        new: NewChamber,
    ) -> Result<ChamberWithDetectors> {
        actor.require(Role::Operator, "create a chamber")?;
        let created = self.build_chamber(actor, &new, self.clock.now())?;
        // The section must be the caller's: another tenant's section is "not found".
        self.sections
            .get(actor.organization_id, new.section_id)
            .await?;
        self.chambers
            .create(&created.chamber, &created.detectors)
            .await?;
        self.publish_upsert(&created.chamber).await;
        Ok(created)
    }

    /// A submitted chamber checked and turned into the rows to store (the section is not
    /// looked up here).
    pub(crate) fn build_chamber(
        &self,
        actor: &Actor,
        new: &NewChamber,
        now: crate::time::Timestamp,
    ) -> std::result::Result<ChamberWithDetectors, ValidationError> {
        let name = Name::parse(&new.name).map_err(|e| e.within("chamber"))?;
        let endpoint = EndpointUrl::parse(&new.url).map_err(|e| e.within("chamber"))?;
        // Unset (proto3's empty string) means JSON, the default the API documents.
        let format = match new.format.trim() {
            "" => ResponseFormat::Json,
            raw => ResponseFormat::parse(raw).map_err(|e| e.within("chamber"))?,
        };
        let interval = PollInterval::new(new.interval, self.settings.interval_floor)
            .map_err(|e| e.within("chamber"))?;
        let timeout = match new.timeout {
            Some(t) => PollTimeout::new(t, interval).map_err(|e| e.within("chamber"))?,
            None => PollTimeout::default_for(interval),
        };
        if new.detectors.is_empty() || new.detectors.len() > MAX_DETECTORS_PER_CHAMBER {
            return Err(ValidationError::new(
                "chamber.detectors",
                Rule::OutOfRange {
                    min: "1".into(),
                    max: MAX_DETECTORS_PER_CHAMBER.to_string(),
                    actual: new.detectors.len().to_string(),
                },
            ));
        }
        let chamber = Chamber {
            id: ChamberId::random(),
            organization_id: actor.organization_id,
            section_id: new.section_id,
            name,
            endpoint,
            format,
            interval,
            timeout,
            state: ChamberState::Active,
            health_policy: HealthPolicy::default(),
            schedule_since: now,
            created_at: now,
            updated_at: now,
        };
        let mut detectors = Vec::with_capacity(new.detectors.len());
        for (i, d) in new.detectors.iter().enumerate() {
            let (name, alias, unit, key, range) = validate_detector(format, i, d)?;
            if detectors.iter().any(|x: &Detector| x.name == name) {
                return Err(ValidationError::new(
                    format!("detectors[{i}].name"),
                    Rule::Inconsistent("must be unique within the chamber".into()),
                ));
            }
            detectors.push(Detector {
                id: DetectorId::random(),
                chamber_id: chamber.id,
                organization_id: actor.organization_id,
                name,
                alias,
                unit,
                key,
                range,
            });
        }
        Ok(ChamberWithDetectors { chamber, detectors })
    }

    /// # Errors
    /// `NotFound`; `Unavailable`.
    pub async fn get_chamber(&self, actor: &Actor, id: ChamberId) -> Result<ChamberWithDetectors> {
        actor.require(Role::Viewer, "read chambers")?;
        let chamber = self.chambers.get(actor.organization_id, id).await?;
        let detectors = self
            .detectors
            .list_for_chamber(actor.organization_id, id)
            .await?;
        Ok(ChamberWithDetectors { chamber, detectors })
    }

    /// The chamber with its detectors and health.
    ///
    /// # Errors
    /// `NotFound`; `Unavailable` (the health read too: a view is never silently partial).
    pub async fn chamber_view(&self, actor: &Actor, id: ChamberId) -> Result<ChamberView> {
        let c = self.get_chamber(actor, id).await?;
        self.view_of(c).await
    }

    /// Adds the health to a chamber the caller has just read or written.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn view_of(&self, c: ChamberWithDetectors) -> Result<ChamberView> {
        let health = self.health.get(c.chamber.id).await?.map(|h| h.state);
        Ok(ChamberView {
            chamber: c.chamber,
            detectors: c.detectors,
            health,
        })
    }

    /// A page of chambers, each with its detectors and health (one read of each for the page).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn list_chamber_views(
        &self,
        actor: &Actor,
        filter: ChamberFilter,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<ChamberView, ChamberId>> {
        let p = self.list_chambers(actor, filter, page).await?;
        let ids: Vec<ChamberId> = p.items.iter().map(|c| c.id).collect();
        let healths = self.health.get_many(&ids).await?;
        let mut detectors = self
            .detectors
            .list_for_chambers(actor.organization_id, &ids)
            .await?;
        Ok(Page {
            items: p
                .items
                .into_iter()
                .map(|chamber| {
                    let health = healths
                        .iter()
                        .find(|h| h.chamber_id == chamber.id)
                        .map(|h| h.state);
                    let (own, rest) = detectors
                        .drain(..)
                        .partition(|d: &Detector| d.chamber_id == chamber.id);
                    detectors = rest;
                    ChamberView {
                        chamber,
                        detectors: own,
                        health,
                    }
                })
                .collect(),
            next: p.next,
        })
    }

    /// # Errors
    /// `Unavailable`.
    pub async fn list_chambers(
        &self,
        actor: &Actor,
        filter: ChamberFilter,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>> {
        actor.require(Role::Viewer, "list chambers")?;
        Ok(self
            .chambers
            .list(actor.organization_id, filter, page)
            .await?)
    }

    /// # Errors
    /// `Forbidden`; `Invalid`; `NotFound` (the chamber, or a target section); `Duplicate`;
    /// `Unavailable`.
    pub async fn update_chamber(
        &self,
        actor: &Actor,
        id: ChamberId,
        patch: ChamberPatch,
    ) -> Result<Chamber> {
        actor.require(Role::Operator, "update a chamber")?;
        let mut chamber = self.chambers.get(actor.organization_id, id).await?;
        if let Some(name) = &patch.name {
            chamber.name = Name::parse(name).map_err(|e| e.within("chamber"))?;
        }
        if let Some(url) = &patch.url {
            chamber.endpoint = EndpointUrl::parse(url).map_err(|e| e.within("chamber"))?;
        }
        if let Some(t) = patch.timeout {
            chamber.timeout =
                PollTimeout::new(t, chamber.interval).map_err(|e| e.within("chamber"))?;
        }
        if let Some(section) = patch.section_id {
            self.sections.get(actor.organization_id, section).await?;
            chamber.section_id = section;
        }
        chamber.updated_at = self.clock.now();
        self.chambers.update(&chamber).await?;
        self.publish_upsert(&chamber).await;
        Ok(chamber)
    }

    /// Sets the poll interval. The schedule moves to the new interval's grid from the first
    /// slot after now; a timeout longer than the new interval is shortened to it.
    ///
    /// # Errors
    /// `Forbidden`; `Invalid` (`chamber.interval`); `NotFound`; `Unavailable`.
    pub async fn set_interval(
        &self,
        actor: &Actor,
        id: ChamberId,
        interval: Duration,
    ) -> Result<Chamber> {
        actor.require(Role::Operator, "change a chamber's interval")?;
        let interval = PollInterval::new(interval, self.settings.interval_floor)
            .map_err(|e| e.within("chamber"))?;
        let mut chamber = self.chambers.get(actor.organization_id, id).await?;
        if chamber.interval == interval {
            return Ok(chamber);
        }
        let now = self.clock.now();
        chamber.interval = interval;
        if chamber.timeout.as_duration() > interval.as_duration() {
            chamber.timeout = PollTimeout::new(interval.as_duration(), interval)?;
        }
        chamber.schedule_since = now;
        chamber.updated_at = now;
        self.chambers.update(&chamber).await?;
        self.publish_upsert(&chamber).await;
        Ok(chamber)
    }

    /// Sets when failures change the chamber's health: degraded after `degraded_after`
    /// consecutive failures, down after `down_after_failures` of them lasting at least
    /// `down_after`. Takes effect from the chamber's next poll.
    ///
    /// # Errors
    /// `Forbidden` below operator; `Invalid` (`health.degraded_after`,
    /// `health.down_after_failures`, `health.down_after` over a day); `NotFound`;
    /// `Unavailable`.
    pub async fn set_health_policy(
        &self,
        actor: &Actor,
        id: ChamberId,
        degraded_after: u32,
        down_after_failures: u32,
        down_after: Duration,
    ) -> Result<Chamber> {
        actor.require(Role::Operator, "change a chamber's health policy")?;
        if down_after > MAX_POLL_INTERVAL {
            return Err(ValidationError::new(
                "health.down_after",
                Rule::OutOfRange {
                    min: "0s".into(),
                    max: "86400s".into(),
                    actual: format!("{}s", down_after.as_secs()),
                },
            )
            .into());
        }
        let policy = HealthPolicy::new(degraded_after, down_after_failures, down_after)?;
        let mut chamber = self.chambers.get(actor.organization_id, id).await?;
        if chamber.health_policy == policy {
            return Ok(chamber);
        }
        chamber.health_policy = policy;
        chamber.updated_at = self.clock.now();
        self.chambers.update(&chamber).await?;
        self.publish_upsert(&chamber).await;
        Ok(chamber)
    }

    /// Stops polling the chamber; its readings stay.
    ///
    /// # Errors
    /// `Forbidden`; `NotFound`; `Unavailable`.
    pub async fn pause(&self, actor: &Actor, id: ChamberId) -> Result<Chamber> {
        self.set_state(actor, id, ChamberState::Paused).await
    }

    /// Polls the chamber again, from the first slot after now (the paused time is not owed).
    ///
    /// # Errors
    /// `Forbidden`; `NotFound`; `Unavailable`.
    pub async fn resume(&self, actor: &Actor, id: ChamberId) -> Result<Chamber> {
        self.set_state(actor, id, ChamberState::Active).await
    }

    async fn set_state(
        &self,
        actor: &Actor,
        id: ChamberId,
        state: ChamberState,
    ) -> Result<Chamber> {
        actor.require(Role::Operator, "pause or resume a chamber")?;
        let mut chamber = self.chambers.get(actor.organization_id, id).await?;
        if chamber.state == state {
            return Ok(chamber);
        }
        let now = self.clock.now();
        chamber.state = state;
        chamber.updated_at = now;
        if state == ChamberState::Active {
            chamber.schedule_since = now;
        }
        self.chambers.update(&chamber).await?;
        self.publish_upsert(&chamber).await;
        Ok(chamber)
    }

    /// Deletes the chamber with its detectors, readings and ledger.
    ///
    /// # Errors
    /// `Forbidden`; `NotFound`; `Unavailable`.
    pub async fn delete_chamber(&self, actor: &Actor, id: ChamberId) -> Result<()> {
        actor.require(Role::Operator, "delete a chamber")?;
        self.chambers.delete(actor.organization_id, id).await?;
        let change = ChamberChange::Removed {
            organization_id: actor.organization_id,
            chamber_id: id,
        };
        if let Err(e) = self.changes.publish(&change).await {
            tracing::warn!(chamber.id = %id, error = %e, "chamber change not published; the scheduler's resync will catch up");
        }
        Ok(())
    }

    pub(crate) async fn publish_upsert(&self, chamber: &Chamber) {
        let change = ChamberChange::Upserted {
            chamber: chamber.clone(),
        };
        if let Err(e) = self.changes.publish(&change).await {
            tracing::warn!(chamber.id = %chamber.id, error = %e, "chamber change not published; the scheduler's resync will catch up");
        }
    }

    // ----- detectors -----

    /// # Errors
    /// `Forbidden`; `Invalid` (`detectors[0].key` ...); `NotFound { entity: "chamber" }`;
    /// `FailedPrecondition` at the detector limit; `Duplicate`; `Unavailable`.
    pub async fn add_detector(
        &self,
        actor: &Actor,
        chamber: ChamberId,
        new: NewDetector,
    ) -> Result<Detector> {
        actor.require(Role::Operator, "add a detector")?;
        let c = self.chambers.get(actor.organization_id, chamber).await?;
        let (name, alias, unit, key, range) = validate_detector(c.format, 0, &new)?;
        let existing = self
            .detectors
            .list_for_chamber(actor.organization_id, chamber)
            .await?;
        if existing.len() >= MAX_DETECTORS_PER_CHAMBER {
            return Err(UseCaseError::FailedPrecondition(format!(
                "a chamber has at most {MAX_DETECTORS_PER_CHAMBER} detectors"
            )));
        }
        let detector = Detector {
            id: DetectorId::random(),
            chamber_id: chamber,
            organization_id: actor.organization_id,
            name,
            alias,
            unit,
            key,
            range,
        };
        self.detectors.add(&detector).await?;
        self.publish_upsert(&c).await;
        Ok(detector)
    }

    /// # Errors
    /// `NotFound { entity: "detector" }`; `Unavailable`.
    pub async fn get_detector(&self, actor: &Actor, id: DetectorId) -> Result<Detector> {
        actor.require(Role::Viewer, "read detectors")?;
        Ok(self.detectors.get(actor.organization_id, id).await?)
    }

    /// Replaces a detector's settings (name, alias, unit, key, range).
    ///
    /// # Errors
    /// `Forbidden`; `Invalid`; `NotFound`; `Duplicate`; `Unavailable`.
    pub async fn update_detector(
        &self,
        actor: &Actor,
        id: DetectorId,
        new: NewDetector,
    ) -> Result<Detector> {
        actor.require(Role::Operator, "update a detector")?;
        let mut detector = self.detectors.get(actor.organization_id, id).await?;
        let (name, alias, unit, key, range) = validate_detector(detector.key.format(), 0, &new)?;
        detector.name = name;
        detector.alias = alias;
        detector.unit = unit;
        detector.key = key;
        detector.range = range;
        self.detectors.update(&detector).await?;
        self.publish_detectors_changed(actor, detector.chamber_id)
            .await;
        Ok(detector)
    }

    /// Removes a detector and its readings; the last detector of a chamber cannot be removed.
    ///
    /// # Errors
    /// `Forbidden`; `NotFound`; `FailedPrecondition` for the last detector; `Unavailable`.
    pub async fn remove_detector(&self, actor: &Actor, id: DetectorId) -> Result<()> {
        actor.require(Role::Operator, "remove a detector")?;
        let detector = self.detectors.get(actor.organization_id, id).await?;
        let siblings = self
            .detectors
            .list_for_chamber(actor.organization_id, detector.chamber_id)
            .await?;
        if siblings.len() <= 1 {
            return Err(UseCaseError::FailedPrecondition(
                "a chamber needs at least one detector; delete the chamber instead".into(),
            ));
        }
        self.detectors.delete(actor.organization_id, id).await?;
        self.publish_detectors_changed(actor, detector.chamber_id)
            .await;
        Ok(())
    }

    /// Tells the workers (through the change feed) that a chamber's detectors changed, so a
    /// cached definition is read afresh at its next poll.
    async fn publish_detectors_changed(&self, actor: &Actor, chamber: ChamberId) {
        match self.chambers.get(actor.organization_id, chamber).await {
            Ok(c) => self.publish_upsert(&c).await,
            Err(e) => tracing::warn!(
                chamber.id = %chamber, error = %e,
                "chamber change not published; workers read the detectors within their cache time"
            ),
        }
    }

    // ----- batches -----

    /// Opens a batch in a section now.
    ///
    /// # Errors
    /// `Forbidden`; `Invalid`; `NotFound { entity: "section" }`; `FailedPrecondition` if the
    /// section already has an open batch; `Unavailable`.
    pub async fn start_batch(
        &self,
        actor: &Actor,
        section: SectionId,
        new: NewSection,
    ) -> Result<Batch> {
        actor.require(Role::Operator, "start a batch")?;
        let batch = Batch {
            id: BatchId::random(),
            organization_id: actor.organization_id,
            section_id: section,
            name: Name::parse(&new.name).map_err(|e| e.within("batch"))?,
            description: Description::parse(&new.description).map_err(|e| e.within("batch"))?,
            started_at: self.clock.now(),
            ended_at: None,
        };
        self.sections.get(actor.organization_id, section).await?;
        self.batches.start(&batch).await?;
        self.publish_batch(DomainEvent::BatchStarted {
            routing: batch_routing(&batch),
            batch: batch.clone(),
        })
        .await;
        Ok(batch)
    }

    /// Ends an open batch now.
    ///
    /// # Errors
    /// `Forbidden`; `NotFound`; `FailedPrecondition` if already ended; `Unavailable`.
    pub async fn end_batch(&self, actor: &Actor, id: BatchId) -> Result<Batch> {
        actor.require(Role::Operator, "end a batch")?;
        let batch = self
            .batches
            .end(actor.organization_id, id, self.clock.now())
            .await?;
        self.publish_batch(DomainEvent::BatchEnded {
            routing: batch_routing(&batch),
            batch: batch.clone(),
        })
        .await;
        Ok(batch)
    }

    /// # Errors
    /// `NotFound`; `Unavailable`.
    pub async fn get_batch(&self, actor: &Actor, id: BatchId) -> Result<Batch> {
        actor.require(Role::Viewer, "read batches")?;
        Ok(self.batches.get(actor.organization_id, id).await?)
    }

    /// # Errors
    /// `Unavailable`.
    pub async fn list_batches(
        &self,
        actor: &Actor,
        section: Option<SectionId>,
        page: PageRequest<BatchId>,
    ) -> Result<Page<Batch, BatchId>> {
        actor.require(Role::Viewer, "list batches")?;
        Ok(self
            .batches
            .list(actor.organization_id, section, page)
            .await?)
    }

    async fn publish_batch(&self, event: DomainEvent) {
        if let Err(e) = self.events.publish(std::slice::from_ref(&event)).await {
            tracing::warn!(error = %e, "batch event not published");
        }
    }
}

fn batch_routing(batch: &Batch) -> RoutingTag {
    RoutingTag {
        organization_id: batch.organization_id,
        section_id: Some(batch.section_id),
        chamber_id: None,
    }
}
