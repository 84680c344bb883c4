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

/// The largest `seconds` a `google.protobuf.Duration` may hold (10,000 years).
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

/// An optional duration; negative ones, and ones outside `google.protobuf.Duration`'s ranges,
/// are refused naming `field`.
pub fn duration(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, Status> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid(field, "must not be negative"));
    }
    // google.protobuf.Duration's own ranges: nanos below one second, seconds within 10,000
    // years. (nanos = 2,000,000,000 used to be read as two more seconds.)
    if d.nanos >= 1_000_000_000 {
        return Err(invalid(field, "nanos must be within 0..999,999,999"));
    }
    if d.seconds > MAX_DURATION_SECONDS {
        return Err(invalid(field, "seconds must be at most 315,576,000,000"));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn d(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    #[test]
    fn durations_outside_protobufs_ranges_are_refused_naming_the_field() {
        for bad in [
            d(4, 2_000_000_000),
            d(0, 1_000_000_000),
            d(-1, 0),
            d(0, -1),
            d(315_576_000_001, 0),
        ] {
            let refused = duration("interval", Some(&bad)).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(
                refused.message().contains("interval"),
                "{}",
                refused.message()
            );
        }
        assert_eq!(
            duration("interval", Some(&d(4, 999_999_999))).unwrap(),
            Some(Duration::new(4, 999_999_999))
        );
        assert_eq!(
            duration("interval", Some(&d(315_576_000_000, 0))).unwrap(),
            Some(Duration::from_secs(315_576_000_000))
        );
        assert_eq!(duration("interval", None).unwrap(), None);
    }
}
