//! `ChamberService` (chambers.proto): chambers, their detectors, and the import.

use chamberlain_domain::error::{Rule, ValidationError};
use chamberlain_domain::model::{
    self, ChamberId, ChamberState, DetectorId, HealthState, SectionId,
};
use chamberlain_domain::ports::ChamberFilter;
use chamberlain_domain::usecases::ImportMode;
use chamberlain_domain::usecases::{ChamberPatch, ChamberView, NewChamber, NewDetector};
use chamberlain_proto::v1::{self, chamber_service_server::ChamberService};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::convert::{dur, duration, id, opt_id, page, required_duration, token_of, ts};
use crate::status::{from_use_case, from_validation, unknown_parent};
use crate::{Api, caller};

type Reply<T> = Result<Response<T>, Status>;

fn detector(d: model::Detector) -> v1::Detector {
    v1::Detector {
        id: d.id.to_string(),
        chamber_id: d.chamber_id.to_string(),
        name: d.name.as_str().to_owned(),
        alias: d.alias.map(|a| a.as_str().to_owned()).unwrap_or_default(),
        unit: d.unit.as_str().to_owned(),
        key: d.key.to_string(),
        min: d.range.min(),
        max: d.range.max(),
    }
}

fn state(s: ChamberState) -> v1::ChamberState {
    match s {
        ChamberState::Active => v1::ChamberState::Active,
        ChamberState::Paused => v1::ChamberState::Paused,
    }
}

fn health(h: Option<HealthState>) -> v1::HealthState {
    match h {
        None | Some(HealthState::Unknown) => v1::HealthState::Unknown,
        Some(HealthState::Up) => v1::HealthState::Up,
        Some(HealthState::Degraded) => v1::HealthState::Degraded,
        Some(HealthState::Down) => v1::HealthState::Down,
    }
}

fn chamber_view(v: ChamberView) -> v1::Chamber {
    chamber(v.chamber, v.detectors, v.health)
}

fn chamber(
    c: model::Chamber,
    detectors: Vec<model::Detector>,
    h: Option<HealthState>,
) -> v1::Chamber {
    v1::Chamber {
        id: c.id.to_string(),
        section_id: c.section_id.to_string(),
        name: c.name.as_str().to_owned(),
        url: c.endpoint.as_str().to_owned(),
        format: c.format.to_string(),
        interval: Some(dur(c.interval.as_duration())),
        timeout: Some(dur(c.timeout.as_duration())),
        state: state(c.state).into(),
        health: health(h).into(),
        detectors: detectors.into_iter().map(detector).collect(),
        created_at: Some(ts(c.created_at)),
        updated_at: Some(ts(c.updated_at)),
        health_policy: Some(v1::HealthPolicy {
            degraded_after: c.health_policy.degraded_after(),
            down_after_failures: c.health_policy.down_after_failures(),
            down_after: Some(dur(c.health_policy.down_after())),
        }),
    }
}

fn new_detector(d: v1::NewDetector) -> NewDetector {
    NewDetector {
        name: d.name,
        alias: (!d.alias.is_empty()).then_some(d.alias),
        unit: d.unit,
        key: d.key,
        min: d.min,
        max: d.max,
    }
}

/// Violations detailed in a refused import's status (its trailers must stay small).
const MAX_REPORTED_VIOLATIONS: usize = 50;

/// A submitted chamber, with the fields named as in the request (`section_id`, `interval`).
fn new_chamber(r: v1::CreateChamberRequest) -> Result<NewChamber, ValidationError> {
    let required = |field: &'static str| ValidationError::new(field, Rule::Required);
    let section_id = match r.section_id.trim() {
        "" => return Err(required("section_id")),
        raw => SectionId::parse(raw).map_err(|e| e.for_field("section_id"))?,
    };
    Ok(NewChamber {
        section_id,
        name: r.name,
        url: r.url,
        format: r.format,
        interval: plain_duration("interval", r.interval.as_ref())?
            .ok_or_else(|| required("interval"))?,
        timeout: plain_duration("timeout", r.timeout.as_ref())?,
        detectors: r.detectors.into_iter().map(new_detector).collect(),
    })
}

