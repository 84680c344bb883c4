//! The packed readings of a `chamber_latest` row: a byte layout the adapter writes and reads.

use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{BatchId, ChamberId, DetectorId, Reading};
use chamberlain_domain::ports::StoreError;
use uuid::Uuid;

use crate::errors::corrupt;
use crate::store::rows::{reading_value, split_value};

/// Layout version of a packed `chamber_latest.readings` value.
const PACKED_V1: u8 = 1;

/// Packs one poll's readings (all of one chamber and slot) for `chamber_latest`:
/// a version byte, then per reading: detector (16), reason code (0 = measured), value (f64),
/// requested_at and received_at (Unix ms, i64), batch flag (1) and batch id (16 if set).
pub fn pack_latest(readings: &[&Reading]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + readings.len() * 58);
    buf.push(PACKED_V1);
    for r in readings {
        buf.extend_from_slice(r.detector_id.as_uuid().as_bytes());
        let (value, corruption) = split_value(&r.value);
        buf.extend_from_slice(&corruption.unwrap_or(0).to_be_bytes());
        buf.extend_from_slice(&value.unwrap_or(0.0).to_be_bytes());
        buf.extend_from_slice(&r.requested_at.as_unix_millis().to_be_bytes());
        buf.extend_from_slice(&r.received_at.as_unix_millis().to_be_bytes());
        match r.batch_id {
            Some(b) => {
                buf.push(1);
                buf.extend_from_slice(b.as_uuid().as_bytes());
            }
            None => buf.push(0),
        }
    }
    buf
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("chamber_latest", "readings", "truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        self.take(N)?
            .try_into()
            .map_err(|_| corrupt("chamber_latest", "readings", "truncated"))
    }
}

/// Inverse of [`pack_latest`].
pub fn unpack_latest(
    chamber: ChamberId,
    slot: Timestamp,
    bytes: &[u8],
) -> Result<Vec<Reading>, StoreError> {
    let mut c = Cursor(bytes);
    if c.take(1)? != [PACKED_V1] {
        return Err(corrupt(
            "chamber_latest",
            "readings",
            "unknown layout version",
        ));
    }
    let mut out = Vec::new();
    while !c.0.is_empty() {
        let detector = Uuid::from_bytes(c.array::<16>()?);
        let code = i16::from_be_bytes(c.array::<2>()?);
        let value = f64::from_be_bytes(c.array::<8>()?);
        let requested = i64::from_be_bytes(c.array::<8>()?);
        let received = i64::from_be_bytes(c.array::<8>()?);
        let batch = match c.take(1)?[0] {
            0 => None,
            1 => Some(BatchId::from_uuid(Uuid::from_bytes(c.array::<16>()?))),
            _ => return Err(corrupt("chamber_latest", "readings", "bad batch flag")),
        };
        let value = if code == 0 {
            reading_value(Some(value), None)?
        } else {
            reading_value(None, Some(code))?
        };
        out.push(Reading {
            detector_id: DetectorId::from_uuid(detector),
            chamber_id: chamber,
            slot,
            value,
            requested_at: Timestamp::from_unix_millis(requested),
            received_at: Timestamp::from_unix_millis(received),
            batch_id: batch,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chamberlain_domain::model::{CorruptionReason, Finite, ReadingValue};

    fn reading(value: ReadingValue, batch: Option<BatchId>) -> Reading {
        Reading {
            detector_id: DetectorId::random(),
            chamber_id: ChamberId::random(),
            slot: Timestamp::from_unix_millis(1_767_225_600_123),
            value,
            requested_at: Timestamp::from_unix_millis(1_767_225_600_130),
            received_at: Timestamp::from_unix_millis(1_767_225_600_150),
            batch_id: batch,
        }
    }

    #[test]
    fn packed_latest_readings_round_trip() {
        let chamber = ChamberId::random();
        let slot = Timestamp::from_unix_millis(1_767_225_600_123);
        let rs: Vec<Reading> = vec![
            reading(ReadingValue::Measured(Finite::new(-12.25).unwrap()), None),
            reading(
                ReadingValue::Corrupted(CorruptionReason::Implausible),
                Some(BatchId::random()),
            ),
        ]
        .into_iter()
        .map(|r| Reading {
            chamber_id: chamber,
            slot,
            ..r
        })
        .collect();
        let refs: Vec<&Reading> = rs.iter().collect();
        assert_eq!(
            unpack_latest(chamber, slot, &pack_latest(&refs)).unwrap(),
            rs
        );
        let packed = pack_latest(&refs);
        assert!(
            unpack_latest(chamber, slot, &packed[..packed.len() - 3]).is_err(),
            "truncation is detected"
        );
        assert!(
            unpack_latest(chamber, slot, &[9]).is_err(),
            "unknown versions are refused"
        );
    }
}
