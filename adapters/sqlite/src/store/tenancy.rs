//! [`OrganizationRepository`], [`UserRepository`] and [`ApiTokenRepository`] of
//! [`SqliteStore`]: who may do what.

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use chamberlain_domain::model::{
    ApiToken, ApiTokenId, Email, Organization, OrganizationId, Page, PageRequest, TokenHash, User,
    UserId,
};
use chamberlain_domain::ports::{
    ApiTokenRepository, OrganizationRepository, StoreError, UserRepository,
};
use chamberlain_domain::time::Timestamp;
use sqlx::SqliteConnection;

use super::rows::{organization, token, user};
use super::{SqliteStore, after_id, exists, limit, missing_parent, not_found, touched};
use crate::errors::{Write, child, db, writing};

#[db_port("sqlite")]
#[async_trait]
impl OrganizationRepository for SqliteStore {
    async fn create(&self, org: &Organization) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = sqlx::query(concat!(
            "INSERT INTO organizations (",
            organization_columns!(),
            ") VALUES (?1, ?2, ?3)"
        ))
        .bind(*org.id.as_uuid())
        .bind(org.name.as_str())
        .bind(org.created_at.as_unix_millis())
        .execute(w.conn())
        .await
        .map(drop)
        .map_err(writing(Write::Plain));
        w.finish(result).await
    }

    async fn get(&self, id: OrganizationId) -> Result<Organization, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            organization_columns!(),
            " FROM organizations WHERE id = ?1"
        ))
        .bind(*id.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(organization)
            .unwrap_or(Err(not_found("organization")))
    }
}

async fn create_user(conn: &mut SqliteConnection, user: &User) -> Result<(), StoreError> {
    let org_exists = exists(
        conn,
        sqlx::query("SELECT 1 FROM organizations WHERE id = ?1")
            .bind(*user.organization_id.as_uuid()),
    )
    .await?;
    if !org_exists {
        return Err(missing_parent("user", "organization"));
    }
    sqlx::query(concat!(
        "INSERT INTO users (",
        user_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))
    .bind(*user.id.as_uuid())
    .bind(*user.organization_id.as_uuid())
    .bind(user.email.as_str())
    .bind(user.display_name.as_str())
    .bind(user.role.as_str())
    .bind(user.password_hash.as_deref())
    .bind(i64::from(user.disabled))
    .bind(user.created_at.as_unix_millis())
    .execute(conn)
    .await
    .map_err(writing(child("user", "organization")))?;
    Ok(())
}

#[db_port("sqlite")]
#[async_trait]
impl UserRepository for SqliteStore {
    async fn create(&self, user: &User) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = create_user(w.conn(), user).await;
        w.finish(result).await
    }

    async fn get(&self, org: OrganizationId, id: UserId) -> Result<User, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = ?1 AND organization_id = ?2"
        ))
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref().map(user).unwrap_or(Err(not_found("user")))
    }

    async fn find_by_email(&self, email: &Email) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE email = ?1 ORDER BY organization_id"
        ))
        .bind(email.as_str())
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        rows.iter().map(user).collect()
    }

    async fn list(
        &self,
        org: OrganizationId,
        page: PageRequest<UserId>,
    ) -> Result<Page<User, UserId>, StoreError> {
        self.read_page(
            sqlx::query(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE organization_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))
            .bind(*org.as_uuid())
            .bind(after_id(page.after.as_ref().map(UserId::as_uuid)))
            .bind(limit(page.size)),
            user,
            page.size,
            |u| u.id,
        )
        .await
    }

    async fn update(&self, user: &User) -> Result<(), StoreError> {
        // Everything but id, organization and created_at.
        let mut w = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE users SET email = ?3, display_name = ?4, role = ?5, password_hash = ?6, \
             disabled = ?7 WHERE id = ?1 AND organization_id = ?2",
        )
        .bind(*user.id.as_uuid())
        .bind(*user.organization_id.as_uuid())
        .bind(user.email.as_str())
        .bind(user.display_name.as_str())
        .bind(user.role.as_str())
        .bind(user.password_hash.as_deref())
        .bind(i64::from(user.disabled))
        .execute(w.conn())
        .await
        .map_err(writing(Write::Plain))
        .and_then(|done| touched(done, "user"));
        w.finish(result).await
    }

    async fn delete(&self, org: OrganizationId, id: UserId) -> Result<(), StoreError> {
        // Their tokens go by ON DELETE CASCADE.
        let mut w = self.begin_write().await?;
        let result = sqlx::query("DELETE FROM users WHERE id = ?1 AND organization_id = ?2")
            .bind(*id.as_uuid())
            .bind(*org.as_uuid())
            .execute(w.conn())
            .await
            .map_err(writing(Write::Plain))
            .and_then(|done| touched(done, "user"));
        w.finish(result).await
    }
}

