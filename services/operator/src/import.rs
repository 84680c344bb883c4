//! `chamberlain import chambers.csv`: bulk registration through the `ImportChambers` RPC, one
//! transaction for the whole file.
//!
//! The file is read and checked here first (columns, durations, detector specs, section
//! names); any row refused here stops the import before anything is sent, unless
//! `--continue-on-error`. The rows are then streamed to the server in chunks, a progress bar
//! following them, and the server checks each row again (URLs, keys, names taken) and creates
//! all of them at the end, or none if it refused one. Every refusal is reported with the line
//! of the file it came from.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use chamberlain_proto::v1::{
    self, chamber_service_client::ChamberServiceClient,
    section_service_client::SectionServiceClient,
};
use indicatif::{ProgressBar, ProgressStyle};
use tonic_types::StatusExt;

use crate::connection::Client;
use crate::failure::{Failure, exit};
use crate::parse::{detector_spec, parse_duration};
use crate::render::Output;

/// Refused rows the server details when it creates nothing (it says how many more there are).
const MAX_DETAILED: usize = 50;

/// Rows per streamed message.
const CHUNK_ROWS: usize = 250;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A CSV file with a header row; columns: section, name, url, format, interval, timeout,
    /// detectors (see the README).
    file: PathBuf,
    /// Create every acceptable row and report the others, instead of creating nothing when
    /// any row is refused.
    #[arg(long)]
    continue_on_error: bool,
}

/// A row refused, by line of the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct Refusal {
    line: u64,
    field: String,
    description: String,
}

const COLUMNS: [&str; 7] = [
    "section",
    "name",
    "url",
    "format",
    "interval",
    "timeout",
    "detectors",
];
const REQUIRED: [&str; 5] = ["section", "name", "url", "interval", "detectors"];

/// The rows of the file that could be read, with their lines, and those that could not.
struct Parsed {
    rows: Vec<(u64, v1::CreateChamberRequest)>,
    refused: Vec<Refusal>,
}

fn usage(e: impl std::fmt::Display) -> Failure {
    Failure::usage(e.to_string())
}

/// Reads the CSV; `sections` maps section names to ids (a column value that is an id is kept).
fn parse(file: &std::path::Path, sections: &HashMap<String, String>) -> Result<Parsed, Failure> {
    let shown = file.display();
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_path(file)
        .map_err(|e| usage(format!("cannot read {shown}: {e}")))?;
    let headers = reader
        .headers()
        .map_err(|e| usage(format!("{shown}: {e}")))?
        .clone();
    let mut at = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        let h = h.to_ascii_lowercase();
        if !COLUMNS.contains(&h.as_str()) {
            return Err(usage(format!(
                "{shown}, line 1: unknown column {h:?} (columns: {})",
                COLUMNS.join(", ")
            )));
        }
        at.insert(h, i);
    }
    if let Some(missing) = REQUIRED.iter().find(|c| !at.contains_key(**c)) {
        return Err(usage(format!(
            "{shown}, line 1: the header has no {missing:?} column"
        )));
    }
    let mut parsed = Parsed {
        rows: Vec::new(),
        refused: Vec::new(),
    };
    for record in reader.records() {
        let record = record.map_err(|e| usage(format!("{shown}: {e}")))?;
        let line = record.position().map_or(0, csv::Position::line);
        let cell = |c: &str| at.get(c).and_then(|&i| record.get(i)).unwrap_or("");
        match row(&cell, sections) {
            Ok(request) => parsed.rows.push((line, request)),
            Err((field, description)) => parsed.refused.push(Refusal {
                line,
                field: field.to_owned(),
                description,
            }),
        }
    }
    Ok(parsed)
}

fn row<'a>(
    cell: &dyn Fn(&str) -> &'a str,
    sections: &HashMap<String, String>,
) -> Result<v1::CreateChamberRequest, (&'static str, String)> {
    let section = cell("section");
    let section_id = if uuid::Uuid::parse_str(section).is_ok() {
        section.to_owned()
    } else {
        sections
            .get(section)
            .cloned()
            .ok_or_else(|| ("section", format!("no section named {section:?}")))?
    };
    let duration =
        |column: &'static str| -> Result<Option<prost_types::Duration>, (&'static str, String)> {
            match cell(column) {
                "" => Ok(None),
                raw => parse_duration(column, raw).map(Some).map_err(|e| {
                    (
                        column,
                        e.message
                            .trim_start_matches(&format!("{column}: "))
                            .to_owned(),
                    )
                }),
            }
        };
    let detectors = cell("detectors")
        .split(';')
        .filter(|d| !d.trim().is_empty())
        .map(detector_spec)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ("detectors", e))?;
    Ok(v1::CreateChamberRequest {
        section_id,
        name: cell("name").to_owned(),
        url: cell("url").to_owned(),
        format: match cell("format") {
            "" => "json".to_owned(),
            f => f.to_owned(),
        },
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        detectors,
    })
}

