//! Authentication: who a credential belongs to, signing in, and API tokens. The same decision
//! serves the auth service behind Envoy and the in-process layer of the embedded mode.
//!
//! A token check costs a hash, a read of the [`AccessEpoch`] and (on a cache miss) two key
//! lookups; only signing in runs the deliberately slow password hash. Decisions are cached for
//! at most `cache_ttl` and only while the access epoch they were made under is current: a
//! revoked token, a lowered role or a deleted user moves the epoch on, so the change takes
//! effect on the next call on every replica. When the epoch cannot be read, every call is
//! decided from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::model::{
    ApiToken, ApiTokenId, Email, MalformedToken, Name, OrganizationId, Page, PageRequest, PageSize,
    Role, TokenHash, TokenRefusal, TokenSecret, User, UserId,
};
use crate::ports::{
    AccessEpoch, ApiTokenRepository, Clock, OrganizationRepository, PasswordHasher, Repositories,
    StoreError, UserRepository,
};
use crate::time::Timestamp;
use crate::usecases::{Actor, UseCaseError};

/// Settings of authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSettings {
    /// How long a token from signing in lasts.
    pub session_ttl: Duration,
    /// The longest a decision is reused without a lookup (while the access epoch stays put).
    pub cache_ttl: Duration,
    /// A token's `last_used_at` is written at most this often.
    pub touch_every: Duration,
    /// The most decisions kept in the cache.
    pub cache_capacity: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            cache_ttl: Duration::from_secs(5),
            touch_every: Duration::from_secs(60),
            cache_capacity: 100_000,
        }
    }
}

/// An authenticated caller: the actor the use cases check, and the token it presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub actor: Actor,
    pub token_id: ApiTokenId,
}

/// Why a caller is not authenticated. The text is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no credential: send `authorization: Bearer <token>`")]
    Missing,
    #[error(transparent)]
    Malformed(#[from] MalformedToken),
    #[error("unknown token")]
    Unknown,
    #[error(transparent)]
    Refused(#[from] TokenRefusal),
    #[error("the token's user is disabled or deleted")]
    UserDisabled,
    #[error("wrong email or password")]
    BadPassword,
}

/// An organization a signing-in person has an account in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizationChoice {
    pub id: OrganizationId,
    pub name: Name,
}

fn choices_text(choices: &[OrganizationChoice]) -> String {
    choices
        .iter()
        .map(|c| format!("{} ({})", c.name.as_str(), c.id))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] Refusal),

    /// The token or user store could not answer: callers must refuse (fail closed).
    #[error("authentication unavailable: {message}")]
    Unavailable { message: String },
}

/// Why signing in did not give a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The e-mail and password are right for accounts in several organizations: the caller
    /// names one (said only once the password has matched each of them).
    #[error(
        "this e-mail address has an account in several organizations; sign in to one of them by \
         name or id: {}",
        choices_text(.0)
    )]
    ChooseOrganization(Vec<OrganizationChoice>),
}

impl From<Refusal> for SignInError {
    fn from(r: Refusal) -> Self {
        Self::Auth(r.into())
    }
}

impl From<StoreError> for SignInError {
    fn from(e: StoreError) -> Self {
        Self::Auth(e.into())
    }
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        Self::Unavailable {
            message: e.to_string(),
        }
    }
}

/// A token just issued: its record and its secret, to be shown once.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: ApiToken,
    pub secret: TokenSecret,
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    identity: Identity,
    /// The token's own expiry: a cached decision never outlives it.
    token_expires_at: Option<Timestamp>,
    until: Timestamp,
}

/// Decisions made under one access epoch.
#[derive(Debug, Default)]
struct DecisionCache {
    epoch: u64,
    decisions: HashMap<TokenHash, Cached>,
}

