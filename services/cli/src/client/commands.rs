//! The operator commands, one enum per resource, each variant one API call (lists follow the
//! pages to the end unless `--limit` stops them earlier).

use std::future::Future;
use std::io::Write;

use chamberlain_proto::v1::{
    self, auth_service_client::AuthServiceClient, batch_service_client::BatchServiceClient,
    chamber_service_client::ChamberServiceClient, event_service_client::EventServiceClient,
    poll_service_client::PollServiceClient, reading_service_client::ReadingServiceClient,
    section_service_client::SectionServiceClient, user_service_client::UserServiceClient,
};
use clap::Subcommand;

use super::render::{self, Output, dur, enum_name, num, ts};
use super::{Client, ClientArgs, Failure, parse_duration, parse_time};

type Done = Result<(), Failure>;

/// Which operator command to run.
#[derive(Debug)]
pub(crate) enum Operator {
    Sections(SectionsCommand),
    Chambers(ChambersCommand),
    Detectors(DetectorsCommand),
    Batches(BatchesCommand),
    Readings(ReadingsCommand),
    Polls(PollsCommand),
    Tokens(TokensCommand),
    Users(UsersCommand),
    Import(super::ImportArgs),
}

/// Connects and runs one operator command.
///
/// # Errors
/// A [`Failure`] carrying the exit code.
pub(crate) async fn run(args: &ClientArgs, command: Operator) -> Done {
    let client = args.connect().await?;
    match command {
        Operator::Sections(c) => sections(&client, c).await,
        Operator::Chambers(c) => chambers(&client, c).await,
        Operator::Detectors(c) => detectors(&client, c).await,
        Operator::Batches(c) => batches(&client, c).await,
        Operator::Readings(c) => readings(&client, c).await,
        Operator::Polls(c) => polls(&client, c).await,
        Operator::Tokens(c) => tokens(&client, c).await,
        Operator::Users(c) => users(&client, c).await,
        Operator::Import(a) => super::import::import(&client, a).await,
    }
}

/// Fetches pages until the last one, or until `limit` items.
async fn all_pages<T, F, Fut>(limit: Option<usize>, mut fetch: F) -> Result<Vec<T>, Failure>
where
    F: FnMut(v1::PageRequest) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let want = limit.map_or(1000, |l| (l - items.len()).min(1000));
        let (page, next) = fetch(v1::PageRequest {
            page_size: u32::try_from(want).unwrap_or(1000),
            page_token: token,
        })
        .await?;
        items.extend(page);
        if next.is_empty() || limit.is_some_and(|l| items.len() >= l) {
            return Ok(items);
        }
        token = next;
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct Limit {
    /// Stop after this many items (default: all).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
}

impl Limit {
    fn get(&self) -> Option<usize> {
        self.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX))
    }
}

// ----- sections -----

#[derive(Debug, Subcommand)]
pub(crate) enum SectionsCommand {
    /// List the sections of your organization.
    List(Limit),
    /// Create a section.
    Add {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show one section.
    Show { id: String },
    /// Rename a section or change its description.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete an empty section.
    Delete { id: String },
}

fn print_sections(output: Output, items: &[v1::Section]) {
    render::list(
        output,
        items,
        &["ID", "NAME", "DESCRIPTION", "CREATED"],
        |s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                s.description.clone(),
                ts(s.created_at.as_ref()),
            ]
        },
    );
}

fn print_section(output: Output, s: &v1::Section) {
    render::one(
        output,
        s,
        vec![
            ("id", s.id.clone()),
            ("name", s.name.clone()),
            ("description", s.description.clone()),
            ("created", ts(s.created_at.as_ref())),
        ],
    );
}

