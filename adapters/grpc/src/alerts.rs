//! `AlertService` and `TransmitterService` (alerts.proto): alert rules, alerts and transmitters.

use chamberlain_domain::alerting::{self, AlertCondition};
use chamberlain_domain::model::{AlertId, AlertRuleId, ChamberId, DetectorId, TransmitterId};
use chamberlain_domain::ports::AlertFilter;
use chamberlain_domain::transmit::{self, Destination};
use chamberlain_domain::usecases::{
    NewAlertRule, NewCondition, NewDestination, NewTransmitter, UseCaseError,
};
use chamberlain_proto::v1::{
    self, alert_service_server::AlertService, transmitter_service_server::TransmitterService,
};
use tonic::{Request, Response, Status};

use crate::convert::{dur, id, opt_id, opt_ts, page, required_duration, token_of, ts};
use crate::status::{from_use_case, invalid, unknown_parent};
use crate::{Api, caller};

type Reply<T> = Result<Response<T>, Status>;

/// The use case names fields of the entity (`rule.condition.after`); the API names them as the
/// request does (`no_reading.after`).
fn rename_fields(e: UseCaseError, entity: &str, condition: &str) -> UseCaseError {
    match e {
        UseCaseError::Invalid(v) => {
            let field = v.field.strip_prefix(entity).unwrap_or(&v.field);
            let field = match field.strip_prefix("condition.") {
                Some(rest) => format!("{condition}.{rest}"),
                None if field == "forward" => "forward_readings".to_owned(),
                None => field.to_owned(),
            };
            UseCaseError::Invalid(v.for_field(field))
        }
        other => other,
    }
}

pub(crate) fn alert(a: alerting::Alert) -> v1::Alert {
    v1::Alert {
        id: a.id.to_string(),
        rule_id: a.rule_id.to_string(),
        chamber_id: a.chamber_id.to_string(),
        rule_name: a.rule_name.as_str().to_owned(),
        since: Some(ts(a.since)),
        opened_at: Some(ts(a.opened_at)),
        resolved_at: opt_ts(a.resolved_at),
        detail: a.detail,
        acknowledgement: a.acknowledgement.map(|k| v1::Acknowledgement {
            user_id: k.user_id.to_string(),
            at: Some(ts(k.at)),
            comment: k.comment.as_str().to_owned(),
        }),
    }
}

fn rule(r: alerting::AlertRule) -> v1::AlertRule {
    use v1::alert_rule::Condition;
    let condition = match r.condition {
        AlertCondition::ChamberDown { after } => Condition::ChamberDown(v1::ChamberDownCondition {
            after: Some(dur(after)),
        }),
        AlertCondition::OutOfRange {
            detector_id,
            min,
            max,
            after,
        } => Condition::OutOfRange(v1::OutOfRangeCondition {
            detector_id: detector_id.to_string(),
            min: min.map(|v| v.get()),
            max: max.map(|v| v.get()),
            after: Some(dur(after)),
        }),
        AlertCondition::NoReading { detector_id, after } => {
            Condition::NoReading(v1::NoReadingCondition {
                detector_id: detector_id.map(|d| d.to_string()).unwrap_or_default(),
                after: Some(dur(after)),
            })
        }
    };
    v1::AlertRule {
        id: r.id.to_string(),
        chamber_id: r.chamber_id.to_string(),
        name: r.name.as_str().to_owned(),
        created_at: Some(ts(r.created_at)),
        condition: Some(condition),
    }
}

fn condition(
    c: Option<v1::create_alert_rule_request::Condition>,
) -> Result<(NewCondition, &'static str), Status> {
    use v1::create_alert_rule_request::Condition;
    match c {
        None => Err(invalid(
            "condition",
            "set one of chamber_down, out_of_range, no_reading",
        )),
        Some(Condition::ChamberDown(c)) => Ok((
            NewCondition::ChamberDown {
                after: required_duration("chamber_down.after", c.after.as_ref())?,
            },
            "chamber_down",
        )),
        Some(Condition::OutOfRange(c)) => Ok((
            NewCondition::OutOfRange {
                detector_id: id(
                    "out_of_range.detector_id",
                    &c.detector_id,
                    DetectorId::parse,
                )?,
                min: c.min,
                max: c.max,
                after: required_duration("out_of_range.after", c.after.as_ref())?,
            },
            "out_of_range",
        )),
        Some(Condition::NoReading(c)) => Ok((
            NewCondition::NoReading {
                detector_id: opt_id("no_reading.detector_id", &c.detector_id, DetectorId::parse)?,
                after: required_duration("no_reading.after", c.after.as_ref())?,
            },
            "no_reading",
        )),
    }
}

#[tonic::async_trait]
impl AlertService for Api {
    async fn create_alert_rule(
        &self,
        request: Request<v1::CreateAlertRuleRequest>,
    ) -> Reply<v1::AlertRule> {
        let actor = caller(&request)?;
        let r = request.into_inner();
        let chamber_id = id("chamber_id", &r.chamber_id, ChamberId::parse)?;
        let (condition, variant) = condition(r.condition)?;
        let created = self
            .alerts
            .create_rule(
                &actor,
                NewAlertRule {
                    chamber_id,
                    name: r.name,
                    condition,
                },
            )
            .await
            .map_err(|e| {
                unknown_parent(rename_fields(e, "rule.", variant), "chamber", "chamber_id")
            })?;
        Ok(Response::new(rule(created)))
    }

