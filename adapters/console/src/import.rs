//! Importing chambers from a CSV file, as `chamberlain import` does: the same columns, each row
//! checked as the API checks a single create, refused rows named by line and column, and all
//! or nothing unless the user chooses to skip refused rows.
//!
//! The answer is streamed: the page's head first, then progress as rows are checked and while
//! the chambers are created, then the outcome. It is one request, so it works the same behind
//! any number of gateways. A user who leaves before the rows are checked creates nothing; the
//! creation itself is one transaction.

use std::collections::HashMap;
use std::convert::Infallible;

use askama::Template;
use axum::body::{Body, Bytes};
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chamberlain_domain::error::{Rule, ValidationError};
use chamberlain_domain::model::{PageSize, SectionId, every_page};
use chamberlain_domain::usecases::{
    Actor, ChamberImport, ImportMode, ImportReport, NewChamber, NewDetector, UseCaseError,
};
use tokio::sync::mpsc;

use crate::Console;
use crate::pages::{Nav, error_page, refusal, render};

/// The largest file accepted (50,000 rows of about 1 KiB).
pub(crate) const MAX_IMPORT_BYTES: usize = 64 << 20;

/// Rows checked between two progress updates.
const PROGRESS_EVERY: usize = 500;

/// Where the streamed outcome goes in the page.
const STREAM_MARK: &str = "<!--import-stream-->";

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

#[derive(Template)]
#[template(path = "import.html")]
struct ImportPage {
    nav: Nav,
    /// The page answering an upload: the stream goes where the template prints the mark.
    running: bool,
    mark: &'static str,
}

pub(crate) async fn import_form(State(console): State<Console>, headers: HeaderMap) -> Response {
    let session = match console.session(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    if let Err(e) = console
        .inner
        .api
        .admin
        .begin_import(&session.identity.actor)
    {
        return refusal(&e);
    }
    render(&ImportPage {
        nav: session.nav(),
        running: false,
        mark: STREAM_MARK,
    })
}

/// A refused row, by line of the file and column.
struct RowRefusal {
    line: u64,
    column: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "import_result.html")]
struct ImportResult {
    /// Whether anything was created.
    created: usize,
    rows: usize,
    refused: Vec<RowRefusal>,
    skip_refused: bool,
    /// The import could not run to its end (the file, or the store); nothing was created.
    failure: Option<String>,
}

/// What the upload carried.
#[derive(Default)]
struct Upload {
    csrf: String,
    file: Vec<u8>,
    skip_refused: bool,
}

async fn read_upload(mut multipart: Multipart) -> Result<Upload, String> {
    let mut upload = Upload::default();
    while let Some(field) = multipart.next_field().await.map_err(|e| e.body_text())? {
        match field.name() {
            Some("csrf") => upload.csrf = field.text().await.map_err(|e| e.body_text())?,
            Some("file") => {
                upload.file = field.bytes().await.map_err(|e| e.body_text())?.to_vec();
            }
            Some("skip_refused") => upload.skip_refused = true,
            _ => {}
        }
    }
    Ok(upload)
}

pub(crate) async fn import(
    State(console): State<Console>,
    headers: HeaderMap,
    multipart: Multipart,
) -> Response {
    let upload = match read_upload(multipart).await {
        Ok(upload) => upload,
        Err(reason) => return error_page(StatusCode::BAD_REQUEST, "Refused", &reason),
    };
    let session = match console.session_for_change(&headers, &upload.csrf).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let actor = session.identity.actor;
    let import = match console.inner.api.admin.begin_import(&actor) {
        Ok(import) => import,
        Err(e) => return refusal(&e),
    };
    let page = ImportPage {
        nav: session.nav(),
        running: true,
        mark: STREAM_MARK,
    };
    let Ok(html) = page.render() else {
        return refusal(&UseCaseError::Unavailable {
            message: "the import page could not be rendered".into(),
        });
    };
    let (head, tail) = html.split_once(STREAM_MARK).unwrap_or((&html, ""));
    let (head, tail) = (head.to_owned(), tail.to_owned());
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(4);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(head))).await.is_err() {
            return;
        }
        let Some(result) = run_import(&console, &actor, import, upload, &tx).await else {
            return; // The user left before anything was created.
        };
        let fragment = result.render().unwrap_or_default();
        let _ = tx.send(Ok(Bytes::from(fragment + &tail))).await;
    });
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

