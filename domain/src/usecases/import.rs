//! Bulk registration: many chambers, each row checked as it arrives, all created in one
//! transaction at the end (or, when asked, every acceptable row while the others are reported).

use std::collections::{HashMap, HashSet};

use crate::error::{Rule, ValidationError};
use crate::limits::{MAX_IMPORT_ROWS, MAX_PAGE_SIZE};
use crate::model::{Name, PageRequest, PageSize, Role, SectionId};
use crate::ports::{ChamberFilter, ChamberWithDetectors, ItemError, StoreError};
use crate::time::Timestamp;
use crate::usecases::{Actor, ChamberAdmin, NewChamber, UseCaseError};

/// What an import does with the rows it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// One refused row and nothing is created.
    AllOrNothing,
    /// Every acceptable row is created; the refused ones are reported.
    SkipRefused,
}

/// A row the import refused: its position (from 0, in submission order) and why, with the
/// field named as for a single create (`chamber.url`, `detectors[1].key`, `chamber.section_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRejection {
    pub row: usize,
    pub error: ValidationError,
}

/// The outcome of [`ChamberImport::commit`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    /// The chambers created, in row order (empty when an all-or-nothing import refused a row).
    pub created: Vec<ChamberWithDetectors>,
    /// Refused rows in row order.
    pub rejected: Vec<RowRejection>,
}

/// An import in progress: feed it rows with [`ChamberImport::add`], then
/// [`ChamberImport::commit`]. Nothing is written before the commit.
#[derive(Debug)]
pub struct ChamberImport {
    admin: ChamberAdmin,
    actor: Actor,
    now: Timestamp,
    rows: usize,
    accepted: Vec<(usize, ChamberWithDetectors)>,
    rejected: Vec<RowRejection>,
    /// Per section named so far: the chamber names taken in it (stored or accepted in this
    /// import), or `None` if the caller has no such section.
    sections: HashMap<SectionId, Option<HashSet<Name>>>,
}

type Result<T> = std::result::Result<T, UseCaseError>;

impl ChamberAdmin {
    /// Starts an import of chambers on behalf of `actor`.
    ///
    /// # Errors
    /// `Forbidden` below operator.
    pub fn begin_import(&self, actor: &Actor) -> Result<ChamberImport> {
        actor.require(Role::Operator, "import chambers")?;
        Ok(ChamberImport {
            admin: self.clone(),
            actor: *actor,
            now: self.clock.now(),
            rows: 0,
            accepted: Vec::new(),
            rejected: Vec::new(),
            sections: HashMap::new(),
        })
    }
}

fn name_taken() -> Rule {
    Rule::Inconsistent("a chamber of this name already exists in the section".into())
}

impl ChamberImport {
    /// Checks the next row as [`ChamberAdmin::create_chamber`] would, and also against the rows
    /// before it (one name per section). A refused row is recorded, not returned as an error.
    ///
    /// # Errors
    /// `Invalid { field: "chambers" }` past [`MAX_IMPORT_ROWS`] rows; `Unavailable` when the
    /// store cannot be read.
    pub async fn add(&mut self, new: NewChamber) -> Result<()> {
        let row = self.next_row()?;
        let built = match self.admin.build_chamber(&self.actor, &new, self.now) {
            Ok(built) => built,
            Err(error) => {
                self.rejected.push(RowRejection { row, error });
                return Ok(());
            }
        };
        let names = self.section_names(new.section_id).await?;
        let refusal = match names {
            None => Some(ValidationError::new(
                "chamber.section_id",
                Rule::Inconsistent("no such section in your organization".into()),
            )),
            Some(names) => (!names.insert(built.chamber.name.clone()))
                .then(|| ValidationError::new("chamber.name", name_taken())),
        };
        match refusal {
            Some(error) => self.rejected.push(RowRejection { row, error }),
            None => self.accepted.push((row, built)),
        }
        Ok(())
    }