fn plain_duration(
    field: &'static str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<std::time::Duration>, ValidationError> {
    duration(field, d)
        .map_err(|_| ValidationError::new(field, Rule::Format("must not be negative".into())))
}

/// A refused import row, its field named within the row (`url`, not `chamber.url`).
fn refused_row(row: usize, e: &ValidationError) -> v1::RefusedRow {
    v1::RefusedRow {
        row: u32::try_from(row).unwrap_or(u32::MAX),
        field: e
            .field
            .strip_prefix("chamber.")
            .unwrap_or(&e.field)
            .to_owned(),
        description: e.rule.to_string(),
    }
}

impl Api {
    /// The chamber as it is now (after a write: never from the cache).
    async fn full_chamber(
        &self,
        actor: &chamberlain_domain::usecases::Actor,
        id: ChamberId,
    ) -> Result<v1::Chamber, Status> {
        self.chamber_cache.forget(actor.organization_id, id);
        let v = self
            .admin
            .chamber_view(actor, id)
            .await
            .map_err(from_use_case)?;
        Ok(chamber_view(v))
    }
}

#[tonic::async_trait]
impl ChamberService for Api {
    async fn create_chamber(
        &self,
        request: Request<v1::CreateChamberRequest>,
    ) -> Reply<v1::Chamber> {
        let actor = caller(&request)?;
        let new = new_chamber(request.into_inner()).map_err(|e| from_validation(&e))?;
        let c = self
            .admin
            .create_chamber(&actor, new)
            .await
            .map_err(|e| unknown_parent(e, "section", "section_id"))?;
        // Just created: never polled, so no health yet.
        Ok(Response::new(chamber(c.chamber, c.detectors, None)))
    }

    async fn import_chambers(
        &self,
        request: Request<Streaming<v1::ImportChambersRequest>>,
    ) -> Reply<v1::ImportChambersResponse> {
        let actor = caller(&request)?;
        let mut stream = request.into_inner();
        let mut import = self.admin.begin_import(&actor).map_err(from_use_case)?;
        let mut mode = None;
        // A stream that breaks off (the client gave up) ends here with nothing created.
        while let Some(message) = stream.message().await? {
            mode.get_or_insert(if message.continue_on_error {
                ImportMode::SkipRefused
            } else {
                ImportMode::AllOrNothing
            });
            for row in message.chambers {
                match new_chamber(row) {
                    Ok(new) => import.add(new).await,
                    Err(refused) => import.refuse(refused),
                }
                .map_err(from_use_case)?;
            }
        }
        let mode = mode.unwrap_or(ImportMode::AllOrNothing);
        let rows = import.rows();
        let report = import.commit(mode).await.map_err(from_use_case)?;
        let refused = report.rejected.iter().map(|r| refused_row(r.row, &r.error));
        if mode == ImportMode::AllOrNothing && !report.rejected.is_empty() {
            let violations = refused
                .take(MAX_REPORTED_VIOLATIONS)
                .map(|r| {
                    FieldViolation::new(format!("chambers[{}].{}", r.row, r.field), r.description)
                })
                .collect::<Vec<_>>();
            return Err(Status::with_error_details(
                Code::InvalidArgument,
                format!(
                    "{} of {rows} rows refused, nothing was created (the first {} are detailed)",
                    report.rejected.len(),
                    violations.len()
                ),
                ErrorDetails::with_bad_request(violations),
            ));
        }
        let refused = refused.collect();
        tracing::info!(
            created = report.created.len(),
            refused = report.rejected.len(),
            "chambers imported"
        );
        Ok(Response::new(v1::ImportChambersResponse {
            chamber_ids: report
                .created
                .iter()
                .map(|c| c.chamber.id.to_string())
                .collect(),
            refused,
        }))
    }