/// Checks every row and creates the chambers, sending progress to `tx`. `None` when the user
/// left (the answer could not be sent) before the creation started.
async fn run_import(
    console: &Console,
    actor: &Actor,
    mut import: ChamberImport,
    upload: Upload,
    tx: &mpsc::Sender<Result<Bytes, Infallible>>,
) -> Option<ImportResult> {
    let failed = |failure: String| ImportResult {
        created: 0,
        rows: 0,
        refused: Vec::new(),
        skip_refused: upload.skip_refused,
        failure: Some(failure),
    };
    let sections = match section_ids(console, actor).await {
        Ok(sections) => sections,
        Err(e) => return Some(failed(e.to_string())),
    };
    let rows = match read_rows(&upload.file, &sections) {
        Ok(rows) => rows,
        Err(e) => return Some(failed(e)),
    };
    let total = rows.len();
    let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
    for (i, row) in rows.into_iter().enumerate() {
        let added = match row.chamber {
            Ok(new) => import.add(new).await,
            Err(error) => import.refuse(error),
        };
        if let Err(e) = added {
            return Some(failed(e.to_string()));
        }
        let checked = i + 1;
        if checked % PROGRESS_EVERY == 0 || checked == total {
            let chunk = format!(
                "<p class=\"progress\"><progress value=\"{checked}\" max=\"{total}\"></progress> \
                 Checked {checked} of {total} rows</p>\n"
            );
            tx.send(Ok(Bytes::from(chunk))).await.ok()?;
        }
    }
    let mode = if upload.skip_refused {
        ImportMode::SkipRefused
    } else {
        ImportMode::AllOrNothing
    };
    let creating = total - import.rejected().len();
    if creating > 0 && (mode == ImportMode::SkipRefused || import.rejected().is_empty()) {
        let chunk = format!(
            "<p class=\"progress\"><progress></progress> Creating {creating} chambers</p>\n"
        );
        tx.send(Ok(Bytes::from(chunk))).await.ok()?;
    }
    let ImportReport { created, rejected } = match import.commit(mode).await {
        Ok(report) => report,
        Err(e) => return Some(failed(e.to_string())),
    };
    Some(ImportResult {
        created: created.len(),
        rows: total,
        refused: rejected
            .into_iter()
            .map(|r| {
                let column = column_of(&r.error.field).to_owned();
                RowRefusal {
                    line: lines.get(r.row).copied().unwrap_or(0),
                    reason: if column == r.error.field {
                        r.error.rule.to_string()
                    } else {
                        r.error.to_string()
                    },
                    column,
                }
            })
            .collect(),
        skip_refused: upload.skip_refused,
        failure: None,
    })
}

/// The CSV column a refused field comes from.
fn column_of(field: &str) -> &str {
    let field = field.strip_prefix("chamber.").unwrap_or(field);
    if field.starts_with("detectors") || field.starts_with("detector") {
        return "detectors";
    }
    match field {
        "section_id" => "section",
        other => other,
    }
}

async fn section_ids(
    console: &Console,
    actor: &Actor,
) -> Result<HashMap<String, SectionId>, UseCaseError> {
    let size = PageSize::new(1000).unwrap_or_default();
    let admin = &console.inner.api.admin;
    Ok(every_page(size, |page| admin.list_sections(actor, page))
        .await?
        .into_iter()
        .map(|s| (s.name.as_str().to_owned(), s.id))
        .collect())
}

/// One data row of the file: its line, and the chamber it describes or why it cannot be read.
#[derive(Debug)]
struct Row {
    line: u64,
    chamber: Result<NewChamber, ValidationError>,
}

/// Reads the file's rows; a file that cannot be read as a whole (no header, an unknown or
/// missing column) is refused with the line and the reason.
fn read_rows(file: &[u8], sections: &HashMap<String, SectionId>) -> Result<Vec<Row>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(file);
    let headers = reader
        .headers()
        .map_err(|e| format!("line 1: {e}"))?
        .clone();
    let mut at = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        let h = h.to_ascii_lowercase();
        if !COLUMNS.contains(&h.as_str()) {
            return Err(format!(
                "line 1: unknown column {h:?} (the columns are {})",
                COLUMNS.join(", ")
            ));
        }
        at.insert(h, i);
    }
    if let Some(missing) = REQUIRED.iter().find(|c| !at.contains_key(**c)) {
        return Err(format!("line 1: the header has no {missing:?} column"));
    }
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(rows),
            Ok(true) => {
                let line = record.position().map_or(line, csv::Position::line);
                let cell = |c: &str| at.get(c).and_then(|&i| record.get(i)).unwrap_or("");
                rows.push(Row {
                    line,
                    chamber: chamber_of(&cell, sections),
                });
            }
            // A row that is not CSV (a wrong number of fields, not UTF-8) is refused alone.
            Err(e) => rows.push(Row {
                line: e.position().map_or(line, csv::Position::line),
                chamber: Err(ValidationError::new(
                    "row",
                    Rule::Format(match e.kind() {
                        csv::ErrorKind::UnequalLengths {
                            expected_len, len, ..
                        } => format!("has {len} fields where the header has {expected_len}"),
                        _ => e.to_string(),
                    }),
                )),
            }),
        }
    }
}

