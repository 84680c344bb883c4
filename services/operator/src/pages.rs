//! Lists: `--limit`, and following the API's pages to the end or to the limit.

use std::future::Future;

use chamberlain_proto::v1;

use crate::failure::Failure;

#[derive(Debug, clap::Args)]
pub struct Limit {
    /// Stop after this many items (default: all).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
}

impl Limit {
    pub(crate) fn get(&self) -> Option<usize> {
        self.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX))
    }
}

/// Fetches pages until the last one, or until `limit` items.
pub(crate) async fn all_pages<T, F, Fut>(
    limit: Option<usize>,
    mut fetch: F,
) -> Result<Vec<T>, Failure>
where
    F: FnMut(v1::PageRequest) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let want = limit.map_or(1000, |l| (l - items.len()).min(1000));
        let (page, next) = fetch(v1::PageRequest {
            page_size: u32::try_from(want).unwrap_or(1000),
            page_token: token,
        })
        .await?;
        items.extend(page);
        if next.is_empty() || limit.is_some_and(|l| items.len() >= l) {
            return Ok(items);
        }
        token = next;
    }
}