    async fn get_chamber(&self, request: Request<v1::GetChamberRequest>) -> Reply<v1::Chamber> {
        let actor = caller(&request)?;
        let cid = id("id", &request.get_ref().id, ChamberId::parse)?;
        let org = actor.organization_id;
        if let Some(hit) = self.chamber_cache.get(org, cid) {
            return Ok(Response::new(hit));
        }
        let v = self
            .admin
            .chamber_view(&actor, cid)
            .await
            .map_err(from_use_case)?;
        let reply = chamber_view(v);
        self.chamber_cache.put(org, cid, &reply);
        Ok(Response::new(reply))
    }

    async fn list_chambers(
        &self,
        request: Request<v1::ListChambersRequest>,
    ) -> Reply<v1::ListChambersResponse> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let filter = ChamberFilter {
            section_id: opt_id("section_id", &r.section_id, SectionId::parse)?,
            state: match v1::ChamberState::try_from(r.state) {
                Ok(v1::ChamberState::Active) => Some(ChamberState::Active),
                Ok(v1::ChamberState::Paused) => Some(ChamberState::Paused),
                Ok(v1::ChamberState::Unspecified) => None,
                Err(_) => return Err(crate::status::invalid("state", "is not a chamber state")),
            },
            name_contains: Some(r.name_contains.trim().to_owned()).filter(|n| !n.is_empty()),
            health: match v1::HealthState::try_from(r.health) {
                Ok(v1::HealthState::Unspecified) => None,
                Ok(v1::HealthState::Unknown) => Some(HealthState::Unknown),
                Ok(v1::HealthState::Up) => Some(HealthState::Up),
                Ok(v1::HealthState::Degraded) => Some(HealthState::Degraded),
                Ok(v1::HealthState::Down) => Some(HealthState::Down),
                Err(_) => return Err(crate::status::invalid("health", "is not a health state")),
            },
        };
        let p = page(r.page.as_ref(), |t| ChamberId::parse(t).ok())?;
        let p = self
            .admin
            .list_chamber_views(&actor, filter, p)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::ListChambersResponse {
            chambers: p.items.into_iter().map(chamber_view).collect(),
            next_page_token: token_of(p.next),
        }))
    }

    async fn update_chamber(
        &self,
        request: Request<v1::UpdateChamberRequest>,
    ) -> Reply<v1::Chamber> {
        let actor = caller(&request)?;
        let r = request.into_inner();
        let cid = id("id", &r.id, ChamberId::parse)?;
        let patch = ChamberPatch {
            name: r.name,
            url: r.url,
            section_id: match r.section_id {
                Some(s) => Some(id("section_id", &s, SectionId::parse)?),
                None => None,
            },
            timeout: duration("timeout", r.timeout.as_ref())?,
        };
        self.admin
            .update_chamber(&actor, cid, patch)
            .await
            .map_err(|e| unknown_parent(e, "section", "section_id"))?;
        Ok(Response::new(self.full_chamber(&actor, cid).await?))
    }

    async fn delete_chamber(
        &self,
        request: Request<v1::DeleteChamberRequest>,
    ) -> Reply<v1::DeleteChamberResponse> {
        let actor = caller(&request)?;
        let cid = id("id", &request.get_ref().id, ChamberId::parse)?;
        self.chamber_cache.forget(actor.organization_id, cid);
        self.admin
            .delete_chamber(&actor, cid)
            .await
            .map_err(from_use_case)?;
        self.chamber_cache.forget(actor.organization_id, cid);
        Ok(Response::new(v1::DeleteChamberResponse {}))
    }

    async fn pause_chamber(&self, request: Request<v1::PauseChamberRequest>) -> Reply<v1::Chamber> {
        let actor = caller(&request)?;
        let cid = id("id", &request.get_ref().id, ChamberId::parse)?;
        self.admin.pause(&actor, cid).await.map_err(from_use_case)?;
        Ok(Response::new(self.full_chamber(&actor, cid).await?))
    }

    async fn resume_chamber(
        &self,
        request: Request<v1::ResumeChamberRequest>,
    ) -> Reply<v1::Chamber> {
        let actor = caller(&request)?;
        let cid = id("id", &request.get_ref().id, ChamberId::parse)?;
        self.admin
            .resume(&actor, cid)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(self.full_chamber(&actor, cid).await?))
    }

    async fn set_chamber_interval(
        &self,
        request: Request<v1::SetChamberIntervalRequest>,
    ) -> Reply<v1::Chamber> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let cid = id("id", &r.id, ChamberId::parse)?;
        let interval = required_duration("interval", r.interval.as_ref())?;
        self.admin
            .set_interval(&actor, cid, interval)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(self.full_chamber(&actor, cid).await?))
    }

    async fn set_chamber_health_policy(
        &self,
        request: Request<v1::SetChamberHealthPolicyRequest>,
    ) -> Reply<v1::Chamber> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let cid = id("id", &r.id, ChamberId::parse)?;
        let policy = r
            .health_policy
            .as_ref()
            .ok_or_else(|| crate::status::invalid("health_policy", "is required"))?;
        let down_after = required_duration("health_policy.down_after", policy.down_after.as_ref())?;
        self.admin
            .set_health_policy(
                &actor,
                cid,
                policy.degraded_after,
                policy.down_after_failures,
                down_after,
            )
            .await
            .map_err(|e| match e {
                chamberlain_domain::usecases::UseCaseError::Invalid(mut v) => {
                    v.field = v.field.replacen("health.", "health_policy.", 1).into();
                    from_use_case(chamberlain_domain::usecases::UseCaseError::Invalid(v))
                }
                other => from_use_case(other),
            })?;
        Ok(Response::new(self.full_chamber(&actor, cid).await?))
    }

    async fn add_detector(&self, request: Request<v1::AddDetectorRequest>) -> Reply<v1::Detector> {
        let actor = caller(&request)?;
        let r = request.into_inner();
        let cid = id("chamber_id", &r.chamber_id, ChamberId::parse)?;
        let new = r
            .detector
            .ok_or_else(|| crate::status::invalid("detector", "is required"))?;
        let d = self
            .admin
            .add_detector(&actor, cid, new_detector(new))
            .await
            .map_err(from_use_case)?;
        self.chamber_cache.forget(actor.organization_id, cid);
        Ok(Response::new(detector(d)))
    }

    async fn update_detector(
        &self,
        request: Request<v1::UpdateDetectorRequest>,
    ) -> Reply<v1::Detector> {
        let actor = caller(&request)?;
        let r = request.into_inner();
        let did = id("id", &r.id, DetectorId::parse)?;
        let current = self
            .admin
            .get_detector(&actor, did)
            .await
            .map_err(from_use_case)?;
        let new = NewDetector {
            name: r.name.unwrap_or_else(|| current.name.as_str().to_owned()),
            alias: match r.alias {
                Some(a) => Some(a),
                None => current.alias.map(|a| a.as_str().to_owned()),
            },
            unit: r.unit.unwrap_or_else(|| current.unit.as_str().to_owned()),
            key: current.key.to_string(),
            min: r.min.or(current.range.min()),
            max: r.max.or(current.range.max()),
        };
        let d = self
            .admin
            .update_detector(&actor, did, new)
            .await
            .map_err(from_use_case)?;
        self.chamber_cache
            .forget(actor.organization_id, d.chamber_id);
        Ok(Response::new(detector(d)))
    }

    async fn remove_detector(
        &self,
        request: Request<v1::RemoveDetectorRequest>,
    ) -> Reply<v1::RemoveDetectorResponse> {
        let actor = caller(&request)?;
        let did = id("id", &request.get_ref().id, DetectorId::parse)?;
        let chamber = self
            .admin
            .get_detector(&actor, did)
            .await
            .map_err(from_use_case)?
            .chamber_id;
        self.admin
            .remove_detector(&actor, did)
            .await
            .map_err(from_use_case)?;
        self.chamber_cache.forget(actor.organization_id, chamber);
        Ok(Response::new(v1::RemoveDetectorResponse {}))
    }
}
