//! Readings leaving Chamberlain as CSV text: a chamber's, every chamber's of a section, or a
//! batch's, over a range, read page by page so that an export of any size holds one page in
//! memory. The API's download route, `chamberlain readings export` and the console's download
//! all read it here, so the file is the same whichever way it is asked for.

use std::collections::VecDeque;
use std::fmt::Write as _;

use crate::limits::MAX_PAGE_SIZE;
use crate::model::{
    BatchId, ChamberId, DetectorId, PageRequest, PageSize, Reading, ReadingValue, Role, SectionId,
};
use crate::ports::{ReadingCursor, ReadingQuery, ReadingScope};
use crate::time::Timestamp;
use crate::usecases::queries::check_range;
use crate::usecases::{Actor, ReadingQueries, UseCaseError};

/// The CSV's first line: its columns.
pub const CSV_HEADER: &str = "slot,chamber_id,detector_id,value,corrupted,batch_id\n";

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportScope {
    Chamber(ChamberId),
    /// Every chamber of the section, one after the other (by id), each in slot order.
    Section(SectionId),
    Batch(BatchId),
    Detector(DetectorId),
}

/// An export under way: [`CsvExport::next_chunk`] until it returns `None`.
#[derive(Debug)]
pub struct CsvExport {
    queries: ReadingQueries,
    actor: Actor,
    /// The scopes still to read (a section's chambers), the first being read.
    scopes: VecDeque<ReadingScope>,
    from: Timestamp,
    to: Timestamp,
    /// Where the first scope's next page starts.
    after: Option<ReadingCursor>,
    header_sent: bool,
}

/// One reading as a CSV line: `slot,chamber_id,detector_id,value,corrupted,batch_id`; a
/// corrupted reading has no value and the reason in `corrupted`.
pub fn csv_line(out: &mut String, r: &Reading) {
    let _ = write!(
        out,
        "{},{},{},",
        r.slot.to_rfc3339(),
        r.chamber_id,
        r.detector_id
    );
    match &r.value {
        ReadingValue::Measured(v) => {
            let _ = write!(out, "{},", v.get());
        }
        ReadingValue::Corrupted(why) => {
            let _ = write!(out, ",{why}");
        }
    }
    let _ = writeln!(
        out,
        ",{}",
        r.batch_id.map(|b| b.to_string()).unwrap_or_default()
    );
}

impl ReadingQueries {
    /// Starts a CSV export of `scope` with `from <= slot < to`. The scope and the range are
    /// checked here, before any line is produced, so a bad request is refused as a whole.
    ///
    /// # Errors
    /// `Forbidden` (below viewer); `Invalid` (`to` not after `from`); `NotFound` (`chamber`,
    /// `section`, `batch`, `detector`) for a scope outside the caller's organization; `Unavailable`.
    pub async fn export_csv(
        &self,
        actor: &Actor,
        scope: ExportScope,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<CsvExport, UseCaseError> {
        actor.require(Role::Viewer, "read readings")?;
        check_range(from, to)?;
        let org = actor.organization_id;
        let scopes: VecDeque<ReadingScope> = match scope {
            ExportScope::Chamber(id) => {
                self.chambers.get(org, id).await?;
                [ReadingScope::Chamber(id)].into()
            }
            ExportScope::Batch(id) => {
                self.batches.get(org, id).await?;
                [ReadingScope::Batch(id)].into()
            }
            ExportScope::Detector(id) => {
                // Reading one page checks that the detector is the organization's.
                let scope = ReadingScope::Detector(id);
                self.readings
                    .query(
                        org,
                        &ReadingQuery {
                            scope,
                            from,
                            to,
                            page: PageRequest::first(PageSize::new(1).unwrap_or_default()),
                        },
                    )
                    .await?;
                [scope].into()
            }
            ExportScope::Section(id) => {
                self.sections.get(org, id).await?;
                self.chambers_of_section(org, id)
                    .await?
                    .into_iter()
                    .map(ReadingScope::Chamber)
                    .collect()
            }
        };
        // A section without chambers exports the header alone.
        Ok(CsvExport {
            queries: self.clone(),
            actor: *actor,
            scopes,
            from,
            to,
            after: None,
            header_sent: false,
        })
    }
}

impl CsvExport {
    /// The next part of the file (the header first, then a page of readings at a time), or
    /// `None` once everything is out.
    ///
    /// # Errors
    /// `NotFound` if a scope went away meanwhile (a chamber deleted); `Unavailable`.
    pub async fn next_chunk(&mut self) -> Result<Option<String>, UseCaseError> {
        if !self.header_sent {
            self.header_sent = true;
            return Ok(Some(CSV_HEADER.to_owned()));
        }
        while let Some(scope) = self.scopes.front().copied() {
            let query = ReadingQuery {
                scope,
                from: self.from,
                to: self.to,
                page: PageRequest {
                    after: self.after,
                    size: PageSize::new(MAX_PAGE_SIZE).unwrap_or_default(),
                },
            };
            let page = self.queries.readings(&self.actor, &query).await?;
            self.after = page.next;
            if self.after.is_none() {
                self.scopes.pop_front();
            }
            if page.items.is_empty() {
                continue;
            }
            let mut out = String::with_capacity(page.items.len() * 110);
            for reading in &page.items {
                csv_line(&mut out, reading);
            }
            return Ok(Some(out));
        }
        Ok(None)
    }
}
