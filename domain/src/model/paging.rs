//! Paging for list queries: keyset pagination (a cursor, never an offset), so a page stays
//! correct while rows are added.

use serde::{Deserialize, Serialize};

use crate::error::{Rule, ValidationError};
use crate::limits::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

/// How many items a page holds: 1 to 1,000, 100 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageSize(u32);

impl PageSize {
    /// # Errors
    /// `page_size`: [`Rule::OutOfRange`] outside 1..=1000.
    pub fn new(n: u32) -> Result<Self, ValidationError> {
        if n == 0 || n > MAX_PAGE_SIZE {
            return Err(ValidationError::new(
                "page_size",
                Rule::OutOfRange {
                    min: "1".into(),
                    max: MAX_PAGE_SIZE.to_string(),
                    actual: n.to_string(),
                },
            ));
        }
        Ok(Self(n))
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    pub const fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl Default for PageSize {
    fn default() -> Self {
        Self(DEFAULT_PAGE_SIZE)
    }
}

/// A page request: items strictly after `after` (in the query's order), at most `size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest<K> {
    pub after: Option<K>,
    pub size: PageSize,
}

/// The first page, of the default size.
impl<K> Default for PageRequest<K> {
    fn default() -> Self {
        Self {
            after: None,
            size: PageSize::default(),
        }
    }
}

impl<K> PageRequest<K> {
    pub fn first(size: PageSize) -> Self {
        Self { after: None, size }
    }
}

/// One page of results, and the cursor for the next one (`None` on the last page).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T, K> {
    pub items: Vec<T>,
    pub next: Option<K>,
}

impl<T, K> Page<T, K> {
    /// Cuts `sorted` (already in query order and filtered to `after`) to a page, taking the
    /// cursor from the last item kept when more remain. Adapters that fetch `size + 1` rows use
    /// this to tell whether there is a next page.
    pub fn from_sorted(mut sorted: Vec<T>, size: PageSize, key: impl Fn(&T) -> K) -> Self {
        let more = sorted.len() > size.as_usize();
        sorted.truncate(size.as_usize());
        let next = if more { sorted.last().map(key) } else { None };
        Self {
            items: sorted,
            next,
        }
    }
}
