//! Conversions between the API's messages and the domain's types; every parse names its field.

use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{PageRequest, PageSize};
use chamberlain_proto::v1;
use tonic::Status;

use crate::status::{from_validation, invalid};

pub fn ts(t: Timestamp) -> prost_types::Timestamp {
    let ms = t.as_unix_millis();
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

pub fn opt_ts(t: Option<Timestamp>) -> Option<prost_types::Timestamp> {
    t.map(ts)
}

/// The end of a range: `now` when the request leaves it unset.
pub fn until(
    field: &str,
    t: Option<&prost_types::Timestamp>,
    now: Timestamp,
) -> Result<Timestamp, Status> {
    match t {
        Some(t) => timestamp(field, Some(t)),
        None => Ok(now),
    }
}

/// A required timestamp.
pub fn timestamp(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Timestamp, Status> {
    let t = t.ok_or_else(|| invalid(field, "is required"))?;
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(field, "nanos must be within 0..1e9"));
    }
    t.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(t.nanos / 1_000_000)))
        .map(Timestamp::from_unix_millis)
        .ok_or_else(|| invalid(field, "is out of range"))
}

pub fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// An optional duration; negative ones are refused.
pub fn duration(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, Status> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid(field, "must not be negative"));
    }
    Ok(Some(
        Duration::from_secs(u64::try_from(d.seconds).unwrap_or(0))
            + Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(0)),
    ))
}

pub fn required_duration(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Duration, Status> {
    duration(field, d)?.ok_or_else(|| invalid(field, "is required"))
}

/// An id of the type `T`, named `field` in errors.
pub fn id<T>(
    field: &str,
    raw: &str,
    parse: fn(&str) -> Result<T, chamberlain_domain::error::ValidationError>,
) -> Result<T, Status> {
    if raw.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    parse(raw.trim()).map_err(|e| from_validation(&e.for_field(field.to_owned())))
}

/// An optional id: empty means none.
pub fn opt_id<T>(
    field: &str,
    raw: &str,
    parse: fn(&str) -> Result<T, chamberlain_domain::error::ValidationError>,
) -> Result<Option<T>, Status> {
    if raw.trim().is_empty() {
        Ok(None)
    } else {
        id(field, raw, parse).map(Some)
    }
}

/// A page request whose token is the previous page's last key, parsed by `cursor`.
pub fn page<K>(
    page: Option<&v1::PageRequest>,
    cursor: impl Fn(&str) -> Option<K>,
) -> Result<PageRequest<K>, Status> {
    let Some(page) = page else {
        return Ok(PageRequest::default());
    };
    let size = if page.page_size == 0 {
        PageSize::default()
    } else {
        PageSize::new(page.page_size)
            .map_err(|e| from_validation(&e.for_field("page.page_size")))?
    };
    let after = if page.page_token.is_empty() {
        None
    } else {
        Some(
            cursor(&page.page_token)
                .ok_or_else(|| invalid("page.page_token", "is not a token this API issued"))?,
        )
    };
    Ok(PageRequest { after, size })
}

pub fn token_of<K: ToString>(next: Option<K>) -> String {
    next.map(|k| k.to_string()).unwrap_or_default()
}
