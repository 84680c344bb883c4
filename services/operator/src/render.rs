//! What the operator commands print: tables for people, JSON for scripts. The JSON is the
//! proto3 JSON mapping with the proto's field names, exactly what the HTTP/JSON API returns
//! through Envoy, so a script can switch between the two.

use std::sync::OnceLock;
use std::time::Duration;

use chamberlain_proto::v1;
use comfy_table::{ContentArrangement, Table, presets};
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use crate::failure::exit;

/// How replies are printed (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for a terminal.
    Table,
    /// JSON on one line: one object, or an array for lists.
    Json,
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(chamberlain_proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled-in descriptor set decodes")
    })
}

/// A message as proto3 JSON, every field present (defaults too), field names as in the proto.
pub(crate) fn json<M: Message + Name>(message: &M) -> serde_json::Value {
    let descriptor = pool()
        .get_message_by_name(&M::full_name())
        .expect("every API message is in the descriptor set");
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message decodes as itself");
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("proto3 JSON serialization cannot fail")
}

/// Prints `items`: as a table with `headers`, one `row` per item, or as a JSON array.
pub(crate) fn list<M: Message + Name>(
    output: Output,
    items: &[M],
    headers: &[&str],
    row: impl Fn(&M) -> Vec<String>,
) {
    match output {
        Output::Json => json_array(items),
        Output::Table => {
            rows(headers, items.iter().map(row).collect());
        }
    }
}

/// Prints `items` as one JSON array.
pub(crate) fn json_array<M: Message + Name>(items: &[M]) {
    let all: Vec<serde_json::Value> = items.iter().map(json).collect();
    out!("{}", serde_json::Value::Array(all));
}

/// Prints rows already rendered, under `headers`.
pub(crate) fn rows(headers: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        out!("(none)");
        return;
    }
    let mut table = new_table();
    table.set_header(headers.to_vec());
    for row in rows {
        table.add_row(row);
    }
    print(table);
}

/// Prints one item: as `field  value` lines, or as a JSON object.
pub(crate) fn one<M: Message + Name>(output: Output, item: &M, fields: Vec<(&str, String)>) {
    match output {
        Output::Json => out!("{}", json(item)),
        Output::Table => {
            let mut table = new_table();
            for (name, value) in fields {
                table.add_row(vec![name.to_owned(), value]);
            }
            print(table);
        }
    }
}

/// A confirmation of a change that returns nothing (a deletion): a sentence, or `{}` plus the
/// id for scripts.
pub(crate) fn done(output: Output, what: &str, id: &str) {
    match output {
        Output::Json => out!("{}", serde_json::json!({ "id": id })),
        Output::Table => out!("{what} {id}"),
    }
}

/// A chamber's detectors, as `chambers show` and `detectors list` print them.
pub(crate) fn detectors(output: Output, items: &[v1::Detector]) {
    list(
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

/// Columns two spaces apart, nothing before the first or after the last.
fn print(mut table: Table) {
    let columns = table.column_count();
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i + 1 == columns { 0 } else { 2 }));
    }
    out!("{table}");
}

fn new_table() -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    table
}

/// A timestamp in RFC 3339 (UTC, milliseconds), or `-` when unset.
pub(crate) fn ts(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|at| {
            at.replace_nanosecond(at.nanosecond() / 1_000_000 * 1_000_000)
                .ok()
        })
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{}s", t.seconds))
}

/// A duration the way it is typed (`5s`, `1m 30s`), or `-` when unset.
pub(crate) fn dur(d: Option<&prost_types::Duration>) -> String {
    let Some(d) = d else { return "-".into() };
    let d = Duration::from_secs(u64::try_from(d.seconds).unwrap_or(0))
        + Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(0));
    humantime::format_duration(d).to_string()
}

/// An optional number, `-` when unset.
pub(crate) fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// An enum value's name without its type prefix, lower case (`CHAMBER_STATE_ACTIVE` → `active`).
pub(crate) fn enum_name<E: std::fmt::Debug>(value: E) -> String {
    let name = format!("{value:?}");
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// Writes one line of a reply to stdout (see `out!`).
pub(crate) fn write_out(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        // Whoever reads the output has seen enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("chamberlain: cannot write to stdout: {e}");
            std::process::exit(i32::from(exit::USAGE));
        }
    }
}
