#![doc = include_str!("../README.md")]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::ports::{Clock, LeaderLease, LeaseGrant};

/// Sleeps until the clock reads `at` (at once if it already does).
pub async fn sleep_until(clock: &dyn Clock, at: Timestamp) {
    let wait = at.saturating_since(clock.now());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// How a term ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermEnd {
    /// The lease was lost: another replica may lead now.
    LostLease,
    /// Shutdown came; the lease was given up.
    Shutdown,
}

/// A replica's candidacy for one lease.
#[derive(Clone)]
pub struct Leadership {
    pub lease: Arc<dyn LeaderLease>,
    pub clock: Arc<dyn Clock>,
    /// This replica's name in the lease (unique per process).
    pub holder: String,
    pub ttl: Duration,
    /// How often the lease is renewed, and tried for while another replica holds it.
    pub renew_every: Duration,
    /// What is led, for the logs (`the schedule`, `alerting`).
    pub role: &'static str,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("holder", &self.holder)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// Runs until `shutdown` resolves: waits for the lease, then runs `term` with the grant
    /// while renewing it. The term is dropped at once when the lease is lost or shutdown comes
    /// (so it must leave nothing half-done that a next leader cannot repair); on shutdown the
    /// lease is released. A term that ends by itself is started again while the lease holds.
    /// `on_end` hears of every term's end. Lease errors are logged and retried; they never end
    /// the loop.
    pub async fn run<F, T>(
        &self,
        shutdown: impl Future<Output = ()>,
        mut term: F,
        mut on_end: impl FnMut(TermEnd),
    ) where
        F: FnMut(LeaseGrant) -> T,
        T: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        loop {
            let grant = tokio::select! {
                () = &mut shutdown => return,
                grant = self.acquire() => grant,
            };
            tracing::info!(holder = %self.holder, token = grant.fencing_token, "leading {}", self.role);
            let end = {
                let hold = self.hold(grant.clone());
                tokio::pin!(hold);
                loop {
                    tokio::select! {
                        () = &mut shutdown => break TermEnd::Shutdown,
                        () = &mut hold => break TermEnd::LostLease,
                        () = term(grant.clone()) => {
                            tracing::debug!(role = self.role, "the term ended by itself; starting it again");
                        }
                    }
                }
            };
            on_end(end);
            match end {
                TermEnd::Shutdown => {
                    if let Err(e) = self.lease.release(&grant).await {
                        tracing::warn!(error = %e, "lease not released; it expires by itself");
                    }
                    return;
                }
                TermEnd::LostLease => {
                    tracing::warn!(holder = %self.holder, "lost the lease of {}; following", self.role);
                }
            }
        }
    }

    /// Tries for the lease every renewal period until it is granted.
    async fn acquire(&self) -> LeaseGrant {
        loop {
            match self.lease.acquire(&self.holder, self.ttl).await {
                Ok(Some(grant)) => return grant,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "lease store unavailable"),
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// Renews the lease every renewal period; returns when it is lost: a renewal refused, or
    /// renewals failing until the grant expired.
    async fn hold(&self, mut grant: LeaseGrant) {
        let mut next = self.clock.now() + self.renew_every;
        loop {
            sleep_until(self.clock.as_ref(), next).await;
            match self.lease.renew(&grant, self.ttl).await {
                Ok(Some(renewed)) => grant = renewed,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    if self.clock.now() >= grant.expires_at {
                        return;
                    }
                }
            }
            next = self.clock.now() + self.renew_every;
        }
    }
}
