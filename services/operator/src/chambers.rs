//! `chamberlain chambers`: register, list, show, update, pause, resume, set the interval,
//! delete.

use chamberlain_proto::v1::{self, chamber_service_client::ChamberServiceClient};
use clap::Subcommand;

use crate::connection::Client;
use crate::failure::{Done, Failure};
use crate::pages::{Limit, all_pages};
use crate::parse::{detector_spec, parse_duration};
use crate::render::{self, Output, dur, enum_name, ts};

#[derive(Debug, Subcommand)]
pub enum ChambersCommand {
    /// List chambers, optionally of one section or state.
    List {
        #[arg(long)]
        section: Option<String>,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only chambers whose name contains this text.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limit: Limit,
    },
    /// Register a chamber with its detectors.
    Add {
        /// The section's id.
        #[arg(long)]
        section: String,
        #[arg(long)]
        name: String,
        /// The chamber's HTTP(S) endpoint.
        #[arg(long)]
        url: String,
        /// `json` (detector keys are JSON Pointers) or `prometheus` (metric selectors).
        #[arg(long, default_value = "json")]
        format: String,
        /// How often to poll it (e.g. 5s, 1m).
        #[arg(long)]
        interval: String,
        /// How long one poll may take (default: the smaller of the interval and 10 s).
        #[arg(long)]
        timeout: Option<String>,
        /// A detector as `key=name[:unit]` (e.g. `/temp=temperature:°C`); repeat for more.
        #[arg(long = "detector", required = true)]
        detectors: Vec<String>,
    },
    /// Show a chamber with its detectors and health.
    Show { id: String },
    /// Change a chamber's name, URL, section or timeout.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        section: Option<String>,
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Stop polling a chamber (its data stays).
    Pause { id: String },
    /// Poll a paused chamber again, from the next slot.
    Resume { id: String },
    /// Change how often a chamber is polled.
    SetInterval { id: String, interval: String },
    /// Delete a chamber with its detectors, readings and ledger.
    Delete { id: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StateArg {
    Active,
    Paused,
}

fn state_of(c: &v1::Chamber) -> String {
    enum_name(v1::ChamberState::try_from(c.state).unwrap_or_default())
}

fn health_of(c: &v1::Chamber) -> String {
    enum_name(v1::HealthState::try_from(c.health).unwrap_or_default())
}

fn print_chambers(output: Output, items: &[v1::Chamber]) {
    render::list(
        output,
        items,
        &["ID", "NAME", "STATE", "HEALTH", "INTERVAL", "URL"],
        |c| {
            vec![
                c.id.clone(),
                c.name.clone(),
                state_of(c),
                health_of(c),
                dur(c.interval.as_ref()),
                c.url.clone(),
            ]
        },
    );
}

fn print_chamber(output: Output, c: &v1::Chamber) {
    render::one(
        output,
        c,
        vec![
            ("id", c.id.clone()),
            ("name", c.name.clone()),
            ("section", c.section_id.clone()),
            ("url", c.url.clone()),
            ("format", c.format.clone()),
            ("interval", dur(c.interval.as_ref())),
            ("timeout", dur(c.timeout.as_ref())),
            ("state", state_of(c)),
            ("health", health_of(c)),
            ("created", ts(c.created_at.as_ref())),
            ("updated", ts(c.updated_at.as_ref())),
        ],
    );
    if output == Output::Table {
        out!("");
        render::detectors(output, &c.detectors);
    }
}

pub(crate) async fn run(client: &Client, command: ChambersCommand) -> Done {
    let mut api = ChamberServiceClient::new(client.transport.clone());
    let output = client.output;
    let chamber = match command {
        ChambersCommand::List {
            section,
            state,
            name,
            limit,
        } => {
            let state = match state {
                None => v1::ChamberState::Unspecified,
                Some(StateArg::Active) => v1::ChamberState::Active,
                Some(StateArg::Paused) => v1::ChamberState::Paused,
            };
            let section = section.unwrap_or_default();
            let name = name.unwrap_or_default();
            let items = all_pages(limit.get(), |page| {
                let mut api = api.clone();
                let section_id = section.clone();
                let name_contains = name.clone();
                async move {
                    let r = api
                        .list_chambers(v1::ListChambersRequest {
                            page: Some(page),
                            section_id,
                            state: state.into(),
                            name_contains,
                            health: v1::HealthState::Unspecified.into(),
                        })
                        .await?
                        .into_inner();
                    Ok((r.chambers, r.next_page_token))
                }
            })
            .await?;
            print_chambers(output, &items);
            return Ok(());
        }
        ChambersCommand::Add {
            section,
            name,
            url,
            format,
            interval,
            timeout,
            detectors,
        } => {
            let detectors = detectors
                .iter()
                .map(|d| detector_spec(d).map_err(|e| Failure::usage(format!("--detector: {e}"))))
                .collect::<Result<_, _>>()?;
            api.create_chamber(v1::CreateChamberRequest {
                section_id: section,
                name,
                url,
                format,
                interval: Some(parse_duration("--interval", &interval)?),
                timeout: timeout
                    .map(|t| parse_duration("--timeout", &t))
                    .transpose()?,
                detectors,
            })
            .await?
        }
        ChambersCommand::Show { id } => api.get_chamber(v1::GetChamberRequest { id }).await?,
        ChambersCommand::Update {
            id,
            name,
            url,
            section,
            timeout,
        } => {
            api.update_chamber(v1::UpdateChamberRequest {
                id,
                name,
                url,
                section_id: section,
                timeout: timeout
                    .map(|t| parse_duration("--timeout", &t))
                    .transpose()?,
            })
            .await?
        }
        ChambersCommand::Pause { id } => api.pause_chamber(v1::PauseChamberRequest { id }).await?,
        ChambersCommand::Resume { id } => {
            api.resume_chamber(v1::ResumeChamberRequest { id }).await?
        }
        ChambersCommand::SetInterval { id, interval } => {
            api.set_chamber_interval(v1::SetChamberIntervalRequest {
                id,
                interval: Some(parse_duration("interval", &interval)?),
            })
            .await?
        }
        ChambersCommand::Delete { id } => {
            api.delete_chamber(v1::DeleteChamberRequest { id: id.clone() })
                .await?;
            render::done(output, "deleted chamber", &id);
            return Ok(());
        }
    };
    print_chamber(output, chamber.get_ref());
    Ok(())
}
