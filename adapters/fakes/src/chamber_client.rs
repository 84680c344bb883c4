//! [`ScriptedChamberClient`]: a chamber client that answers from a script, for tests.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chamberlain_domain::ports::{ChamberClient, FetchError, FetchRequest, FetchedResponse};

/// What a scripted chamber answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptedAnswer {
    Respond { status: u16, body: Vec<u8> },
    Fail(FetchError),
}

impl ScriptedAnswer {
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::Respond {
            status: 200,
            body: body.into(),
        }
    }
}

/// Answers each URL as scripted (unknown URLs: connection refused) and records every request.
#[derive(Debug, Default)]
pub struct ScriptedChamberClient {
    answers: Mutex<HashMap<String, ScriptedAnswer>>,
    requests: Mutex<Vec<FetchRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ScriptedChamberClient {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, `url` answers `answer`.
    pub fn script(&self, url: &str, answer: ScriptedAnswer) {
        lock(&self.answers).insert(url.to_owned(), answer);
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<FetchRequest> {
        lock(&self.requests).clone()
    }
}

#[async_trait]
impl ChamberClient for ScriptedChamberClient {
    async fn fetch(&self, request: &FetchRequest) -> Result<FetchedResponse, FetchError> {
        lock(&self.requests).push(request.clone());
        match lock(&self.answers).get(request.url.as_str()).cloned() {
            Some(ScriptedAnswer::Respond { status, body }) => Ok(FetchedResponse { status, body }),
            Some(ScriptedAnswer::Fail(e)) => Err(e),
            None => Err(FetchError::Connect {
                reason: "connection refused".into(),
            }),
        }
    }
}
