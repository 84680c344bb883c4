//! Organizations and their users.

use std::sync::Arc;

use crate::model::{
    Email, Name, Organization, OrganizationId, Page, PageRequest, Password, Role, User, UserId,
};
use crate::ports::{
    AccessEpoch, Clock, OrganizationRepository, PasswordHasher, Repositories, UserRepository,
};
use crate::usecases::auth::announce_access_change;
use crate::usecases::{Actor, UseCaseError};

/// A user as an admin submits them.
#[derive(Clone, PartialEq, Eq)]
pub struct NewUser {
    pub email: String,
    pub display_name: String,
    pub role: String,
    /// The password as typed, checked and hashed by [`UserAdmin`]; `None` (or empty) for
    /// token-only accounts.
    pub password: Option<String>,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("email", &self.email)
            .field("display_name", &self.display_name)
            .field("role", &self.role)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Organization and user administration.
#[derive(Clone)]
pub struct UserAdmin {
    pub organizations: Arc<dyn OrganizationRepository>,
    pub users: Arc<dyn UserRepository>,
    /// Hashes the passwords of new users (argon2id in production).
    pub passwords: Arc<dyn PasswordHasher>,
    /// Moved on when a role changes or a user is deleted, so every replica's cached decisions
    /// about them end with the next call.
    pub access: Arc<dyn AccessEpoch>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for UserAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserAdmin").finish_non_exhaustive()
    }
}

type Result<T> = std::result::Result<T, UseCaseError>;

impl UserAdmin {
    pub fn new(
        repositories: &Repositories,
        passwords: Arc<dyn PasswordHasher>,
        access: Arc<dyn AccessEpoch>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            organizations: repositories.organizations.clone(),
            users: repositories.users.clone(),
            passwords,
            access,
            clock,
        }
    }

    /// Creates a tenant with its first admin. An installation-level operation (first start,
    /// `chamberlain` operator commands): there is no actor yet to check.
    ///
    /// # Errors
    /// `Invalid` (`organization.name`, `user.email`, `password`, ...); `Duplicate`;
    /// `Hashing`; `Unavailable`.
    pub async fn create_organization(
        &self,
        name: &str,
        admin: NewUser,
    ) -> Result<(Organization, User)> {
        let now = self.clock.now();
        let org = Organization {
            id: OrganizationId::random(),
            name: Name::parse(name).map_err(|e| e.within("organization"))?,
            created_at: now,
        };
        let user = self
            .build_user(
                org.id,
                &NewUser {
                    role: "admin".into(),
                    ..admin
                },
            )
            .await?;
        self.organizations.create(&org).await?;
        self.users.create(&user).await?;
        Ok((org, user))
    }

    /// Only an admin may create users: the role is checked before a password hash is spent.
    ///
    /// # Errors
    /// `Forbidden` unless admin; `Invalid` (`user.email`, ..., `password`); `Duplicate {
    /// field: "email" }`; `Hashing`; `Unavailable`.
    pub async fn create_user(&self, actor: &Actor, new: NewUser) -> Result<User> {
        actor.require(Role::Admin, "create a user")?;
        let user = self.build_user(actor.organization_id, &new).await?;
        self.users.create(&user).await?;
        Ok(user)
    }

    /// The caller's own account.
    ///
    /// # Errors
    /// `NotFound` (deleted since the token was checked); `Unavailable`.
    pub async fn who_am_i(&self, actor: &Actor) -> Result<User> {
        Ok(self.users.get(actor.organization_id, actor.user_id).await?)
    }

    /// Changes the caller's own display name.
    ///
    /// # Errors
    /// `Invalid` (`user.display_name`); `NotFound` (deleted since the token was checked);
    /// `Unavailable`.
    pub async fn set_own_display_name(&self, actor: &Actor, name: &str) -> Result<User> {
        let mut user = self.users.get(actor.organization_id, actor.user_id).await?;
        user.display_name =
            Name::parse(name).map_err(|e| e.for_field("display_name").within("user"))?;
        self.users.update(&user).await?;
        Ok(user)
    }

    /// # Errors
    /// `Forbidden` unless admin; `Unavailable`.
    pub async fn list_users(
        &self,
        actor: &Actor,
        page: PageRequest<UserId>,
    ) -> Result<Page<User, UserId>> {
        actor.require(Role::Admin, "list users")?;
        Ok(self.users.list(actor.organization_id, page).await?)
    }

    /// Changes a user's role, in effect from the user's next call on every replica. Admins
    /// cannot change their own role (so an organization never locks itself out by accident).
    ///
    /// # Errors
    /// `Forbidden`; `Invalid` (`role`); `NotFound`; `FailedPrecondition` for oneself;
    /// `Unavailable`.
    pub async fn set_role(&self, actor: &Actor, id: UserId, role: &str) -> Result<User> {
        actor.require(Role::Admin, "change a user's role")?;
        let role = Role::parse(role)?;
        if id == actor.user_id {
            return Err(UseCaseError::FailedPrecondition(
                "you cannot change your own role".into(),
            ));
        }
        let mut user = self.users.get(actor.organization_id, id).await?;
        user.role = role;
        self.users.update(&user).await?;
        announce_access_change(self.access.as_ref(), "a role change").await;
        Ok(user)
    }

    /// Deletes a user; their tokens are refused from the next call on every replica.
    ///
    /// # Errors
    /// `Forbidden`; `NotFound`; `FailedPrecondition` for oneself; `Unavailable`.
    pub async fn delete_user(&self, actor: &Actor, id: UserId) -> Result<()> {
        actor.require(Role::Admin, "delete a user")?;
        if id == actor.user_id {
            return Err(UseCaseError::FailedPrecondition(
                "you cannot delete yourself".into(),
            ));
        }
        self.users.delete(actor.organization_id, id).await?;
        announce_access_change(self.access.as_ref(), "a user deletion").await;
        Ok(())
    }

    /// Checks every field, then hashes the password (the slow step) last.
    async fn build_user(&self, org: OrganizationId, new: &NewUser) -> Result<User> {
        let email = Email::parse(&new.email).map_err(|e| e.within("user"))?;
        let display_name = Name::parse(&new.display_name)
            .map_err(|e| e.for_field("display_name").within("user"))?;
        let role = Role::parse(&new.role).map_err(|e| e.within("user"))?;
        let password = match new.password.as_deref() {
            None | Some("") => None,
            Some(raw) => Some(Password::parse(raw)?),
        };
        let password_hash = match password {
            Some(p) => Some(self.passwords.hash(&p).await?),
            None => None,
        };
        Ok(User {
            id: UserId::random(),
            organization_id: org,
            email,
            display_name,
            role,
            password_hash,
            disabled: false,
            created_at: self.clock.now(),
        })
    }
}
