//! Detector layouts: which detector each position of a poll's value arrays belongs to.
//!
//! A chamber's layout version 1 lists its detectors at creation in id order. Adding a detector
//! writes the next version with the detector appended; removing one writes the next version
//! with a NULL at its position — compacted (holes left out) once the holes outnumber the live
//! detectors. A version is written once and never changed, and every poll row names the version
//! it was written with, so no stored value ever moves to another detector. Versions are written
//! only in the transactions that change the chamber's detectors, under the chamber's row lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chamberlain_domain::ports::StoreError;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::errors::store_error;

type Result<T> = std::result::Result<T, StoreError>;

/// Writes version 1 of a new chamber's layout: its detectors in id order.
pub(crate) async fn create(
    tx: &mut Transaction<'_, Postgres>,
    chamber: Uuid,
    detectors: &[Uuid],
) -> Result<()> {
    let mut ids = detectors.to_vec();
    ids.sort_unstable();
    sqlx::query(
        "INSERT INTO detector_layouts (chamber_id, version, detectors, created_at) VALUES ($1, 1, $2, now())",
    )
    .bind(chamber)
    .bind(&ids)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// How a new layout version follows from the current one.
#[derive(Clone, Copy)]
pub(crate) enum Change {
    Added(Uuid),
    Removed(Uuid),
}

/// Writes the chamber's next layout version after `change` and makes it current. Locks the
/// chamber's row, so concurrent changes of one chamber's detectors take their turns.
pub(crate) async fn change(
    tx: &mut Transaction<'_, Postgres>,
    chamber: Uuid,
    change: Change,
) -> Result<()> {
    let row = sqlx::query(
        "UPDATE chambers SET layout_version = layout_version + 1 WHERE id = $1 RETURNING layout_version",
    )
    .bind(chamber)
    .fetch_one(&mut **tx)
    .await
    .map_err(store_error)?;
    let version: i32 = row.try_get("layout_version").map_err(store_error)?;
    let (sql, detector) = match change {
        Change::Added(d) => (
            "INSERT INTO detector_layouts (chamber_id, version, detectors, created_at) \
             SELECT chamber_id, $2, array_append(detectors, $3), now() FROM detector_layouts \
             WHERE chamber_id = $1 AND version = $2 - 1",
            d,
        ),
        Change::Removed(d) => (
            "INSERT INTO detector_layouts (chamber_id, version, detectors, created_at) \
             SELECT chamber_id, $2, \
                    CASE WHEN cardinality(array_remove(l.next, NULL)) * 2 < cardinality(l.next) \
                         THEN array_remove(l.next, NULL) ELSE l.next END, now() \
             FROM (SELECT chamber_id, array_replace(detectors, $3, NULL) AS next FROM detector_layouts \
                   WHERE chamber_id = $1 AND version = $2 - 1) l",
            d,
        ),
    };
    let done = sqlx::query(sql)
        .bind(chamber)
        .bind(version)
        .bind(detector)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(crate::errors::corrupt(
            "detector_layouts",
            "version",
            format!("chamber {chamber} has no layout version {}", version - 1),
        ))
    }
}

/// A chamber's current layout: its version and where each detector's value goes.
pub(crate) struct Current {
    pub version: i32,
    pub width: usize,
    pub position: HashMap<Uuid, usize>,
}

/// The layout versions a store has read, the newest per chamber. A version is written once and
/// never changed, so a write asks the database only for each chamber's current version number,
/// and reads a layout only for a version it has not seen (a chamber's first write, or its first
/// after a detector was added or removed).
#[derive(Default)]
pub(crate) struct LayoutCache(std::sync::Mutex<HashMap<Uuid, Arc<Current>>>);

impl std::fmt::Debug for LayoutCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayoutCache").finish_non_exhaustive()
    }
}

