//! `chamberlain readings`: query a range, follow new readings live, export CSV or JSON.

use std::io::Write;

use chamberlain_proto::v1::{
    self, chamber_service_client::ChamberServiceClient, event_service_client::EventServiceClient,
    reading_service_client::ReadingServiceClient,
};
use clap::Subcommand;

use crate::connection::{Client, Transport};
use crate::failure::{Done, Failure};
use crate::pages::{Limit, all_pages};
use crate::parse::Range;
use crate::render::{self, Output, num, ts};

/// Whose readings: exactly one of a chamber, a detector or a batch.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Scope {
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

/// What to export: exactly one of a chamber, every chamber of a section, a batch or a
/// detector.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ExportScope {
    #[arg(long)]
    chamber: Option<String>,
    #[arg(long)]
    section: Option<String>,
    #[arg(long)]
    batch: Option<String>,
    #[arg(long)]
    detector: Option<String>,
}

impl ExportScope {
    fn download(&self) -> v1::download_readings_request::Scope {
        use v1::download_readings_request::Scope as S;
        match (&self.chamber, &self.section, &self.batch, &self.detector) {
            (Some(c), ..) => S::ChamberId(c.clone()),
            (_, Some(s), ..) => S::SectionId(s.clone()),
            (_, _, Some(b), _) => S::BatchId(b.clone()),
            (_, _, _, Some(d)) => S::DetectorId(d.clone()),
            _ => unreachable!("clap requires one of --chamber, --section, --batch, --detector"),
        }
    }

    /// The readings query's selector (JSON export); a section has none.
    fn selector(&self) -> Result<v1::ReadingSelector, Failure> {
        use v1::reading_selector::Scope as S;
        let scope = match self.download() {
            v1::download_readings_request::Scope::ChamberId(c) => S::ChamberId(c),
            v1::download_readings_request::Scope::BatchId(b) => S::BatchId(b),
            v1::download_readings_request::Scope::DetectorId(d) => S::DetectorId(d),
            v1::download_readings_request::Scope::SectionId(_) => {
                return Err(Failure::usage(
                    "--section: exported as CSV only (--format csv); for JSON, export its chambers one by one",
                ));
            }
        };
        Ok(v1::ReadingSelector { scope: Some(scope) })
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ReadingsCommand {
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
    /// Write readings over a range to stdout or a file, as CSV (the API's download) or a JSON
    /// array.
    Export {
        #[command(flatten)]
        scope: ExportScope,
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
    api: ChamberServiceClient<Transport>,
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

pub(crate) async fn run(client: &Client, command: ReadingsCommand) -> Done {
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
    api: &mut ReadingServiceClient<Transport>,
    scope: &ExportScope,
    (from, to): (prost_types::Timestamp, prost_types::Timestamp),
    format: ExportFormat,
    sink: &mut Sink,
) -> Done {
    match format {
        ExportFormat::Csv => {
            let mut stream = api
                .download_readings(v1::DownloadReadingsRequest {
                    scope: Some(scope.download()),
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
                        selector: Some(scope.selector()?),
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
