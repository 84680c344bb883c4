//! `chamberlain polls`: a chamber's poll ledger, and the coverage of a chamber or batch.

use chamberlain_proto::v1::{self, poll_service_client::PollServiceClient};
use clap::Subcommand;

use crate::connection::Client;
use crate::failure::Done;
use crate::pages::{Limit, all_pages};
use crate::parse::Range;
use crate::render::{self, dur, ts};

#[derive(Debug, Subcommand)]
pub enum PollsCommand {
    /// A chamber's poll ledger: one entry per slot, with its outcome.
    List {
        chamber: String,
        #[command(flatten)]
        range: Range,
        /// Only polls that did not produce readings.
        #[arg(long)]
        failures: bool,
        #[command(flatten)]
        limit: Limit,
    },
    /// Coverage of a chamber or batch over a range: slots read, failed and missed.
    Coverage {
        #[arg(long, conflicts_with = "batch", required_unless_present = "batch")]
        chamber: Option<String>,
        #[arg(long)]
        batch: Option<String>,
        #[command(flatten)]
        range: Range,
    },
}

pub(crate) async fn run(client: &Client, command: PollsCommand) -> Done {
    let mut api = PollServiceClient::new(client.transport.clone());
    let output = client.output;
    match command {
        PollsCommand::List {
            chamber,
            range,
            failures,
            limit,
        } => {
            let (from, to) = range.parse()?;
            let items = all_pages(limit.get(), |page| {
                let mut api = api.clone();
                let request = v1::ListPollsRequest {
                    chamber_id: chamber.clone(),
                    from: Some(from),
                    to: Some(to),
                    failures_only: failures,
                    page: Some(page),
                };
                async move {
                    let r = api.list_polls(request).await?.into_inner();
                    Ok((r.polls, r.next_page_token))
                }
            })
            .await?;
            render::list(
                output,
                &items,
                &[
                    "SLOT", "OUTCOME", "ATTEMPT", "LATENESS", "LATENCY", "DETAIL",
                ],
                |p| {
                    vec![
                        ts(p.slot.as_ref()),
                        p.outcome.clone(),
                        p.attempt.to_string(),
                        dur(p.lateness.as_ref()),
                        dur(p.latency.as_ref()),
                        p.detail.clone(),
                    ]
                },
            );
        }
        PollsCommand::Coverage {
            chamber,
            batch,
            range,
        } => {
            use v1::get_coverage_request::Scope as S;
            let (from, to) = range.parse()?;
            let scope = match (chamber, batch) {
                (Some(c), _) => S::ChamberId(c),
                (None, Some(b)) => S::BatchId(b),
                (None, None) => unreachable!("clap requires --chamber or --batch"),
            };
            let c = api
                .get_coverage(v1::GetCoverageRequest {
                    scope: Some(scope),
                    from: Some(from),
                    to: Some(to),
                })
                .await?
                .into_inner();
            render::one(
                output,
                &c,
                vec![
                    ("slots", c.slots.to_string()),
                    ("read", c.read.to_string()),
                    ("failed", c.failed.to_string()),
                    ("missed", c.missed.to_string()),
                    ("coverage", format!("{:.3} %", c.ratio * 100.0)),
                ],
            );
        }
    }
    Ok(())
}
