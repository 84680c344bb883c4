//! [`OrganizationRepository`], [`UserRepository`] and [`ApiTokenRepository`] on PostgreSQL:
//! who may do what.

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{
    ApiToken, ApiTokenId, Email, Organization, OrganizationId, Page, PageRequest, TokenHash, User,
    UserId,
};
use chamberlain_domain::ports::{
    ApiTokenRepository, OrganizationRepository, StoreError, UserRepository,
};
use sqlx::AssertSqlSafe;

use super::{limit, not_found};
use crate::PgStore;
use crate::errors::store_error;
use crate::store::rows::{self, ts};

type Result<T> = std::result::Result<T, StoreError>;

#[db_port("postgresql")]
#[async_trait]
impl OrganizationRepository for PgStore {
    async fn create(&self, org: &Organization) -> Result<()> {
        sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(org.id.as_uuid())
            .bind(org.name.as_str())
            .bind(ts(org.created_at))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, id: OrganizationId) -> Result<Organization> {
        let row = sqlx::query("SELECT id, name, created_at FROM organizations WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.as_ref()
            .map(rows::organization)
            .unwrap_or(Err(not_found("organization")))
    }
}

#[db_port("postgresql")]
#[async_trait]
impl UserRepository for PgStore {
    async fn create(&self, u: &User) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO users ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            rows::USER_COLUMNS
        )))
        .bind(u.id.as_uuid())
        .bind(u.organization_id.as_uuid())
        .bind(u.email.as_str())
        .bind(u.display_name.as_str())
        .bind(u.role.as_str())
        .bind(u.password_hash.as_deref())
        .bind(u.disabled)
        .bind(ts(u.created_at))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, org: OrganizationId, id: UserId) -> Result<User> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM users WHERE organization_id = $1 AND id = $2",
            rows::USER_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref()
            .map(rows::user)
            .unwrap_or(Err(not_found("user")))
    }

    async fn find_by_email(&self, email: &Email) -> Result<Vec<User>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM users WHERE email = $1 ORDER BY organization_id",
            rows::USER_COLUMNS
        )))
        .bind(email.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(rows::user).collect()
    }

    async fn list(
        &self,
        org: OrganizationId,
        page: PageRequest<UserId>,
    ) -> Result<Page<User, UserId>> {
        self.read_page(
sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM users WHERE organization_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
            rows::USER_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(page.after.map(|a| *a.as_uuid()))
        .bind(limit(&page)),
rows::user,
page.size,
|u| u.id,
)
.await
    }

    async fn update(&self, u: &User) -> Result<()> {
        let done = sqlx::query(
            "UPDATE users SET email = $3, display_name = $4, role = $5, password_hash = $6, disabled = $7 \
             WHERE organization_id = $1 AND id = $2",
        )
        .bind(u.organization_id.as_uuid())
        .bind(u.id.as_uuid())
        .bind(u.email.as_str())
        .bind(u.display_name.as_str())
        .bind(u.role.as_str())
        .bind(u.password_hash.as_deref())
        .bind(u.disabled)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        if done.rows_affected() == 0 {
            Err(not_found("user"))
        } else {
            Ok(())
        }
    }

    async fn delete(&self, org: OrganizationId, id: UserId) -> Result<()> {
        let done = sqlx::query("DELETE FROM users WHERE organization_id = $1 AND id = $2")
            .bind(org.as_uuid())
            .bind(id.as_uuid())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            Err(not_found("user"))
        } else {
            Ok(())
        }
    }
}

#[db_port("postgresql")]
#[async_trait]
impl ApiTokenRepository for PgStore {
    async fn create(&self, t: &ApiToken) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO api_tokens ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            rows::TOKEN_COLUMNS
        )))
        .bind(t.id.as_uuid())
        .bind(t.organization_id.as_uuid())
        .bind(t.user_id.as_uuid())
        .bind(t.name.as_str())
        .bind(&t.hash.0[..])
        .bind(t.role_cap.as_str())
        .bind(ts(t.created_at))
        .bind(t.expires_at.map(ts))
        .bind(t.last_used_at.map(ts))
        .bind(t.revoked_at.map(ts))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<ApiToken>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM api_tokens WHERE token_hash = $1",
            rows::TOKEN_COLUMNS
        )))
        .bind(&hash.0[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(rows::token).transpose()
    }

    async fn list(
        &self,
        org: OrganizationId,
        user: Option<UserId>,
        page: PageRequest<ApiTokenId>,
    ) -> Result<Page<ApiToken, ApiTokenId>> {
        self.read_page(
sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM api_tokens WHERE organization_id = $1 AND ($2::uuid IS NULL OR user_id = $2) \
             AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4",
            rows::TOKEN_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(user.map(|u| *u.as_uuid()))
        .bind(page.after.map(|a| *a.as_uuid()))
        .bind(limit(&page)),
rows::token,
page.size,
|t| t.id,
)
.await
    }

    async fn revoke(&self, org: OrganizationId, id: ApiTokenId, at: Timestamp) -> Result<()> {
        let done = sqlx::query("UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $3) WHERE organization_id = $1 AND id = $2")
            .bind(org.as_uuid())
            .bind(id.as_uuid())
            .bind(ts(at))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            Err(not_found("token"))
        } else {
            Ok(())
        }
    }

    async fn touch(&self, id: ApiTokenId, at: Timestamp) -> Result<()> {
        let done = sqlx::query("UPDATE api_tokens SET last_used_at = GREATEST(COALESCE(last_used_at, $2), $2) WHERE id = $1")
            .bind(id.as_uuid())
            .bind(ts(at))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            Err(not_found("token"))
        } else {
            Ok(())
        }
    }
}
