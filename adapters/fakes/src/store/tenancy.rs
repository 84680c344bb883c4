//! [`OrganizationRepository`], [`UserRepository`] and [`ApiTokenRepository`] of [`MemoryStore`].

use super::{MemoryStore, not_found, page};
use async_trait::async_trait;
use chamberlain_domain::model::{
    ApiToken, ApiTokenId, Email, Organization, OrganizationId, Page, PageRequest, TokenHash, User,
    UserId,
};
use chamberlain_domain::ports::{
    ApiTokenRepository, OrganizationRepository, StoreError, UserRepository,
};
use chamberlain_domain::time::Timestamp;

#[async_trait]
impl OrganizationRepository for MemoryStore {
    async fn create(&self, org: &Organization) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.organizations.values().any(|o| o.name == org.name) {
            return Err(StoreError::Duplicate {
                entity: "organization",
                field: "name",
            });
        }
        if t.organizations.contains_key(&org.id) {
            return Err(StoreError::Duplicate {
                entity: "organization",
                field: "id",
            });
        }
        t.organizations.insert(org.id, org.clone());
        Ok(())
    }

    async fn get(&self, id: OrganizationId) -> Result<Organization, StoreError> {
        self.lock()
            .organizations
            .get(&id)
            .cloned()
            .ok_or(not_found("organization"))
    }
}

#[async_trait]
impl UserRepository for MemoryStore {
    async fn create(&self, user: &User) -> Result<(), StoreError> {
        let mut t = self.lock();
        if !t.organizations.contains_key(&user.organization_id) {
            return Err(StoreError::MissingParent {
                entity: "user",
                parent: "organization",
            });
        }
        if t.users
            .values()
            .any(|u| u.organization_id == user.organization_id && u.email == user.email)
            || t.users.contains_key(&user.id)
        {
            return Err(StoreError::Duplicate {
                entity: "user",
                field: "email",
            });
        }
        t.users.insert(user.id, user.clone());
        Ok(())
    }

    async fn get(&self, org: OrganizationId, id: UserId) -> Result<User, StoreError> {
        let t = self.lock();
        t.users
            .get(&id)
            .filter(|u| u.organization_id == org)
            .cloned()
            .ok_or(not_found("user"))
    }

    async fn find_by_email(&self, email: &Email) -> Result<Vec<User>, StoreError> {
        let mut found: Vec<User> = self
            .lock()
            .users
            .values()
            .filter(|u| &u.email == email)
            .cloned()
            .collect();
        found.sort_by_key(|u| u.organization_id);
        Ok(found)
    }

    async fn list(
        &self,
        org: OrganizationId,
        request: PageRequest<UserId>,
    ) -> Result<Page<User, UserId>, StoreError> {
        let t = self.lock();
        Ok(page(
            t.users
                .values()
                .filter(|u| u.organization_id == org)
                .cloned(),
            |u| u.id,
            &request,
        ))
    }

    async fn update(&self, user: &User) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.users
            .get(&user.id)
            .is_none_or(|u| u.organization_id != user.organization_id)
        {
            return Err(not_found("user"));
        }
        if t.users.values().any(|u| {
            u.id != user.id && u.organization_id == user.organization_id && u.email == user.email
        }) {
            return Err(StoreError::Duplicate {
                entity: "user",
                field: "email",
            });
        }
        t.users.insert(user.id, user.clone());
        Ok(())
    }

    async fn delete(&self, org: OrganizationId, id: UserId) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.users.get(&id).is_none_or(|u| u.organization_id != org) {
            return Err(not_found("user"));
        }
        t.users.remove(&id);
        t.tokens.retain(|_, tok| tok.user_id != id);
        Ok(())
    }
}

#[async_trait]
impl ApiTokenRepository for MemoryStore {
    async fn create(&self, token: &ApiToken) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.users
            .get(&token.user_id)
            .is_none_or(|u| u.organization_id != token.organization_id)
        {
            return Err(StoreError::MissingParent {
                entity: "token",
                parent: "user",
            });
        }
        if t.tokens.values().any(|x| x.hash == token.hash) || t.tokens.contains_key(&token.id) {
            return Err(StoreError::Duplicate {
                entity: "token",
                field: "hash",
            });
        }
        t.tokens.insert(token.id, token.clone());
        Ok(())
    }

    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<ApiToken>, StoreError> {
        Ok(self
            .lock()
            .tokens
            .values()
            .find(|t| &t.hash == hash)
            .cloned())
    }

    async fn list(
        &self,
        org: OrganizationId,
        user: Option<UserId>,
        request: PageRequest<ApiTokenId>,
    ) -> Result<Page<ApiToken, ApiTokenId>, StoreError> {
        let t = self.lock();
        Ok(page(
            t.tokens
                .values()
                .filter(|x| x.organization_id == org && user.is_none_or(|u| x.user_id == u))
                .cloned(),
            |x| x.id,
            &request,
        ))
    }

    async fn revoke(
        &self,
        org: OrganizationId,
        id: ApiTokenId,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let mut t = self.lock();
        let token = t
            .tokens
            .get_mut(&id)
            .filter(|x| x.organization_id == org)
            .ok_or(not_found("token"))?;
        token.revoked_at.get_or_insert(at);
        Ok(())
    }

    async fn touch(&self, id: ApiTokenId, at: Timestamp) -> Result<(), StoreError> {
        let mut t = self.lock();
        let token = t.tokens.get_mut(&id).ok_or(not_found("token"))?;
        token.last_used_at = Some(token.last_used_at.map_or(at, |prev| prev.max(at)));
        Ok(())
    }
}