async fn sections(client: &Client, command: SectionsCommand) -> Done {
    let mut api = SectionServiceClient::new(client.transport.clone());
    let output = client.output;
    match command {
        SectionsCommand::List(limit) => {
            let items = all_pages(limit.get(), |page| {
                let mut api = api.clone();
                async move {
                    let r = api
                        .list_sections(v1::ListSectionsRequest { page: Some(page) })
                        .await?
                        .into_inner();
                    Ok((r.sections, r.next_page_token))
                }
            })
            .await?;
            print_sections(output, &items);
        }
        SectionsCommand::Add { name, description } => {
            let s = api
                .create_section(v1::CreateSectionRequest { name, description })
                .await?
                .into_inner();
            print_section(output, &s);
        }
        SectionsCommand::Show { id } => {
            let s = api
                .get_section(v1::GetSectionRequest { id })
                .await?
                .into_inner();
            print_section(output, &s);
        }
        SectionsCommand::Update {
            id,
            name,
            description,
        } => {
            let s = api
                .update_section(v1::UpdateSectionRequest {
                    id,
                    name,
                    description,
                })
                .await?
                .into_inner();
            print_section(output, &s);
        }
        SectionsCommand::Delete { id } => {
            api.delete_section(v1::DeleteSectionRequest { id: id.clone() })
                .await?;
            render::done(output, "deleted section", &id);
        }
    }
    Ok(())
}

// ----- chambers -----