    async fn list_alert_rules(
        &self,
        request: Request<v1::ListAlertRulesRequest>,
    ) -> Reply<v1::ListAlertRulesResponse> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let chamber = opt_id("chamber_id", &r.chamber_id, ChamberId::parse)?;
        let p = page(r.page.as_ref(), |t| AlertRuleId::parse(t).ok())?;
        let p = self
            .alerts
            .list_rules(&actor, chamber, p)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::ListAlertRulesResponse {
            rules: p.items.into_iter().map(rule).collect(),
            next_page_token: token_of(p.next),
        }))
    }

    async fn delete_alert_rule(
        &self,
        request: Request<v1::DeleteAlertRuleRequest>,
    ) -> Reply<v1::DeleteAlertRuleResponse> {
        let actor = caller(&request)?;
        let rid = id("id", &request.get_ref().id, AlertRuleId::parse)?;
        self.alerts
            .delete_rule(&actor, rid)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::DeleteAlertRuleResponse {}))
    }

    async fn list_alerts(
        &self,
        request: Request<v1::ListAlertsRequest>,
    ) -> Reply<v1::ListAlertsResponse> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let filter = AlertFilter {
            chamber_id: opt_id("chamber_id", &r.chamber_id, ChamberId::parse)?,
            rule_id: opt_id("rule_id", &r.rule_id, AlertRuleId::parse)?,
            open_only: r.open_only,
        };
        let p = page(r.page.as_ref(), |t| AlertId::parse(t).ok())?;
        let p = self
            .alerts
            .list_alerts(&actor, filter, p)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::ListAlertsResponse {
            alerts: p.items.into_iter().map(alert).collect(),
            next_page_token: token_of(p.next),
        }))
    }

    async fn acknowledge_alert(
        &self,
        request: Request<v1::AcknowledgeAlertRequest>,
    ) -> Reply<v1::Alert> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let aid = id("id", &r.id, AlertId::parse)?;
        let acked = self
            .alerts
            .acknowledge(&actor, aid, &r.comment)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(alert(acked)))
    }
}

fn transmitter(t: transmit::Transmitter) -> v1::Transmitter {
    use v1::transmitter::Destination as D;
    let destination = match t.destination {
        Destination::Webhook { url, .. } => D::Webhook(v1::WebhookDestination {
            url: url.as_url().to_string(),
            secret: String::new(),
        }),
        Destination::Mqtt {
            broker,
            topic_prefix,
        } => D::Mqtt(v1::MqttDestination {
            broker: broker.to_string(),
            topic_prefix: topic_prefix.as_str().to_owned(),
        }),
    };
    v1::Transmitter {
        id: t.id.to_string(),
        name: t.name.as_str().to_owned(),
        forward_readings: t.forwarded.readings,
        forward_alerts: t.forwarded.alerts,
        created_at: Some(ts(t.created_at)),
        destination: Some(destination),
    }
}

#[tonic::async_trait]
impl TransmitterService for Api {
    async fn create_transmitter(
        &self,
        request: Request<v1::CreateTransmitterRequest>,
    ) -> Reply<v1::Transmitter> {
        use v1::create_transmitter_request::Destination as D;
        let actor = caller(&request)?;
        let r = request.into_inner();
        let destination = match r.destination {
            Some(D::Webhook(w)) => NewDestination::Webhook {
                url: w.url,
                secret: w.secret,
            },
            Some(D::Mqtt(m)) => NewDestination::Mqtt {
                broker: m.broker,
                topic_prefix: m.topic_prefix,
            },
            None => return Err(invalid("destination", "set webhook or mqtt")),
        };
        let created = self
            .transmitters
            .create(
                &actor,
                NewTransmitter {
                    name: r.name,
                    destination,
                    readings: r.forward_readings,
                    alerts: r.forward_alerts,
                },
            )
            .await
            .map_err(|e| from_use_case(rename_fields(e, "transmitter.", "")))?;
        Ok(Response::new(transmitter(created)))
    }

    async fn list_transmitters(
        &self,
        request: Request<v1::ListTransmittersRequest>,
    ) -> Reply<v1::ListTransmittersResponse> {
        let actor = caller(&request)?;
        let p = page(request.get_ref().page.as_ref(), |t| {
            TransmitterId::parse(t).ok()
        })?;
        let p = self
            .transmitters
            .list(&actor, p)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::ListTransmittersResponse {
            transmitters: p.items.into_iter().map(transmitter).collect(),
            next_page_token: token_of(p.next),
        }))
    }

    async fn delete_transmitter(
        &self,
        request: Request<v1::DeleteTransmitterRequest>,
    ) -> Reply<v1::DeleteTransmitterResponse> {
        let actor = caller(&request)?;
        let tid = id("id", &request.get_ref().id, TransmitterId::parse)?;
        self.transmitters
            .delete(&actor, tid)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::DeleteTransmitterResponse {}))
    }

    async fn list_dead_letters(
        &self,
        request: Request<v1::ListDeadLettersRequest>,
    ) -> Reply<v1::ListDeadLettersResponse> {
        let actor = caller(&request)?;
        let r = request.get_ref();
        let tid = opt_id("transmitter_id", &r.transmitter_id, TransmitterId::parse)?;
        let p = page(r.page.as_ref(), |t| {
            chamberlain_domain::model::DeadLetterId::parse(t).ok()
        })?;
        let p = self
            .transmitters
            .dead_letters(&actor, tid, p)
            .await
            .map_err(from_use_case)?;
        Ok(Response::new(v1::ListDeadLettersResponse {
            dead_letters: p
                .items
                .into_iter()
                .map(|l| v1::DeadLetter {
                    id: l.id.to_string(),
                    transmitter_id: l.transmitter_id.to_string(),
                    kind: l.delivery.kind.as_str().to_owned(),
                    topic: l.delivery.topic,
                    body: l.delivery.body,
                    attempts: l.attempts,
                    last_error: l.last_error,
                    at: Some(ts(l.at)),
                })
                .collect(),
            next_page_token: token_of(p.next),
        }))
    }
}