/// Section names of the caller's organization, to their ids.
async fn section_ids(client: &Client) -> Result<HashMap<String, String>, Failure> {
    let mut api = SectionServiceClient::new(client.transport.clone());
    let mut ids = HashMap::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_sections(v1::ListSectionsRequest {
                page: Some(v1::PageRequest {
                    page_size: 1000,
                    page_token: token,
                }),
            })
            .await?
            .into_inner();
        ids.extend(page.sections.into_iter().map(|s| (s.name, s.id)));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        token = page.next_page_token;
    }
}

pub(crate) async fn run(client: &Client, args: ImportArgs) -> Result<(), Failure> {
    let sections = section_ids(client).await?;
    let Parsed { rows, mut refused } = parse(&args.file, &sections)?;
    if !refused.is_empty() && !args.continue_on_error {
        return Err(refusals(
            &refused,
            rows.len() + refused.len(),
            "in the file",
        ));
    }
    let lines: Vec<u64> = rows.iter().map(|(line, _)| *line).collect();
    let bar = ProgressBar::new(rows.len() as u64).with_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} rows ({elapsed})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message("checking");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut api =
        ChamberServiceClient::new(client.transport.clone()).max_decoding_message_size(64 << 20);
    let call = api.import_chambers(tokio_stream::wrappers::ReceiverStream::new(rx));
    let continue_on_error = args.continue_on_error;
    let send = {
        let bar = bar.clone();
        async move {
            let mut rows = rows.into_iter().map(|(_, r)| r).peekable();
            while rows.peek().is_some() {
                let chunk: Vec<_> = rows.by_ref().take(CHUNK_ROWS).collect();
                let n = chunk.len() as u64;
                let message = v1::ImportChambersRequest {
                    chambers: chunk,
                    continue_on_error,
                };
                // The channel holds one message: a chunk counts once the server is reading.
                if tx.send(message).await.is_err() {
                    return;
                }
                bar.inc(n);
            }
            bar.set_message("creating");
            bar.enable_steady_tick(Duration::from_millis(200));
        }
    };
    let (reply, ()) = tokio::join!(call, send);
    bar.finish_and_clear();
    let reply = match reply {
        Ok(reply) => reply.into_inner(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            let Some(bad) = status.get_details_bad_request() else {
                return Err(status.into());
            };
            let server: Vec<Refusal> = bad
                .field_violations
                .iter()
                .map(|v| server_refusal(&lines, v.field.as_str(), &v.description))
                .collect();
            let mut failure = refusals(&server, lines.len(), "by the server");
            if server.len() >= MAX_DETAILED {
                failure
                    .message
                    .push_str(&format!("\n({})", status.message()));
            }
            return Err(failure);
        }
        Err(status) => return Err(status.into()),
    };
    refused.extend(reply.refused.iter().map(|r| {
        server_refusal(
            &lines,
            &format!("chambers[{}].{}", r.row, r.field),
            &r.description,
        )
    }));
    refused.sort_by_key(|r| r.line);
    match client.output {
        Output::Json => out!(
            "{}",
            serde_json::json!({
                "created": reply.chamber_ids.len(),
                "chamber_ids": reply.chamber_ids,
                "refused": refused,
            })
        ),
        Output::Table => {
            out!(
                "imported {} chambers from {}",
                reply.chamber_ids.len(),
                args.file.display()
            );
            for r in &refused {
                out!("  skipped line {}: {}: {}", r.line, r.field, r.description);
            }
        }
    }
    Ok(())
}

/// A server refusal naming `chambers[ROW].field`, turned to the row's line in the file.
fn server_refusal(lines: &[u64], field: &str, description: &str) -> Refusal {
    let parsed = field
        .strip_prefix("chambers[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(row, rest)| Some((row.parse::<usize>().ok()?, rest.trim_start_matches('.'))));
    match parsed {
        Some((row, inner)) => Refusal {
            line: lines.get(row).copied().unwrap_or(0),
            field: column_of(inner).to_owned(),
            description: description.to_owned(),
        },
        None => Refusal {
            line: 0,
            field: field.to_owned(),
            description: description.to_owned(),
        },
    }
}

/// The CSV column a request field comes from.
fn column_of(field: &str) -> &str {
    if field.starts_with("detectors") {
        return "detectors";
    }
    match field {
        "section_id" => "section",
        other => other,
    }
}

fn refusals(refused: &[Refusal], rows: usize, by: &str) -> Failure {
    let mut message = format!(
        "{} of {rows} rows refused {by}; nothing was imported (--continue-on-error imports the others)",
        refused.len()
    );
    for r in refused {
        message.push_str(&format!(
            "\n  line {}: {}: {}",
            r.line, r.field, r.description
        ));
    }
    Failure {
        exit: exit::INVALID,
        message,
    }
}