#[derive(Debug, Subcommand)]
pub(crate) enum ChambersCommand {
    /// List chambers, optionally of one section or state.
    List {
        #[arg(long)]
        section: Option<String>,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
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
pub(crate) enum StateArg {
    Active,
    Paused,
}

/// A detector written as `key=name[:unit]`: the key is everything before the last `=`.
pub(crate) fn detector_spec(spec: &str) -> Result<v1::NewDetector, String> {
    let (key, rest) = spec
        .trim()
        .rsplit_once('=')
        .ok_or_else(|| format!("{spec:?} is not key=name[:unit]"))?;
    let (name, unit) = rest.split_once(':').unwrap_or((rest, ""));
    if key.trim().is_empty() || name.trim().is_empty() {
        return Err(format!("{spec:?} is not key=name[:unit]"));
    }
    Ok(v1::NewDetector {
        key: key.trim().to_owned(),
        name: name.trim().to_owned(),
        unit: unit.trim().to_owned(),
        ..Default::default()
    })
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
        print_detectors(output, &c.detectors);
    }
}

fn print_detectors(output: Output, items: &[v1::Detector]) {
    render::list(
        output,
        items,
        &["ID", "NAME", "KEY", "UNIT", "MIN", "MAX"],
        |d| {
            vec![
                d.id.clone(),
                d.name.clone(),
                d.key.clone(),
                d.unit.clone(),
                num(d.min),
                num(d.max),
            ]
        },
    );
}

async fn chambers(client: &Client, command: ChambersCommand) -> Done {
    let mut api = ChamberServiceClient::new(client.transport.clone());
    let output = client.output;
    let chamber = match command {
        ChambersCommand::List {
            section,
            state,
            limit,
        } => {
            let state = match state {
                None => v1::ChamberState::Unspecified,
                Some(StateArg::Active) => v1::ChamberState::Active,
                Some(StateArg::Paused) => v1::ChamberState::Paused,
            };
            let section = section.unwrap_or_default();
            let items = all_pages(limit.get(), |page| {
                let mut api = api.clone();
                let section_id = section.clone();
                async move {
                    let r = api
                        .list_chambers(v1::ListChambersRequest {
                            page: Some(page),
                            section_id,
                            state: state.into(),
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

// ----- detectors -----

#[derive(Debug, Subcommand)]
pub(crate) enum DetectorsCommand {
    /// List a chamber's detectors.
    List { chamber: String },
    /// Add a detector to a chamber: `key=name[:unit]`.
    Add {
        chamber: String,
        spec: String,
        #[arg(long)]
        alias: Option<String>,
        /// Values below are stored as corrupted.
        #[arg(long, allow_negative_numbers = true)]
        min: Option<f64>,
        /// Values above are stored as corrupted.
        #[arg(long, allow_negative_numbers = true)]
        max: Option<f64>,
    },
    /// Change a detector's name, alias, unit or plausible range.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        alias: Option<String>,
        #[arg(long)]
        unit: Option<String>,
        #[arg(long, allow_negative_numbers = true)]
        min: Option<f64>,
        #[arg(long, allow_negative_numbers = true)]
        max: Option<f64>,
    },
    /// Remove a detector and its readings.
    Remove { id: String },
}

async fn detectors(client: &Client, command: DetectorsCommand) -> Done {
    let mut api = ChamberServiceClient::new(client.transport.clone());
    let output = client.output;
    let detector = match command {
        DetectorsCommand::List { chamber } => {
            let c = api
                .get_chamber(v1::GetChamberRequest { id: chamber })
                .await?
                .into_inner();
            print_detectors(output, &c.detectors);
            return Ok(());
        }
        DetectorsCommand::Add {
            chamber,
            spec,
            alias,
            min,
            max,
        } => {
            let mut detector = detector_spec(&spec).map_err(Failure::usage)?;
            detector.alias = alias.unwrap_or_default();
            (detector.min, detector.max) = (min, max);
            api.add_detector(v1::AddDetectorRequest {
                chamber_id: chamber,
                detector: Some(detector),
            })
            .await?
            .into_inner()
        }
        DetectorsCommand::Update {
            id,
            name,
            alias,
            unit,
            min,
            max,
        } => api
            .update_detector(v1::UpdateDetectorRequest {
                id,
                name,
                alias,
                unit,
                min,
                max,
            })
            .await?
            .into_inner(),
        DetectorsCommand::Remove { id } => {
            api.remove_detector(v1::RemoveDetectorRequest { id: id.clone() })
                .await?;
            render::done(output, "removed detector", &id);
            return Ok(());
        }
    };
    render::one(
        output,
        &detector,
        vec![
            ("id", detector.id.clone()),
            ("chamber", detector.chamber_id.clone()),
            ("name", detector.name.clone()),
            ("alias", detector.alias.clone()),
            ("key", detector.key.clone()),
            ("unit", detector.unit.clone()),
            ("min", num(detector.min)),
            ("max", num(detector.max)),
        ],
    );
    Ok(())
}

// ----- batches -----

#[derive(Debug, Subcommand)]
pub(crate) enum BatchesCommand {
    /// List batches, optionally of one section.
    List {
        #[arg(long)]
        section: Option<String>,
        #[command(flatten)]
        limit: Limit,
    },
    /// Start a batch in a section (readings taken while it is open belong to it).
    Start {
        #[arg(long)]
        section: String,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// End an open batch.
    End { id: String },
}

fn print_batches(output: Output, items: &[v1::Batch]) {
    render::list(
        output,
        items,
        &["ID", "NAME", "SECTION", "STARTED", "ENDED"],
        |b| {
            vec![
                b.id.clone(),
                b.name.clone(),
                b.section_id.clone(),
                ts(b.started_at.as_ref()),
                ts(b.ended_at.as_ref()),
            ]
        },
    );
}

async fn batches(client: &Client, command: BatchesCommand) -> Done {
    let mut api = BatchServiceClient::new(client.transport.clone());
    let output = client.output;
    let batch = match command {
        BatchesCommand::List { section, limit } => {
            let section = section.unwrap_or_default();
            let items = all_pages(limit.get(), |page| {
                let mut api = api.clone();
                let section_id = section.clone();
                async move {
                    let r = api
                        .list_batches(v1::ListBatchesRequest {
                            page: Some(page),
                            section_id,
                        })
                        .await?
                        .into_inner();
                    Ok((r.batches, r.next_page_token))
                }
            })
            .await?;
            print_batches(output, &items);
            return Ok(());
        }
        BatchesCommand::Start {
            section,
            name,
            description,
        } => api
            .start_batch(v1::StartBatchRequest {
                section_id: section,
                name,
                description,
            })
            .await?
            .into_inner(),
        BatchesCommand::End { id } => api
            .end_batch(v1::EndBatchRequest { id })
            .await?
            .into_inner(),
    };
    render::one(
        output,
        &batch,
        vec![
            ("id", batch.id.clone()),
            ("name", batch.name.clone()),
            ("section", batch.section_id.clone()),
            ("description", batch.description.clone()),
            ("started", ts(batch.started_at.as_ref())),
            ("ended", ts(batch.ended_at.as_ref())),
        ],
    );
    Ok(())
}

// ----- readings -----

/// Whose readings: exactly one of a chamber, a detector or a batch.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct Scope {
    #[arg(long)]
    chamber: Option<String>,
    #[arg(long)]
    detector: Option<String>,
    #[arg(long)]
    batch: Option<String>,
}

impl Scope {
    fn selector(&self) -> v1::ReadingSelector {
        use v1::reading_selector::Scope as S;
        let scope = match (&self.chamber, &self.detector, &self.batch) {
            (Some(c), _, _) => S::ChamberId(c.clone()),
            (_, Some(d), _) => S::DetectorId(d.clone()),
            (_, _, Some(b)) => S::BatchId(b.clone()),
            _ => unreachable!("clap requires one of --chamber, --detector, --batch"),
        };
        v1::ReadingSelector { scope: Some(scope) }
    }
}

/// A time range: `--from` (default 1h ago) to `--to` (default now).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Range {
    /// RFC 3339, `now`, or a duration ago (`1h`, `30m`).
    #[arg(long, default_value = "1h")]
    from: String,
    #[arg(long, default_value = "now")]
    to: String,
}

impl Range {
    fn parse(&self) -> Result<(prost_types::Timestamp, prost_types::Timestamp), Failure> {
        Ok((
            parse_time("--from", &self.from)?,
            parse_time("--to", &self.to)?,
        ))
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ExportFormat {
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ReadingsCommand {
    /// Readings of a chamber, detector or batch over a time range, oldest first.
    Query {
        #[command(flatten)]
        scope: Scope,
        #[command(flatten)]
        range: Range,
        #[command(flatten)]
        limit: Limit,
    },
    /// Follow new readings live (of a chamber or section; all when neither is given).
    Tail {
        #[arg(long)]
        chamber: Option<String>,
        #[arg(long)]
        section: Option<String>,
        /// Stop after this many polls' readings.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Write readings over a range to stdout or a file, as CSV or a JSON array.
    Export {
        #[command(flatten)]
        scope: Scope,
        #[command(flatten)]
        range: Range,
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
        /// Write here instead of stdout (replaced only once the export is complete).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

/// Chamber and detector names for readings shown in a table, fetched once per chamber (ids are
/// shown for a chamber that cannot be read).
struct Names {
    api: ChamberServiceClient<super::Transport>,
    chambers: std::collections::HashMap<String, Option<v1::Chamber>>,
}

impl Names {
    fn new(client: &Client) -> Self {
        Self {
            api: ChamberServiceClient::new(client.transport.clone()),
            chambers: std::collections::HashMap::new(),
        }
    }

    async fn row(&mut self, r: &v1::Reading) -> Vec<String> {
        if !self.chambers.contains_key(&r.chamber_id) {
            let found = self
                .api
                .get_chamber(v1::GetChamberRequest {
                    id: r.chamber_id.clone(),
                })
                .await
                .ok()
                .map(tonic::Response::into_inner);
            self.chambers.insert(r.chamber_id.clone(), found);
        }
        let chamber = self.chambers.get(&r.chamber_id).and_then(Option::as_ref);
        let detector = chamber.and_then(|c| c.detectors.iter().find(|d| d.id == r.detector_id));
        vec![
            ts(r.slot.as_ref()),
            chamber.map_or_else(|| r.chamber_id.clone(), |c| c.name.clone()),
            detector.map_or_else(|| r.detector_id.clone(), |d| d.name.clone()),
            num(r.value),
            detector.map(|d| d.unit.clone()).unwrap_or_default(),
            r.corruption.clone(),
        ]
    }

    async fn rows(&mut self, readings: &[v1::Reading]) -> Vec<Vec<String>> {
        let mut rows = Vec::with_capacity(readings.len());
        for r in readings {
            rows.push(self.row(r).await);
        }
        rows
    }
}

const READING_HEADERS: [&str; 6] = ["SLOT", "CHAMBER", "DETECTOR", "VALUE", "UNIT", "CORRUPTION"];

async fn readings(client: &Client, command: ReadingsCommand) -> Done {
    let mut api = ReadingServiceClient::new(client.transport.clone());
    let output = client.output;
    match command {
        ReadingsCommand::Query {
            scope,
            range,
            limit,
        } => {
            let (from, to) = range.parse()?;
            let selector = scope.selector();
            let items = all_pages(limit.get(), |page| {
                let mut api = api.clone();
                let request = v1::QueryReadingsRequest {
                    selector: Some(selector.clone()),
                    from: Some(from),
                    to: Some(to),
                    page: Some(page),
                };
                async move {
                    let r = api.query_readings(request).await?.into_inner();
                    Ok((r.readings, r.next_page_token))
                }
            })
            .await?;
            match output {
                Output::Json => render::json_array(&items),
                Output::Table => {
                    let rows = Names::new(client).rows(&items).await;
                    render::rows(&READING_HEADERS, rows);
                }
            }
        }
        ReadingsCommand::Tail {
            chamber,
            section,
            count,
        } => {
            let mut events = EventServiceClient::new(client.transport.clone());
            let mut stream = events
                .watch_readings(v1::WatchReadingsRequest {
                    section_id: section.unwrap_or_default(),
                    chamber_id: chamber.unwrap_or_default(),
                    detector_ids: Vec::new(),
                })
                .await?
                .into_inner();
            let mut polls = 0;
            let mut names = Names::new(client);
            if output == Output::Table {
                out!("{}", READING_HEADERS.join("  "));
            }
            while count.is_none_or(|c| polls < c) {
                let Some(item) = stream.message().await? else {
                    break;
                };
                use v1::watch_readings_response::Item;
                if matches!(item.item, Some(Item::Readings(_))) {
                    polls += 1;
                }
                match (output, &item.item) {
                    (Output::Json, _) => out!("{}", render::json(&item)),
                    (Output::Table, Some(Item::Readings(p))) => {
                        for row in names.rows(&p.readings).await {
                            out!("{}", row.join("  "));
                        }
                    }
                    (Output::Table, Some(Item::Lagged(l))) => {
                        eprintln!("(fell behind: {} polls' readings not shown)", l.missed);
                    }
                    (Output::Table, Some(Item::Gap(_))) => {
                        eprintln!("(the stream was interrupted; readings may be missing)");
                    }
                    (Output::Table, None) => {}
                }
            }
        }
        ReadingsCommand::Export {
            scope,
            range,
            format,
            out,
        } => {
            let (from, to) = range.parse()?;
            let mut sink = Sink::open(out.as_deref())?;
            // A failed export leaves no partial file behind.
            match export_into(&mut api, &scope, (from, to), format, &mut sink).await {
                Ok(()) => sink.finish()?,
                Err(e) => {
                    sink.discard();
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Writes the readings of `scope` over `range` to `sink` in `format`.
async fn export_into(
    api: &mut ReadingServiceClient<super::Transport>,
    scope: &Scope,
    (from, to): (prost_types::Timestamp, prost_types::Timestamp),
    format: ExportFormat,
    sink: &mut Sink,
) -> Done {
    match format {
        ExportFormat::Csv => {
            let mut stream = api
                .export_readings(v1::ExportReadingsRequest {
                    selector: Some(scope.selector()),
                    from: Some(from),
                    to: Some(to),
                })
                .await?
                .into_inner();
            while let Some(chunk) = stream.message().await? {
                sink.write(&chunk.data)?;
            }
        }
        ExportFormat::Json => {
            sink.write(b"[")?;
            let mut first = true;
            let mut token = String::new();
            loop {
                let r = api
                    .query_readings(v1::QueryReadingsRequest {
                        selector: Some(scope.selector()),
                        from: Some(from),
                        to: Some(to),
                        page: Some(v1::PageRequest {
                            page_size: 1000,
                            page_token: token,
                        }),
                    })
                    .await?
                    .into_inner();
                for reading in &r.readings {
                    if !first {
                        sink.write(b",\n")?;
                    }
                    first = false;
                    sink.write(render::json(reading).to_string().as_bytes())?;
                }
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            sink.write(b"]\n")?;
        }
    }
    Ok(())
}

/// Where an export goes: stdout, or a temporary file renamed into place once complete (an
/// interrupted export leaves no half-written file behind).
enum Sink {
    Stdout(std::io::StdoutLock<'static>),
    File {
        file: std::io::BufWriter<std::fs::File>,
        partial: std::path::PathBuf,
        path: std::path::PathBuf,
    },
}

impl Sink {
    fn open(path: Option<&std::path::Path>) -> Result<Self, Failure> {
        let Some(path) = path else {
            return Ok(Self::Stdout(std::io::stdout().lock()));
        };
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let file = std::fs::File::create(&partial)
            .map_err(|e| Failure::usage(format!("cannot write {}: {e}", partial.display())))?;
        Ok(Self::File {
            file: std::io::BufWriter::new(file),
            partial,
            path: path.to_owned(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let written = match self {
            Self::Stdout(out) => out.write_all(bytes),
            Self::File { file, .. } => file.write_all(bytes),
        };
        written.map_err(|e| Failure::usage(format!("cannot write the export: {e}")))
    }

    /// Drops what was written (a file's partial copy is removed).
    fn discard(self) {
        if let Self::File { file, partial, .. } = self {
            drop(file);
            let _ = std::fs::remove_file(partial);
        }
    }

    fn finish(self) -> Result<(), Failure> {
        match self {
            Self::Stdout(mut out) => out
                .flush()
                .map_err(|e| Failure::usage(format!("cannot write the export: {e}"))),
            Self::File {
                file,
                partial,
                path,
            } => {
                let file = file.into_inner().map_err(|e| {
                    Failure::usage(format!("cannot write {}: {e}", partial.display()))
                })?;
                file.sync_all()
                    .and_then(|()| std::fs::rename(&partial, &path))
                    .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))
            }
        }
    }
}

// ----- polls -----

#[derive(Debug, Subcommand)]
pub(crate) enum PollsCommand {
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

async fn polls(client: &Client, command: PollsCommand) -> Done {
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

// ----- tokens -----

#[derive(Debug, Subcommand)]
pub(crate) enum TokensCommand {
    /// Your API tokens (admins: the organization's).
    List(Limit),
    /// Create an API token; its secret is printed once.
    Create {
        name: String,
        /// admin, operator or viewer (at most your own role; default: your role).
        #[arg(long, default_value = "")]
        role: String,
        /// How long it is valid (e.g. 30d; default: the server's default).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Revoke a token: it stops working within the server's decision cache TTL.
    Revoke { id: String },
}

async fn tokens(client: &Client, command: TokensCommand) -> Done {
    let mut api = AuthServiceClient::new(client.transport.clone());
    let output = client.output;
    match command {
        TokensCommand::List(limit) => {
            let items = all_pages(limit.get(), |page| {
                let mut api = api.clone();
                async move {
                    let r = api
                        .list_api_tokens(v1::ListApiTokensRequest { page: Some(page) })
                        .await?
                        .into_inner();
                    Ok((r.tokens, r.next_page_token))
                }
            })
            .await?;
            render::list(
                output,
                &items,
                &[
                    "ID",
                    "NAME",
                    "ROLE",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                    "REVOKED",
                ],
                |t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.role.clone(),
                        ts(t.created_at.as_ref()),
                        ts(t.expires_at.as_ref()),
                        ts(t.last_used_at.as_ref()),
                        ts(t.revoked_at.as_ref()),
                    ]
                },
            );
        }
        TokensCommand::Create {
            name,
            role,
            expires_in,
        } => {
            let r = api
                .create_api_token(v1::CreateApiTokenRequest {
                    name,
                    role,
                    expires_in: expires_in
                        .map(|e| parse_duration("--expires-in", &e))
                        .transpose()?,
                })
                .await?
                .into_inner();
            let token = r.token.clone().unwrap_or_default();
            render::one(
                output,
                &r,
                vec![
                    ("id", token.id.clone()),
                    ("name", token.name.clone()),
                    ("role", token.role.clone()),
                    ("expires", ts(token.expires_at.as_ref())),
                    ("secret (shown once)", r.secret.clone()),
                ],
            );
        }
        TokensCommand::Revoke { id } => {
            api.revoke_api_token(v1::RevokeApiTokenRequest { id: id.clone() })
                .await?;
            render::done(output, "revoked token", &id);
        }
    }
    Ok(())
}

// ----- users -----

#[derive(Debug, Subcommand)]
pub(crate) enum UsersCommand {
    /// Who the token belongs to.
    Me,
    /// The users of your organization.
    List(Limit),
    /// Add a user (admins only).
    Add {
        email: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Their first password (to sign in); read from CHAMBERLAIN_NEW_USER_PASSWORD so it
        /// stays out of the shell history.
        #[arg(long, env = "CHAMBERLAIN_NEW_USER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Change a user's role (admins only).
    SetRole { id: String, role: String },
    /// Delete a user (admins only).
    Delete { id: String },
}

fn print_user(output: Output, u: &v1::User) {
    render::one(
        output,
        u,
        vec![
            ("id", u.id.clone()),
            ("email", u.email.clone()),
            ("name", u.display_name.clone()),
            ("role", u.role.clone()),
            ("organization", u.organization_id.clone()),
            ("disabled", u.disabled.to_string()),
            ("created", ts(u.created_at.as_ref())),
        ],
    );
}

async fn users(client: &Client, command: UsersCommand) -> Done {
    let mut api = UserServiceClient::new(client.transport.clone());
    let output = client.output;
    let user = match command {
        UsersCommand::Me => api.who_am_i(v1::WhoAmIRequest {}).await?.into_inner(),
        UsersCommand::List(limit) => {
            let items = all_pages(limit.get(), |page| {
                let mut api = api.clone();
                async move {
                    let r = api
                        .list_users(v1::ListUsersRequest { page: Some(page) })
                        .await?
                        .into_inner();
                    Ok((r.users, r.next_page_token))
                }
            })
            .await?;
            render::list(
                output,
                &items,
                &["ID", "EMAIL", "NAME", "ROLE", "DISABLED", "CREATED"],
                |u| {
                    vec![
                        u.id.clone(),
                        u.email.clone(),
                        u.display_name.clone(),
                        u.role.clone(),
                        u.disabled.to_string(),
                        ts(u.created_at.as_ref()),
                    ]
                },
            );
            return Ok(());
        }
        UsersCommand::Add {
            email,
            role,
            name,
            password,
        } => api
            .create_user(v1::CreateUserRequest {
                email,
                display_name: name,
                role,
                password,
            })
            .await?
            .into_inner(),
        UsersCommand::SetRole { id, role } => api
            .set_user_role(v1::SetUserRoleRequest { id, role })
            .await?
            .into_inner(),
        UsersCommand::Delete { id } => {
            api.delete_user(v1::DeleteUserRequest { id: id.clone() })
                .await?;
            render::done(output, "deleted user", &id);
            return Ok(());
        }
    };
    print_user(output, &user);
    Ok(())
}