fn chamber_of<'a>(
    cell: &dyn Fn(&str) -> &'a str,
    sections: &HashMap<String, SectionId>,
) -> Result<NewChamber, ValidationError> {
    let refused =
        |column: &'static str, why: String| ValidationError::new(column, Rule::Format(why));
    let section = cell("section");
    let section_id = match SectionId::parse(section) {
        Ok(id) => id,
        Err(_) => *sections
            .get(section)
            .ok_or_else(|| refused("section", format!("no section named {section:?}")))?,
    };
    let duration = |column: &'static str| match cell(column) {
        "" => Ok(None),
        raw => humantime::parse_duration(raw)
            .map(Some)
            .map_err(|e| refused(column, format!("{raw:?}: {e} (e.g. 5s, 1m30s, 500ms)"))),
    };
    let interval =
        duration("interval")?.ok_or_else(|| ValidationError::new("interval", Rule::Required))?;
    let detectors = cell("detectors")
        .split(';')
        .filter(|d| !d.trim().is_empty())
        .map(|spec| {
            let parsed = spec.trim().rsplit_once('=').and_then(|(key, rest)| {
                let (name, unit) = rest.split_once(':').unwrap_or((rest, ""));
                (!key.trim().is_empty() && !name.trim().is_empty()).then(|| NewDetector {
                    key: key.trim().to_owned(),
                    name: name.trim().to_owned(),
                    unit: unit.trim().to_owned(),
                    alias: None,
                    min: None,
                    max: None,
                })
            });
            parsed.ok_or_else(|| refused("detectors", format!("{spec:?} is not key=name[:unit]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NewChamber {
        section_id,
        name: cell("name").to_owned(),
        url: cell("url").to_owned(),
        format: cell("format").to_owned(),
        interval,
        timeout: duration("timeout")?,
        detectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_their_lines_and_a_bad_cell_names_its_column() {
        let room = SectionId::random();
        let sections = HashMap::from([("Room".to_owned(), room)]);
        let file = b"# chambers\nsection,name,url,interval,detectors\n\
            Room,a,http://a.example,5s,t=Temperature:C\n\
            Room,b,http://b.example,soon,t=Temperature\n\
            Nowhere,c,http://c.example,5s,t=T\n\
            Room,d,http://d.example\n\
            Room,e,http://e.example,1m,t=T;h=Humidity:%\n";
        let rows = read_rows(file, &sections).unwrap();
        let summary: Vec<(u64, Result<String, String>)> = rows
            .iter()
            .map(|r| {
                (
                    r.line,
                    r.chamber
                        .as_ref()
                        .map(|c| c.name.clone())
                        .map_err(|e| e.field.to_string()),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (3, Ok("a".into())),
                (4, Err("interval".into())),
                (5, Err("section".into())),
                (6, Err("row".into())),
                (7, Ok("e".into())),
            ]
        );
        let e = rows[4].chamber.as_ref().unwrap();
        assert_eq!(e.section_id, room);
        assert_eq!(e.detectors.len(), 2);
        assert_eq!(e.detectors[1].unit, "%");
        assert_eq!(
            read_rows(b"section,name,url,interval,detectors,colour\n", &sections).unwrap_err(),
            "line 1: unknown column \"colour\" (the columns are section, name, url, format, interval, timeout, detectors)"
        );
        assert_eq!(
            read_rows(b"section,name,url,detectors\n", &sections).unwrap_err(),
            "line 1: the header has no \"interval\" column"
        );
    }

    #[test]
    fn refused_fields_map_to_their_columns() {
        for (field, column) in [
            ("chamber.url", "url"),
            ("chamber.section_id", "section"),
            ("detectors[1].key", "detectors"),
            ("chamber.name", "name"),
            ("interval", "interval"),
        ] {
            assert_eq!(column_of(field), column);
        }
    }
}