    /// Records the next row as refused before it could be read (a driving adapter that cannot
    /// parse it, e.g. a malformed id), so that row numbers stay those of the submission.
    ///
    /// # Errors
    /// `Invalid { field: "chambers" }` past [`MAX_IMPORT_ROWS`] rows.
    pub fn refuse(&mut self, error: ValidationError) -> Result<()> {
        let row = self.next_row()?;
        self.rejected.push(RowRejection { row, error });
        Ok(())
    }

    /// Rows seen so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Rows refused so far, in row order.
    pub fn rejected(&self) -> &[RowRejection] {
        &self.rejected
    }

    /// Creates the accepted chambers in one transaction and announces them to the scheduler.
    /// Under [`ImportMode::AllOrNothing`] any refused row means nothing is created. A row that
    /// became unacceptable since it was checked (another caller took its name, its section was
    /// deleted) is refused like any other.
    ///
    /// # Errors
    /// `Unavailable` (nothing was created).
    pub async fn commit(mut self, mode: ImportMode) -> Result<ImportReport> {
        loop {
            if mode == ImportMode::AllOrNothing && !self.rejected.is_empty() {
                self.rejected.sort_by_key(|r| r.row);
                return Ok(ImportReport {
                    created: Vec::new(),
                    rejected: self.rejected,
                });
            }
            let items: Vec<ChamberWithDetectors> =
                self.accepted.iter().map(|(_, c)| c.clone()).collect();
            match self.admin.chambers.create_many(&items).await {
                Ok(()) => break,
                Err(ItemError { index, error }) => {
                    let field = match error {
                        StoreError::Duplicate { .. } => "chamber.name",
                        StoreError::MissingParent { .. } => "chamber.section_id",
                        other => return Err(other.into()),
                    };
                    let (row, _) = self.accepted.remove(index);
                    let rule = match field {
                        "chamber.name" => name_taken(),
                        _ => Rule::Inconsistent("no such section in your organization".into()),
                    };
                    self.rejected.push(RowRejection {
                        row,
                        error: ValidationError::new(field, rule),
                    });
                }
            }
        }
        let created: Vec<ChamberWithDetectors> =
            self.accepted.into_iter().map(|(_, c)| c).collect();
        for c in &created {
            self.admin.publish_upsert(&c.chamber).await;
        }
        self.rejected.sort_by_key(|r| r.row);
        Ok(ImportReport {
            created,
            rejected: self.rejected,
        })
    }

    fn next_row(&mut self) -> Result<usize> {
        if self.rows >= MAX_IMPORT_ROWS {
            return Err(ValidationError::new(
                "chambers",
                Rule::OutOfRange {
                    min: "0".into(),
                    max: MAX_IMPORT_ROWS.to_string(),
                    actual: format!("more than {MAX_IMPORT_ROWS}"),
                },
            )
            .into());
        }
        self.rows += 1;
        Ok(self.rows - 1)
    }

    /// The names taken in `section` (loaded once per section), or `None` for an unknown one.
    async fn section_names(&mut self, section: SectionId) -> Result<Option<&mut HashSet<Name>>> {
        if !self.sections.contains_key(&section) {
            let org = self.actor.organization_id;
            let names = match self.admin.sections.get(org, section).await {
                Ok(_) => Some(self.stored_names(section).await?),
                Err(StoreError::NotFound { .. }) => None,
                Err(other) => return Err(other.into()),
            };
            self.sections.insert(section, names);
        }
        Ok(self.sections.get_mut(&section).and_then(Option::as_mut))
    }

    async fn stored_names(&self, section: SectionId) -> Result<HashSet<Name>> {
        let size = PageSize::new(MAX_PAGE_SIZE).map_err(UseCaseError::from)?;
        let filter = ChamberFilter {
            section_id: Some(section),
            state: None,
            ..ChamberFilter::default()
        };
        let mut names = HashSet::new();
        let mut page = PageRequest::first(size);
        loop {
            let found = self
                .admin
                .chambers
                .list(self.actor.organization_id, filter.clone(), page.clone())
                .await?;
            names.extend(found.items.into_iter().map(|c| c.name));
            match found.next {
                Some(after) => page.after = Some(after),
                None => return Ok(names),
            }
        }
    }
}
