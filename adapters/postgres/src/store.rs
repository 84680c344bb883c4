//! [`PgStore`]: every repository port on PostgreSQL, one module per aggregate.

mod alerts;
mod configuration;
mod health;
pub(crate) mod layouts;
mod readings;
pub(crate) use readings::into_store_error;
pub(crate) mod rows;
mod tenancy;

use chamberlain_domain::model::{Page, PageRequest, PageSize};
use chamberlain_domain::ports::StoreError;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::PgStore;
use crate::errors::store_error;

type Result<T> = std::result::Result<T, StoreError>;

fn not_found(entity: &'static str) -> StoreError {
    StoreError::NotFound { entity }
}

fn limit<K>(page: &PageRequest<K>) -> i64 {
    i64::from(page.size.get()) + 1
}

fn decode_all<T>(rows: &[PgRow], f: fn(&PgRow) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

impl PgStore {
    /// Whether the previous layout's tables (`legacy_readings`, `legacy_poll_ledger`) are still
    /// there: `chamberlain migrate` has not finished converting them.
    async fn has_legacy_tables(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<bool> {
        sqlx::query_scalar("SELECT to_regclass('legacy_poll_ledger') IS NOT NULL")
            .fetch_one(&mut **tx)
            .await
            .map_err(store_error)
    }

    /// Whether `sql`, with its two parameters, finds a row.
    async fn exists(&self, sql: &'static str, a: Uuid, b: Uuid) -> Result<bool> {
        let row = sqlx::query(sql)
            .bind(a)
            .bind(b)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(row.is_some())
    }
}

impl PgStore {
    /// One page of a list: `query` selects up to `limit(&page)` rows (one more than a page, to
    /// tell whether another follows) after the cursor, in key order; they are decoded and cut
    /// into the page and the next cursor.
    async fn read_page<'q, T, K>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        decode: fn(&PgRow) -> Result<T>,
        size: PageSize,
        key: impl Fn(&T) -> K,
    ) -> Result<Page<T, K>> {
        let rows = query.fetch_all(&self.pool).await.map_err(store_error)?;
        Ok(Page::from_sorted(decode_all(&rows, decode)?, size, key))
    }
}