impl LayoutCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Current>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The current layouts of `chambers` (each once), as of this transaction; a chamber not found
/// is missing from the map.
pub(crate) async fn current(
    tx: &mut Transaction<'_, Postgres>,
    chambers: &[Uuid],
    cache: &LayoutCache,
) -> Result<HashMap<Uuid, Arc<Current>>> {
    let rows = sqlx::query("SELECT id, layout_version FROM chambers WHERE id = ANY($1)")
        .bind(chambers)
        .fetch_all(&mut **tx)
        .await
        .map_err(store_error)?;
    let mut out = HashMap::with_capacity(rows.len());
    let (mut unseen, mut versions) = (Vec::new(), Vec::new());
    {
        let mut cached = cache.lock();
        for row in &rows {
            let chamber: Uuid = row.try_get("id").map_err(store_error)?;
            let version: i32 = row.try_get("layout_version").map_err(store_error)?;
            match cached.get(&chamber) {
                Some(layout) if layout.version == version => {
                    out.insert(chamber, layout.clone());
                }
                _ => {
                    unseen.push(chamber);
                    versions.push(version);
                }
            }
        }
        // Chambers asked for and not found were deleted: their layouts are not needed again.
        if rows.len() < chambers.len() {
            let unseen: HashSet<&Uuid> = unseen.iter().collect();
            for chamber in chambers {
                if !out.contains_key(chamber) && !unseen.contains(chamber) {
                    cached.remove(chamber);
                }
            }
        }
    }
    if unseen.is_empty() {
        return Ok(out);
    }
    let rows = sqlx::query(
        "SELECT l.chamber_id, l.version, l.detectors \
         FROM UNNEST($1::uuid[], $2::int4[]) AS k(chamber_id, version) \
         JOIN detector_layouts l ON l.chamber_id = k.chamber_id AND l.version = k.version",
    )
    .bind(&unseen)
    .bind(&versions)
    .fetch_all(&mut **tx)
    .await
    .map_err(store_error)?;
    let mut cached = cache.lock();
    for row in &rows {
        let chamber: Uuid = row.try_get("chamber_id").map_err(store_error)?;
        let detectors: Vec<Option<Uuid>> = row.try_get("detectors").map_err(store_error)?;
        let position = detectors
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (d, i)))
            .collect();
        let layout = Arc::new(Current {
            version: row.try_get("version").map_err(store_error)?,
            width: detectors.len(),
            position,
        });
        cached.insert(chamber, layout.clone());
        out.insert(chamber, layout);
    }
    Ok(out)
}

/// Every layout version of some chambers, and which detectors are live (in a current version):
/// what a read needs to turn value arrays back into readings.
#[derive(Default)]
pub(crate) struct Layouts {
    versions: HashMap<(Uuid, i32), Vec<Option<Uuid>>>,
    live: HashSet<Uuid>,
    live_width: HashMap<Uuid, usize>,
}

impl Layouts {
    pub async fn of(pool: &sqlx::PgPool, chambers: &[Uuid]) -> Result<Self> {
        let rows = sqlx::query(
            "SELECT l.chamber_id, l.version, l.detectors, l.version = c.layout_version AS current \
             FROM detector_layouts l JOIN chambers c ON c.id = l.chamber_id WHERE l.chamber_id = ANY($1)",
        )
        .bind(chambers)
        .fetch_all(pool)
        .await
        .map_err(store_error)?;
        let mut out = Self::default();
        for row in &rows {
            let chamber: Uuid = row.try_get("chamber_id").map_err(store_error)?;
            let version: i32 = row.try_get("version").map_err(store_error)?;
            let detectors: Vec<Option<Uuid>> = row.try_get("detectors").map_err(store_error)?;
            if row.try_get::<bool, _>("current").map_err(store_error)? {
                out.live.extend(detectors.iter().flatten());
                out.live_width
                    .insert(chamber, detectors.iter().flatten().count());
            }
            out.versions.insert((chamber, version), detectors);
        }
        Ok(out)
    }

    /// The detectors of one version, by position.
    pub fn version(&self, chamber: Uuid, version: i32) -> Result<&[Option<Uuid>]> {
        self.versions
            .get(&(chamber, version))
            .map(Vec::as_slice)
            .ok_or_else(|| {
                crate::errors::corrupt(
                    "polls",
                    "layout_version",
                    format!("chamber {chamber} has no layout version {version}"),
                )
            })
    }

    pub fn is_live(&self, detector: Uuid) -> bool {
        self.live.contains(&detector)
    }

    /// The fewest live detectors of any of the chambers (at least 1).
    pub fn narrowest(&self) -> usize {
        self.live_width.values().copied().min().unwrap_or(1).max(1)
    }

    /// The most positions of any version of the chambers (0 with no layout).
    pub fn widest(&self) -> usize {
        self.versions.values().map(Vec::len).max().unwrap_or(0)
    }

    /// For one detector: the versions of its chamber that hold it, and its position (1-based,
    /// as SQL arrays count) in each.
    pub fn positions_of(&self, chamber: Uuid, detector: Uuid) -> (Vec<i32>, Vec<i32>) {
        let mut versions = Vec::new();
        let mut positions = Vec::new();
        for ((c, v), ds) in &self.versions {
            if *c != chamber {
                continue;
            }
            if let Some(i) = ds.iter().position(|d| *d == Some(detector)) {
                versions.push(*v);
                positions.push(i32::try_from(i + 1).unwrap_or(i32::MAX));
            }
        }
        (versions, positions)
    }
}
