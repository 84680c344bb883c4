//! A call's request message(s) from the three places a JSON call puts its fields: the path's
//! variables, the query, and the body, as the rule says.

use prost_reflect::{DeserializeOptions, DynamicMessage, Kind, MessageDescriptor};
use serde_json::{Map, Value};

use crate::rules::{Binding, BodyRule};

/// Why a request cannot be turned into its message: the caller's mistake (`INVALID_ARGUMENT`),
/// with the field it is in when there is one (as the caller wrote it: `detectors[1].min`).
/// Shown as `field: description`, as the gateway's refusals (and Envoy's) are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{description}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct Refusal {
    pub field: Option<String>,
    pub description: String,
}

impl Refusal {
    fn whole(description: String) -> Self {
        Self {
            field: None,
            description,
        }
    }

    fn of(field: &str, description: impl std::fmt::Display) -> Self {
        Self {
            field: Some(field.to_owned()),
            description: description.to_string(),
        }
    }
}

/// The request messages of one call: one, or one per element of a JSON array body for a
/// client-streaming method (a single object is a stream of one).
///
/// # Errors
/// A [`Refusal`] naming the body, the parameter or the field that is wrong.
pub fn messages(
    binding: &Binding,
    bound: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<Vec<DynamicMessage>, Refusal> {
    let input = binding.rpc.input();
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(
            serde_json::from_slice::<Value>(body)
                .map_err(|e| Refusal::whole(format!("the body is not JSON: {e}")))?,
        )
    };
    let bodies = match body {
        Some(Value::Array(items)) if binding.rpc.is_client_streaming() => {
            items.into_iter().map(Some).collect()
        }
        other => vec![other],
    };
    bodies
        .into_iter()
        .map(|body| {
            let mut root = match (&binding.body, body) {
                (BodyRule::Whole, Some(Value::Object(map))) => map,
                (BodyRule::Whole, Some(_)) => {
                    return Err(Refusal::whole(format!(
                        "the body must be a JSON object (a {})",
                        input.full_name()
                    )));
                }
                (BodyRule::Field(field), Some(value)) => {
                    let mut root = Map::new();
                    set(&mut root, &input, field, Bound::Json(value))?;
                    root
                }
                (_, _) => Map::new(),
            };
            for (field, value) in bound {
                set(&mut root, &input, field, Bound::Text(value))?;
            }
            if binding.body != BodyRule::Whole {
                for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
                    set(&mut root, &input, &key, Bound::Text(&value))?;
                }
            }
            let root = Value::Object(root);
            DynamicMessage::deserialize_with_options(
                input.clone(),
                &root,
                &DeserializeOptions::new(),
            )
            .map_err(|e| match locate(&input, &root) {
                Some((field, e)) => Refusal::of(&field, e),
                None => Refusal::whole(format!("invalid {}: {e}", input.full_name())),
            })
        })
        .collect()
}

enum Bound<'a> {
    /// From the path or the query: text, typed by the field.
    Text(&'a str),
    /// The body bound to a field: JSON already.
    Json(Value),
}

