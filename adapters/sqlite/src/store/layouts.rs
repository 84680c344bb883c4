//! Detector layouts: which detector each position of a poll's values belongs to.
//!
//! A chamber's layout version 1 lists its detectors at creation in id order. Adding a detector
//! writes the next version with the detector appended; removing one writes the next version
//! with a null at its position — compacted (holes left out) once the holes outnumber the live
//! detectors. A version is written once and never changed, and every poll row names the version
//! it was written with, so no stored value ever moves to another detector. Versions are written
//! only in the write transactions that change the chamber's detectors (SQLite's one writer).
//!
//! A layout is stored as a JSON array of 32-hex-digit ids (readable in SQL), and a poll's values
//! as packed blobs: [`Values`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chamberlain_domain::model::{CorruptionReason, Finite, ReadingValue};
use chamberlain_domain::ports::StoreError;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::id_list;
use crate::errors::{corrupt, db};

type Result<T> = std::result::Result<T, StoreError>;

fn encode(detectors: &[Option<Uuid>]) -> String {
    let ids: Vec<Option<String>> = detectors
        .iter()
        .map(|d| d.map(|d| d.simple().to_string()))
        .collect();
    serde_json::Value::from(ids).to_string()
}

pub(super) fn decode(json: &str) -> Result<Vec<Option<Uuid>>> {
    let ids: Vec<Option<String>> =
        serde_json::from_str(json).map_err(|e| corrupt("detector_layouts", "detectors", e))?;
    ids.into_iter()
        .map(|id| {
            id.map(|id| Uuid::try_parse(&id))
                .transpose()
                .map_err(|e| corrupt("detector_layouts", "detectors", e))
        })
        .collect()
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Writes version 1 of a new chamber's layout: its detectors in id order.
pub(super) async fn create(
    conn: &mut SqliteConnection,
    chamber: Uuid,
    detectors: &[Uuid],
) -> Result<()> {
    let mut ids: Vec<Option<Uuid>> = detectors.iter().copied().map(Some).collect();
    ids.sort_unstable();
    sqlx::query(
        "INSERT INTO detector_layouts (chamber_id, version, detectors, created_at) VALUES (?1, 1, ?2, ?3)",
    )
    .bind(chamber)
    .bind(encode(&ids))
    .bind(now_millis())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// How a new layout version follows from the current one.
#[derive(Clone, Copy)]
pub(super) enum Change {
    Added(Uuid),
    Removed(Uuid),
}

/// Writes the chamber's next layout version after `change` and makes it current.
pub(super) async fn change(
    conn: &mut SqliteConnection,
    chamber: Uuid,
    change: Change,
) -> Result<()> {
    let row = sqlx::query(
        "SELECT c.layout_version, l.detectors FROM chambers c \
         JOIN detector_layouts l ON l.chamber_id = c.id AND l.version = c.layout_version WHERE c.id = ?1",
    )
    .bind(chamber)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?
    .ok_or_else(|| {
        corrupt(
            "detector_layouts",
            "version",
            format!("chamber {chamber} has no current layout"),
        )
    })?;
    let version: i64 = row.try_get("layout_version").map_err(db)?;
    let mut detectors = decode(row.try_get("detectors").map_err(db)?)?;
    match change {
        Change::Added(d) => detectors.push(Some(d)),
        Change::Removed(d) => {
            for slot in &mut detectors {
                if *slot == Some(d) {
                    *slot = None;
                }
            }
            let live = detectors.iter().flatten().count();
            if live * 2 < detectors.len() {
                detectors.retain(Option::is_some);
            }
        }
    }
    sqlx::query(
        "INSERT INTO detector_layouts (chamber_id, version, detectors, created_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .bind(chamber)
    .bind(version + 1)
    .bind(encode(&detectors))
    .bind(now_millis())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query("UPDATE chambers SET layout_version = ?2 WHERE id = ?1")
        .bind(chamber)
        .bind(version + 1)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// A chamber's current layout: its version and where each detector's value goes.
pub(super) struct Current {
    pub version: i64,
    pub width: usize,
    pub position: HashMap<Uuid, usize>,
}

/// Layout versions already read, by (chamber, version): a version never changes once written,
/// so an entry is never stale, and a write reads only which version is current.
#[derive(Default)]
pub(super) struct Known(Mutex<HashMap<(Uuid, i64), Arc<Current>>>);

/// Versions kept at most; past it the map starts over (versions of deleted chambers, and old
/// versions, would otherwise stay).
const KNOWN_MAX: usize = 100_000;

impl Known {
    /// Drops what is known of a deleted chamber's layouts (its versions go with it, and a
    /// chamber created again with its id starts again at version 1).
    pub(super) fn forget(&self, chamber: Uuid) {
        self.lock().retain(|(c, _), _| *c != chamber);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Uuid, i64), Arc<Current>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `"HEX:N,HEX:N"` (SQLite's `group_concat` of `hex(id) || ':' || n`), as pairs.
pub(super) fn id_numbers(text: Option<&str>, table: &'static str) -> Result<Vec<(Uuid, i64)>> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(|pair| {
            let (id, n) = pair
                .split_once(':')
                .ok_or_else(|| corrupt(table, "id", format!("{pair:?} is not id:number")))?;
            let id = Uuid::try_parse(id).map_err(|e| corrupt(table, "id", e))?;
            let n = n.parse().map_err(|e| corrupt(table, "id", e))?;
            Ok((id, n))
        })
        .collect()
}

/// The current layouts of `chambers`; a chamber not found is missing from the map. One row
/// comes back for the current versions (each row is a message from sqlx's SQLite thread), and
/// the layouts of versions not known yet are read once.
pub(super) async fn current<'a>(
    conn: &mut SqliteConnection,
    chambers: impl IntoIterator<Item = &'a Uuid>,
    known: &Known,
) -> Result<HashMap<Uuid, Arc<Current>>> {
    let versions: Option<String> = sqlx::query_scalar(
        "SELECT group_concat(hex(id) || ':' || layout_version) FROM chambers \
         WHERE id IN (SELECT unhex(value) FROM json_each(?1))",
    )
    .bind(id_list(chambers))
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    let versions = id_numbers(versions.as_deref(), "chambers")?;
    let mut out = HashMap::with_capacity(versions.len());
    let mut missing = Vec::new();
    {
        let known = known.lock();
        for (chamber, version) in versions {
            match known.get(&(chamber, version)) {
                Some(layout) => {
                    out.insert(chamber, layout.clone());
                }
                None => missing.push((chamber, version)),
            }
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    let mut keys = String::from("[");
    for (i, (chamber, version)) in missing.iter().enumerate() {
        if i > 0 {
            keys.push(',');
        }
        keys.push_str(&format!("[\"{}\",{version}]", chamber.simple()));
    }
    keys.push(']');
    let rows = sqlx::query(
        "SELECT l.chamber_id, l.version, l.detectors FROM json_each(?1) AS k \
         JOIN detector_layouts l ON l.chamber_id = unhex(k.value ->> 0) AND l.version = k.value ->> 1",
    )
    .bind(keys)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut known = known.lock();
    if known.len() + rows.len() > KNOWN_MAX {
        known.clear();
    }
    for row in &rows {
        let chamber: Uuid = row.try_get("chamber_id").map_err(db)?;
        let version: i64 = row.try_get("version").map_err(db)?;
        let detectors = decode(row.try_get("detectors").map_err(db)?)?;
        let position = detectors
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (d, i)))
            .collect();
        let layout = Arc::new(Current {
            version,
            width: detectors.len(),
            position,
        });
        known.insert((chamber, version), layout.clone());
        out.insert(chamber, layout);
    }
    Ok(out)
}

/// Every layout version of some chambers, and which detectors are live (in a current version):
/// what a read needs to turn value blobs back into readings.
#[derive(Default)]
pub(super) struct Layouts {
    versions: HashMap<(Uuid, i64), Vec<Option<Uuid>>>,
    live: HashSet<Uuid>,
    live_width: HashMap<Uuid, usize>,
}

impl Layouts {
    /// Adds the layouts of `chambers` not loaded yet.
    pub async fn load<'a>(
        &mut self,
        conn: &mut SqliteConnection,
        chambers: impl IntoIterator<Item = &'a Uuid>,
    ) -> Result<()> {
        let wanted: Vec<&Uuid> = chambers
            .into_iter()
            .filter(|c| !self.live_width.contains_key(*c))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let rows = sqlx::query(
            "SELECT l.chamber_id, l.version, l.detectors, l.version = c.layout_version AS current \
             FROM detector_layouts l JOIN chambers c ON c.id = l.chamber_id \
             WHERE l.chamber_id IN (SELECT unhex(value) FROM json_each(?1))",
        )
        .bind(id_list(wanted))
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        for row in &rows {
            let chamber: Uuid = row.try_get("chamber_id").map_err(db)?;
            let version: i64 = row.try_get("version").map_err(db)?;
            let detectors = decode(row.try_get("detectors").map_err(db)?)?;
            if row.try_get::<bool, _>("current").map_err(db)? {
                self.live.extend(detectors.iter().flatten());
                self.live_width
                    .insert(chamber, detectors.iter().flatten().count());
            }
            self.versions.insert((chamber, version), detectors);
        }
        Ok(())
    }

    /// The detectors of one version, by position.
    pub fn version(&self, chamber: Uuid, version: i64) -> Result<&[Option<Uuid>]> {
        self.versions
            .get(&(chamber, version))
            .map(Vec::as_slice)
            .ok_or_else(|| {
                corrupt(
                    "polls",
                    "layout_version",
                    format!("chamber {chamber} has no layout version {version}"),
                )
            })
    }

    pub fn is_live(&self, detector: Uuid) -> bool {
        self.live.contains(&detector)
    }

    /// The fewest live detectors of the loaded chambers (at least 1).
    pub fn narrowest(&self) -> usize {
        self.live_width.values().copied().min().unwrap_or(1).max(1)
    }

    /// A detector's position in each version of its chamber that holds it.
    pub fn positions_of(&self, chamber: Uuid, detector: Uuid) -> HashMap<i64, usize> {
        self.versions
            .iter()
            .filter(|((c, _), _)| *c == chamber)
            .filter_map(|((_, v), ds)| Some((*v, ds.iter().position(|d| *d == Some(detector))?)))
            .collect()
    }
}

/// A poll's values as stored: `value` 8 bytes a position (little-endian f64, NaN for none),
/// `corruption` 1 byte a position (0 for none, else [`CorruptionReason::number`]) or absent
/// when no value is corrupted.
pub(super) struct Values<'r> {
    pub value: &'r [u8],
    pub corruption: Option<&'r [u8]>,
}

impl Values<'_> {
    /// Encodes values by position (`None`: the detector has no value in this poll).
    pub fn encode(values: &[Option<&ReadingValue>]) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut value = Vec::with_capacity(values.len() * 8);
        let mut corruption = vec![0u8; values.len()];
        let mut corrupted = false;
        for (i, v) in values.iter().enumerate() {
            let number = match v {
                Some(ReadingValue::Measured(f)) => f.get(),
                Some(ReadingValue::Corrupted(reason)) => {
                    corruption[i] = reason.number();
                    corrupted = true;
                    f64::NAN
                }
                None => f64::NAN,
            };
            value.extend_from_slice(&number.to_le_bytes());
        }
        (value, corrupted.then_some(corruption))
    }

    pub fn width(&self) -> usize {
        self.value.len() / 8
    }

    /// The value at `position`, if the detector there has one in this poll.
    pub fn get(&self, position: usize) -> Result<Option<ReadingValue>> {
        let Some(bytes) = self.value.get(position * 8..position * 8 + 8) else {
            return Ok(None);
        };
        let number = f64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
        if !number.is_nan() {
            return Finite::new(number)
                .map(|f| Some(ReadingValue::Measured(f)))
                .map_err(|e| corrupt("polls", "value", e));
        }
        match self.corruption.and_then(|c| c.get(position)).copied() {
            None | Some(0) => Ok(None),
            Some(n) => CorruptionReason::from_number(n)
                .map(|r| Some(ReadingValue::Corrupted(r)))
                .ok_or_else(|| corrupt("polls", "corruption", n)),
        }
    }
}