async fn create_token(conn: &mut SqliteConnection, token: &ApiToken) -> Result<(), StoreError> {
    let user_exists = exists(
        conn,
        sqlx::query("SELECT 1 FROM users WHERE id = ?1 AND organization_id = ?2")
            .bind(*token.user_id.as_uuid())
            .bind(*token.organization_id.as_uuid()),
    )
    .await?;
    if !user_exists {
        return Err(missing_parent("token", "user"));
    }
    sqlx::query(concat!(
        "INSERT INTO api_tokens (",
        token_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))
    .bind(*token.id.as_uuid())
    .bind(*token.organization_id.as_uuid())
    .bind(*token.user_id.as_uuid())
    .bind(token.name.as_str())
    .bind(&token.hash.0[..])
    .bind(token.role_cap.as_str())
    .bind(token.created_at.as_unix_millis())
    .bind(token.expires_at.map(Timestamp::as_unix_millis))
    .bind(token.last_used_at.map(Timestamp::as_unix_millis))
    .bind(token.revoked_at.map(Timestamp::as_unix_millis))
    .execute(conn)
    .await
    .map_err(writing(child("token", "user")))?;
    Ok(())
}

#[db_port("sqlite")]
#[async_trait]
impl ApiTokenRepository for SqliteStore {
    async fn create(&self, token: &ApiToken) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = create_token(w.conn(), token).await;
        w.finish(result).await
    }

    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<ApiToken>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE token_hash = ?1"
        ))
        .bind(&hash.0[..])
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref().map(token).transpose()
    }

    async fn list(
        &self,
        org: OrganizationId,
        user: Option<UserId>,
        page: PageRequest<ApiTokenId>,
    ) -> Result<Page<ApiToken, ApiTokenId>, StoreError> {
        let query = match user {
            Some(user) => sqlx::query(concat!(
                "SELECT ",
                token_columns!(),
                " FROM api_tokens WHERE organization_id = ?1 AND user_id = ?3 AND id > ?2 \
                  ORDER BY id LIMIT ?4"
            ))
            .bind(*org.as_uuid())
            .bind(after_id(page.after.as_ref().map(ApiTokenId::as_uuid)))
            .bind(*user.as_uuid())
            .bind(limit(page.size)),
            None => sqlx::query(concat!(
                "SELECT ",
                token_columns!(),
                " FROM api_tokens WHERE organization_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))
            .bind(*org.as_uuid())
            .bind(after_id(page.after.as_ref().map(ApiTokenId::as_uuid)))
            .bind(limit(page.size)),
        };
        self.read_page(query, token, page.size, |t| t.id).await
    }

    async fn revoke(
        &self,
        org: OrganizationId,
        id: ApiTokenId,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        // Revoking twice keeps the first time.
        let mut w = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?3) \
             WHERE id = ?1 AND organization_id = ?2",
        )
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .bind(at.as_unix_millis())
        .execute(w.conn())
        .await
        .map_err(writing(Write::Plain))
        .and_then(|done| touched(done, "token"));
        w.finish(result).await
    }

    async fn touch(&self, id: ApiTokenId, at: Timestamp) -> Result<(), StoreError> {
        // The latest use wins, whatever order the touches arrive in.
        let mut w = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE api_tokens SET last_used_at = max(coalesce(last_used_at, ?2), ?2) \
             WHERE id = ?1",
        )
        .bind(*id.as_uuid())
        .bind(at.as_unix_millis())
        .execute(w.conn())
        .await
        .map_err(writing(Write::Plain))
        .and_then(|done| touched(done, "token"));
        w.finish(result).await
    }
}