/// The authentication use cases.
#[derive(Clone)]
pub struct Authenticator {
    pub tokens: Arc<dyn ApiTokenRepository>,
    pub users: Arc<dyn UserRepository>,
    pub organizations: Arc<dyn OrganizationRepository>,
    pub passwords: Arc<dyn PasswordHasher>,
    /// Moved on by every access change; read before a cached decision is reused.
    pub access: Arc<dyn AccessEpoch>,
    pub clock: Arc<dyn Clock>,
    pub settings: AuthSettings,
    cache: Arc<Mutex<DecisionCache>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    Timestamp::from_unix_millis(t.as_unix_millis().saturating_add(millis(d)))
}

impl Authenticator {
    pub fn new(
        repositories: &Repositories,
        passwords: Arc<dyn PasswordHasher>,
        access: Arc<dyn AccessEpoch>,
        clock: Arc<dyn Clock>,
        settings: AuthSettings,
    ) -> Self {
        Self {
            tokens: repositories.tokens.clone(),
            users: repositories.users.clone(),
            organizations: repositories.organizations.clone(),
            passwords,
            access,
            clock,
            settings,
            cache: Arc::default(),
        }
    }

    /// Who an `authorization` header value (`Bearer <token>`, or the bare token) belongs to.
    ///
    /// # Errors
    /// [`AuthError::Unauthenticated`] naming why; [`AuthError::Unavailable`] when the stores
    /// cannot answer (the caller must refuse).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, AuthError> {
        let raw = authorization.map(str::trim).unwrap_or_default();
        let raw = match raw.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ if raw.eq_ignore_ascii_case("bearer") => "",
            _ => raw,
        };
        if raw.is_empty() {
            return Err(Refusal::Missing.into());
        }
        let hash = TokenSecret::parse(raw).map_err(Refusal::from)?;
        let now = self.clock.now();
        // Read before the lookup: a change committed after this read moves the epoch on, so a
        // decision that missed it is not reused.
        let epoch = match self.access.current().await {
            Ok(epoch) => Some(epoch),
            Err(e) => {
                tracing::debug!(error = %e, "access epoch unreadable; deciding from the store");
                None
            }
        };
        if let Some(epoch) = epoch
            && let Some(hit) = self.cached(&hash, now, epoch)
        {
            return Ok(hit);
        }
        let Some(token) = self.tokens.find_by_hash(&hash).await? else {
            return Err(Refusal::Unknown.into());
        };
        token.check_usable(now).map_err(Refusal::from)?;
        let user = match self.users.get(token.organization_id, token.user_id).await {
            Ok(u) => u,
            Err(StoreError::NotFound { .. }) => return Err(Refusal::UserDisabled.into()),
            Err(e) => return Err(e.into()),
        };
        if user.disabled {
            return Err(Refusal::UserDisabled.into());
        }
        let identity = Identity {
            actor: Actor {
                user_id: user.id,
                organization_id: user.organization_id,
                role: token.effective_role(user.role),
            },
            token_id: token.id,
        };
        let stale = token.last_used_at.is_none_or(|t| {
            now.as_unix_millis() - t.as_unix_millis() >= millis(self.settings.touch_every)
        });
        if stale && let Err(e) = self.tokens.touch(token.id, now).await {
            tracing::debug!(error = %e, "token last-used time not recorded");
        }
        if let Some(epoch) = epoch {
            self.remember(hash, identity, token.expires_at, now, epoch);
        }
        Ok(identity)
    }

    /// Signs in with e-mail and password; returns a token that lasts `session_ttl`. An address
    /// may have accounts in several organizations: `organization` (an id or a name) picks one;
    /// without it, the one account whose password matches is used.
    ///
    /// # Errors
    /// [`Refusal::BadPassword`] for an unknown address, a wrong password, an account without a
    /// password or an organization the address has no account in (the same answer, in about
    /// the same time); [`SignInError::ChooseOrganization`] when the password matches accounts
    /// in several organizations and none was named; `UserDisabled`; `Unavailable`.
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        organization: Option<&str>,
    ) -> Result<IssuedToken, SignInError> {
        let accounts = match Email::parse(email) {
            Ok(email) => self.users.find_by_email(&email).await?,
            Err(_) => Vec::new(),
        };
        let accounts = match organization.map(str::trim).filter(|o| !o.is_empty()) {
            None => accounts,
            Some(wanted) => self.in_organization(accounts, wanted).await?,
        };
        let mut matching = Vec::new();
        if accounts.is_empty() {
            // As long as a real check, so a wrong address cannot be told from a wrong password.
            self.passwords.verify(password, None).await;
        }
        for account in accounts {
            if self
                .passwords
                .verify(password, account.password_hash.clone())
                .await
            {
                matching.push(account);
            }
        }
        let user = match matching.len() {
            0 => return Err(Refusal::BadPassword.into()),
            1 => matching.remove(0),
            _ => {
                let mut choices = Vec::with_capacity(matching.len());
                for account in &matching {
                    let org = self.organizations.get(account.organization_id).await?;
                    choices.push(OrganizationChoice {
                        id: org.id,
                        name: org.name,
                    });
                }
                return Err(SignInError::ChooseOrganization(choices));
            }
        };
        if user.disabled {
            return Err(Refusal::UserDisabled.into());
        }
        let now = self.clock.now();
        let secret = TokenSecret::generate();
        let token = ApiToken {
            id: ApiTokenId::random(),
            organization_id: user.organization_id,
            user_id: user.id,
            name: Name::parse("sign-in").map_err(|e| AuthError::Unavailable {
                message: e.to_string(),
            })?,
            hash: secret.hash(),
            role_cap: user.role,
            created_at: now,
            expires_at: Some(after(now, self.settings.session_ttl)),
            last_used_at: None,
            revoked_at: None,
        };
        self.tokens.create(&token).await?;
        Ok(IssuedToken { token, secret })
    }

    /// The accounts in the organization named `wanted` (its id, or its name).
    async fn in_organization(
        &self,
        accounts: Vec<User>,
        wanted: &str,
    ) -> Result<Vec<User>, StoreError> {
        if let Ok(id) = OrganizationId::parse(wanted) {
            return Ok(accounts
                .into_iter()
                .filter(|a| a.organization_id == id)
                .collect());
        }
        let Ok(wanted) = Name::parse(wanted) else {
            return Ok(Vec::new());
        };
        let mut kept = Vec::new();
        for account in accounts {
            let org = self.organizations.get(account.organization_id).await?;
            if org.name == wanted {
                kept.push(account);
            }
        }
        Ok(kept)
    }

    /// Issues an API token for the caller, acting with at most `role` (default: the caller's
    /// role; never more).
    ///
    /// # Errors
    /// `Invalid` (`name`, `role` above the caller's, `expires_in` zero); `Unavailable`.
    pub async fn create_token(
        &self,
        actor: &Actor,
        name: &str,
        role: Option<&str>,
        expires_in: Option<Duration>,
    ) -> Result<IssuedToken, UseCaseError> {
        actor.require(Role::Viewer, "create an API token")?;
        let name = Name::parse(name)?;
        let role_cap = match role.map(str::trim).filter(|r| !r.is_empty()) {
            None => actor.role,
            Some(r) => {
                let r = Role::parse(r)?;
                if r > actor.role {
                    return Err(crate::error::ValidationError::new(
                        "role",
                        crate::error::Rule::Inconsistent(format!(
                            "must not exceed the caller's role ({})",
                            actor.role
                        )),
                    )
                    .into());
                }
                r
            }
        };
        if expires_in.is_some_and(|d| d.is_zero()) {
            return Err(crate::error::ValidationError::new(
                "expires_in",
                crate::error::Rule::Inconsistent("must be positive".into()),
            )
            .into());
        }
        let now = self.clock.now();
        let secret = TokenSecret::generate();
        let token = ApiToken {
            id: ApiTokenId::random(),
            organization_id: actor.organization_id,
            user_id: actor.user_id,
            name,
            hash: secret.hash(),
            role_cap,
            created_at: now,
            expires_at: expires_in.map(|d| after(now, d)),
            last_used_at: None,
            revoked_at: None,
        };
        self.tokens.create(&token).await?;
        Ok(IssuedToken { token, secret })
    }

    /// Tokens of the organization for an admin; one's own tokens for anyone else.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn list_tokens(
        &self,
        actor: &Actor,
        page: PageRequest<ApiTokenId>,
    ) -> Result<Page<ApiToken, ApiTokenId>, UseCaseError> {
        actor.require(Role::Viewer, "list API tokens")?;
        let user = (actor.role < Role::Admin).then_some(actor.user_id);
        Ok(self.tokens.list(actor.organization_id, user, page).await?)
    }

    /// Revokes a token: any of the organization's for an admin, one's own for anyone else.
    /// It stops working on the next call on every replica (within `cache_ttl` on replicas
    /// that cannot reach the access epoch while this one could not move it).
    ///
    /// # Errors
    /// `NotFound { entity: "token" }` (also for another user's token, to a non-admin);
    /// `Unavailable`.
    pub async fn revoke_token(&self, actor: &Actor, id: ApiTokenId) -> Result<(), UseCaseError> {
        actor.require(Role::Viewer, "revoke an API token")?;
        if actor.role < Role::Admin && !self.owns(actor.user_id, actor, id).await? {
            return Err(UseCaseError::NotFound { entity: "token" });
        }
        self.tokens
            .revoke(actor.organization_id, id, self.clock.now())
            .await?;
        self.forget_token(id);
        announce_access_change(self.access.as_ref(), "a token revocation").await;
        Ok(())
    }

    async fn owns(
        &self,
        user: UserId,
        actor: &Actor,
        id: ApiTokenId,
    ) -> Result<bool, UseCaseError> {
        let mut page = PageRequest::first(PageSize::new(1000).unwrap_or_default());
        loop {
            let p = self
                .tokens
                .list(actor.organization_id, Some(user), page.clone())
                .await?;
            if p.items.iter().any(|t| t.id == id) {
                return Ok(true);
            }
            match p.next {
                Some(next) => page.after = Some(next),
                None => return Ok(false),
            }
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, DecisionCache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached(&self, hash: &TokenHash, now: Timestamp, epoch: u64) -> Option<Identity> {
        let mut cache = self.lock_cache();
        if cache.epoch != epoch {
            // Access changed somewhere: nothing decided before may be reused.
            cache.decisions.clear();
            cache.epoch = epoch;
            return None;
        }
        let hit = cache.decisions.get(hash)?;
        (hit.until > now && hit.token_expires_at.is_none_or(|t| t > now)).then_some(hit.identity)
    }

    fn remember(
        &self,
        hash: TokenHash,
        identity: Identity,
        token_expires_at: Option<Timestamp>,
        now: Timestamp,
        epoch: u64,
    ) {
        if self.settings.cache_ttl.is_zero() {
            return;
        }
        let mut cache = self.lock_cache();
        if cache.epoch != epoch {
            // Decided under an epoch that has since moved on (or before the cache saw it).
            return;
        }
        if cache.decisions.len() >= self.settings.cache_capacity {
            cache.decisions.retain(|_, c| c.until > now);
            if cache.decisions.len() >= self.settings.cache_capacity {
                cache.decisions.clear();
            }
        }
        cache.decisions.insert(
            hash,
            Cached {
                identity,
                token_expires_at,
                until: after(now, self.settings.cache_ttl),
            },
        );
    }

    fn forget_token(&self, id: ApiTokenId) {
        self.lock_cache()
            .decisions
            .retain(|_, c| c.identity.token_id != id);
    }
}

/// Moves the access epoch on after `change` is durable. A failure is logged, not returned: the
/// change itself is made, and replicas reuse older decisions for at most their `cache_ttl`.
pub(crate) async fn announce_access_change(access: &dyn AccessEpoch, change: &str) {
    if let Err(e) = access.advance().await {
        tracing::warn!(
            error = %e,
            change,
            "access epoch not advanced; other replicas may act on cached decisions until their cache expires"
        );
    }
}
