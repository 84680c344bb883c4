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

/// Reads every page of a list, `size` items at a time: `fetch` is given each page request in
/// turn (the first, then one after each page's cursor) until a page has no next one.
///
/// # Errors
/// The first error `fetch` returns; the pages read before it are dropped.
pub async fn every_page<T, K, E, F, Fut>(size: PageSize, mut fetch: F) -> Result<Vec<T>, E>
where
    F: FnMut(PageRequest<K>) -> Fut,
    Fut: Future<Output = Result<Page<T, K>, E>>,
{
    let mut all = Vec::new();
    let mut request = PageRequest::first(size);
    loop {
        let page = fetch(request).await?;
        all.extend(page.items);
        match page.next {
            Some(next) => {
                request = PageRequest {
                    after: Some(next),
                    size,
                }
            }
            None => return Ok(all),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers 0..n as a keyset-paged list.
    fn numbers(n: u32, request: &PageRequest<u32>) -> Page<u32, u32> {
        let sorted = (0..n)
            .filter(|i| request.after.is_none_or(|a| *i > a))
            .collect();
        Page::from_sorted(sorted, request.size, |i| *i)
    }

    #[tokio::test]
    async fn every_page_reads_each_page_once_in_order() {
        let size = PageSize::new(3).unwrap();
        let mut requests = Vec::new();
        let all: Result<Vec<u32>, ()> = every_page(size, |request| {
            requests.push(request.after);
            let page = numbers(7, &request);
            async move { Ok(page) }
        })
        .await;
        assert_eq!(all, Ok((0..7).collect()));
        assert_eq!(requests, [None, Some(2), Some(5)]);
        let empty: Result<Vec<u32>, ()> =
            every_page(size, |request| std::future::ready(Ok(numbers(0, &request)))).await;
        assert_eq!(empty, Ok(Vec::new()));
        let failed: Result<Vec<u32>, &str> = every_page(size, |request| {
            std::future::ready(match request.after {
                None => Ok(numbers(7, &request)),
                Some(_) => Err("store away"),
            })
        })
        .await;
        assert_eq!(failed, Err("store away"));
    }
}