/// Sets the field at `path` (dotted proto or JSON names) under `root`, a JSON object of
/// message `message`; a repeated field gathers every value given.
fn set(
    root: &mut Map<String, Value>,
    message: &MessageDescriptor,
    path: &str,
    value: Bound<'_>,
) -> Result<(), Refusal> {
    let mut object = root;
    let mut message = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = message
            .get_field_by_name(part)
            .or_else(|| message.get_field_by_json_name(part))
            .ok_or_else(|| {
                Refusal::of(path, format!("no such field in {}", message.full_name()))
            })?;
        // One key per field: a body's `sectionId` and a path's `section_id` are the same.
        if field.json_name() != field.name() {
            object.remove(field.json_name());
        }
        if parts.peek().is_none() {
            let json = match value {
                Bound::Json(json) => json,
                Bound::Text(text) => typed(&field.kind(), text).ok_or_else(|| {
                    Refusal::of(
                        path,
                        format!("{text:?} is not a valid {}", kind_name(&field.kind())),
                    )
                })?,
            };
            if field.is_list() && !matches!(json, Value::Array(_)) {
                match object
                    .entry(field.name().to_owned())
                    .or_insert_with(|| Value::Array(Vec::new()))
                {
                    Value::Array(items) => items.push(json),
                    other => *other = Value::Array(vec![json]),
                }
            } else {
                object.insert(field.name().to_owned(), json);
            }
            return Ok(());
        }
        let Kind::Message(inner) = field.kind() else {
            return Err(Refusal::of(
                path,
                format!("{} is not a message", field.name()),
            ));
        };
        if field.is_list() || field.is_map() {
            return Err(Refusal::of(
                path,
                format!("{} is repeated and cannot be bound by name", field.name()),
            ));
        }
        let entry = object
            .entry(field.name().to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        object = entry.as_object_mut().expect("made an object above");
        message = inner;
    }
    Ok(())
}

/// The field of `value` (a JSON object of `message`) that does not read, with the reason, by
/// reading one field at a time and going down into messages and lists of them.
fn locate(message: &MessageDescriptor, value: &Value) -> Option<(String, String)> {
    let Value::Object(fields) = value else {
        return None;
    };
    for (key, field_value) in fields {
        let alone = Value::Object(Map::from_iter([(key.clone(), field_value.clone())]));
        let Err(error) = DynamicMessage::deserialize_with_options(
            message.clone(),
            &alone,
            &DeserializeOptions::new(),
        ) else {
            continue;
        };
        let inner = message
            .get_field_by_name(key)
            .or_else(|| message.get_field_by_json_name(key))
            .and_then(|field| match field.kind() {
                Kind::Message(inner) if !inner.full_name().starts_with("google.protobuf.") => {
                    Some(inner)
                }
                _ => None,
            });
        let deeper = match (inner, field_value) {
            (Some(inner), Value::Array(items)) => items.iter().enumerate().find_map(|(i, item)| {
                locate(&inner, item).map(|(path, e)| (format!("{key}[{i}].{path}"), e))
            }),
            (Some(inner), item @ Value::Object(_)) => {
                locate(&inner, item).map(|(path, e)| (format!("{key}.{path}"), e))
            }
            _ => None,
        };
        return Some(deeper.unwrap_or_else(|| (key.clone(), error.to_string())));
    }
    None
}

/// Text from a path or query as the JSON the field's type reads; `None` when it cannot be.
fn typed(kind: &Kind, text: &str) -> Option<Value> {
    Some(match kind {
        Kind::Bool => Value::Bool(match text {
            "true" => true,
            "false" => false,
            _ => return None,
        }),
        Kind::Enum(_) => match text.parse::<i32>() {
            Ok(number) => Value::from(number),
            Err(_) => Value::String(text.to_owned()),
        },
        // Well-known types read from their JSON strings (Duration "5s", Timestamp RFC 3339,
        // wrappers their value); other messages have no text form.
        Kind::Message(m) if m.full_name().starts_with("google.protobuf.") => {
            Value::String(text.to_owned())
        }
        Kind::Message(_) => return None,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::from(text.parse::<i32>().ok()?),
        Kind::Uint32 | Kind::Fixed32 => Value::from(text.parse::<u32>().ok()?),
        // 64-bit integers are JSON strings in proto3 JSON.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            text.parse::<i64>().ok()?;
            Value::String(text.to_owned())
        }
        Kind::Uint64 | Kind::Fixed64 => {
            text.parse::<u64>().ok()?;
            Value::String(text.to_owned())
        }
        Kind::Float | Kind::Double => match text {
            "NaN" | "Infinity" | "-Infinity" => Value::String(text.to_owned()),
            _ => Value::from(text.parse::<f64>().ok()?),
        },
        Kind::String | Kind::Bytes => Value::String(text.to_owned()),
    })
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}
