//! [`RedisPollQueue`]: the poll queue on a Redis Stream with a consumer group.
//!
//! - Enqueue: one Lua script per chunk sets each poll's dedup key (`SET NX PX`, TTL from the
//!   poll's interval) and appends the job to the stream only if the key was new.
//! - Lease: promote released jobs whose delay has passed (a sorted set), take over jobs whose
//!   lease expired (one script: `XPENDING … IDLE` over the ids added longer than the visibility
//!   timeout ago, which in the steady state is none, then `XCLAIM` of those found), then read new
//!   ones (`XREADGROUP`, blocking in slices of at most a second on a dedicated connection, so an
//!   idle worker sees a new job at once and an orphaned one within a second of its expiry).
//! - Ack and release: a Lua script checks that the receipt still holds the lease (same consumer,
//!   same delivery count in the pending list) before `XACK` + `XDEL`, so a worker whose lease
//!   expired cannot remove a job another worker now holds.
//! - Extend: the same check, then `XCLAIM … JUSTID` by the same consumer, which resets the
//!   job's idle time without counting a delivery: the lease runs for the visibility timeout
//!   of whichever worker would take it over, from now.
//!
//! - Inspection (the queue on the console) reads without changing anything: `XINFO
//!   CONSUMERS`, the pending list (`XPENDING`), the entries past the group's last delivered id
//!   (`XRANGE`), the delayed set.
//!
//! Keys (all under the configured prefix, a hash tag): `q:stream`, `q:delayed`,
//! `q:dedup:<chamber>:<slot>`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::model::PollJob;
use chamberlain_domain::ports::{
    EnqueueReport, LeaseReceipt, LeasedJob, PollQueue, QueueConsumer, QueueDepth, QueueError,
    QueueInspector, QueuedJob, QueuedJobState,
};
use chamberlain_domain::time::Timestamp;
use redis::Value;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use tokio::sync::Mutex;

use crate::{RedisConfig, connection};

const GROUP: &str = "workers";
/// Jobs per enqueue script call.
const ENQUEUE_CHUNK: usize = 500;
/// Longest single blocking read: bounds how late an orphaned or released job is noticed.
const BLOCK_SLICE: Duration = Duration::from_secs(1);

const ENQUEUE: &str = r"
local new = 0
for i = 2, #ARGV, 3 do
  if redis.call('SET', ARGV[1] .. ARGV[i], '1', 'NX', 'PX', ARGV[i + 1]) then
    redis.call('XADD', KEYS[1], '*', 'j', ARGV[i + 2], 'a', '0')
    new = new + 1
  end
end
return new
";

/// Moves released jobs whose delay has passed back into the stream. Members of the delayed set
/// are `<extra attempts>:<old id>:<payload>`.
const PROMOTE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  local a_end = string.find(m, ':', 1, true)
  local id_end = string.find(m, ':', a_end + 1, true)
  redis.call('XADD', KEYS[1], '*', 'j', string.sub(m, id_end + 1), 'a', string.sub(m, 1, a_end - 1))
  redis.call('ZREM', KEYS[2], m)
end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
return {#due, wait}
";

/// ARGV: group, consumer, visibility ms, max. Takes over up to `max` jobs idle longer than the
/// visibility, oldest first; returns `[id, deliveries, [field, value, ...]]` for each. A job
/// added less than the visibility ago (by its id, which is Redis's clock at `XADD`) cannot have
/// been idle that long, so only the older part of the pending list is looked at: in the steady
/// state nothing is there and the look ends at once. (`XAUTOCLAIM` from the start would scan up
/// to ten times `max` pending entries on every lease, most of them just leased: 3.3 ms a call,
/// half of Redis's time at 10,000 chambers.)
const RECLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bound = now - tonumber(ARGV[3])
if bound < 0 then return {} end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-',
  string.format('%.0f', bound), ARGV[4])
if #pending == 0 then return {} end
local ids, deliveries = {}, {}
for _, p in ipairs(pending) do
  ids[#ids + 1] = p[1]
  deliveries[p[1]] = p[4] + 1
end
local out = {}
for _, e in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(ids))) do
  if type(e) == 'table' then out[#out + 1] = {e[1], deliveries[e[1]], e[2]} end
end
return out
";

/// Receipts per ack or extend script call (the ack script puts their ids on Lua's stack).
const RECEIPTS_PER_CALL: usize = 1000;

/// Jobs taken over per lease call, at most (the script's `unpack` puts them on Lua's stack).
const RECLAIM_MAX: usize = 1000;

/// ARGV: group, then (id, consumer, deliveries) triples (at most 1,000). Acks those still leased
/// as receipted, each once, with one `XACK` and one `XDEL` for all of them.
const ACK: &str = r"
local ids, seen = {}, {}
for i = 2, #ARGV, 3 do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[i + 1] and p[1][4] == tonumber(ARGV[i + 2]) and not seen[ARGV[i]] then
    seen[ARGV[i]] = true
    ids[#ids + 1] = ARGV[i]
  end
end
if #ids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
return #ids
";

/// ARGV: group, then (id, consumer, deliveries) triples. Resets the idle time of those still
/// leased as receipted.
const EXTEND: &str = r"
local n = 0
for i = 2, #ARGV, 3 do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[i + 1] and p[1][4] == tonumber(ARGV[i + 2]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[i + 1], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
";

/// ARGV: group, id, consumer, deliveries, delay ms. Gives a leased job back for redelivery.
const RELEASE: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if not (p[1] and p[1][2] == ARGV[3] and p[1][4] == tonumber(ARGV[4])) then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if not e[1] then return 0 end
local f = e[1][2]
local j, a = nil, 0
for i = 1, #f, 2 do
  if f[i] == 'j' then j = f[i + 1] elseif f[i] == 'a' then a = tonumber(f[i + 1]) end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local extra = a + tonumber(ARGV[4])
local delay = tonumber(ARGV[5])
if delay <= 0 then
  redis.call('XADD', KEYS[1], '*', 'j', j, 'a', tostring(extra))
else
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + delay, tostring(extra) .. ':' .. ARGV[2] .. ':' .. j)
end
return 1
";

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable {
        message: format!("redis: {e}"),
    }
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

/// One entry read from the stream.
struct Entry {
    id: String,
    payload: Option<Vec<u8>>,
    extra_attempts: u32,
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// The `[field, value, ...]` pairs of an `XINFO` reply item (a map in RESP3).
fn info_fields(item: &Value) -> Vec<(String, Value)> {
    let flat: Vec<Value> = match item {
        Value::Map(pairs) => pairs
            .iter()
            .flat_map(|(k, v)| [k.clone(), v.clone()])
            .collect(),
        other => array(other).to_vec(),
    };
    flat.chunks(2)
        .filter_map(|pair| Some((text(pair.first()?)?, pair.get(1)?.clone())))
        .collect()
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// A delayed set member, `<extra attempts>:<old id>:<payload>`: the old id and the job.
fn delayed_member(member: &[u8]) -> Option<(String, PollJob)> {
    let mut parts = member.splitn(3, |b| *b == b':');
    let _extra = parts.next()?;
    let id = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let job = serde_json::from_slice(parts.next()?).ok()?;
    Some((id, job))
}

/// Identities of delayed jobs carry this prefix (their stream entry is gone).
const DELAYED_ID: &str = "delayed:";

/// `[id, [field, value, ...]]` entries.
fn entries(list: &Value) -> Vec<Entry> {
    array(list)
        .iter()
        .filter_map(|e| {
            let parts = array(e);
            Some(entry(text(parts.first()?)?, parts.get(1)))
        })
        .collect()
}

/// An entry from its id and its `[field, value, ...]`.
fn entry(id: String, fields: Option<&Value>) -> Entry {
    let mut entry = Entry {
        id,
        payload: None,
        extra_attempts: 0,
    };
    for pair in fields.map(array).unwrap_or(&[]).chunks(2) {
        match (pair.first().and_then(text).as_deref(), pair.get(1)) {
            (Some("j"), Some(v)) => entry.payload = bytes(v).map(<[u8]>::to_vec),
            (Some("a"), Some(v)) => {
                entry.extra_attempts = text(v).and_then(|s| s.parse().ok()).unwrap_or(0);
            }
            _ => {}
        }
    }
    entry
}

/// The poll queue on Redis. Cheap to clone; each clone shares the connections.
#[derive(Clone)]
pub struct RedisPollQueue {
    config: RedisConfig,
    conn: ConnectionManager,
    /// Blocking reads use their own connection, kept for reuse between calls.
    blocking: Arc<Mutex<Option<MultiplexedConnection>>>,
    consumer: String,
    stream: String,
    delayed: String,
    dedup_prefix: String,
    enqueue: Arc<redis::Script>,
    promote: Arc<redis::Script>,
    reclaim: Arc<redis::Script>,
    ack: Arc<redis::Script>,
    extend: Arc<redis::Script>,
    release: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisPollQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPollQueue")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl RedisPollQueue {
    /// Connects and makes sure the stream and its consumer group exist. The consumer name is
    /// unique to this process start, so a restarted worker never collides with its past self.
    ///
    /// # Errors
    /// `Unavailable` if Redis cannot be reached.
    pub async fn connect(config: &RedisConfig) -> Result<Self, QueueError> {
        let conn = connection::manager(config).await.map_err(unavailable)?;
        let queue = Self {
            consumer: format!(
                "{}-{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            stream: config.key("q:stream"),
            delayed: config.key("q:delayed"),
            dedup_prefix: config.key("q:dedup:"),
            config: config.clone(),
            conn,
            blocking: Arc::new(Mutex::new(None)),
            enqueue: Arc::new(redis::Script::new(ENQUEUE)),
            promote: Arc::new(redis::Script::new(PROMOTE)),
            reclaim: Arc::new(redis::Script::new(RECLAIM)),
            ack: Arc::new(redis::Script::new(ACK)),
            extend: Arc::new(redis::Script::new(EXTEND)),
            release: Arc::new(redis::Script::new(RELEASE)),
        };
        queue.ensure_group().await?;
        Ok(queue)
    }

    /// This process's consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Creates the consumer group (and the stream) if missing — at start, and again after a
    /// Redis restart without persistence lost them.
    async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP") => {
                Ok(())
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Runs `f`, recreating the group once if Redis lost it.
    async fn with_group<T, F, Fut>(&self, f: F) -> Result<T, QueueError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match f().await {
            Err(e) if is_nogroup(&e) => {
                tracing::warn!(stream = %self.stream, "consumer group missing (Redis restarted?): recreating it");
                self.ensure_group().await?;
                f().await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }

    /// Promotes due released jobs; returns how long until the next one is due.
    async fn promote_due(&self) -> Result<Option<Duration>, QueueError> {
        let mut conn = self.conn.clone();
        let (_, wait_ms): (i64, i64) = self
            .promote
            .key(&self.stream)
            .key(&self.delayed)
            .arg(1000)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(wait_ms).ok().map(Duration::from_millis))
    }

    /// Takes over up to `max` jobs whose lease expired, with their delivery counts.
    async fn reclaim(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<(Entry, u32)>, QueueError> {
        let reply: Value = self
            .with_group(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.reclaim.key(&self.stream);
                invocation
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(u64::try_from(visibility.as_millis()).unwrap_or(u64::MAX))
                    .arg(max.min(RECLAIM_MAX));
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(array(&reply)
            .iter()
            .filter_map(|item| {
                let parts = array(item);
                let id = text(parts.first()?)?;
                let deliveries = int(parts.get(1)?).and_then(|n| u32::try_from(n).ok())?;
                Some((entry(id, parts.get(2)), deliveries))
            })
            .collect())
    }

    /// Reads up to `max` new jobs, blocking up to `block` (zero: no blocking).
    async fn read_new(&self, max: usize, block: Duration) -> Result<Vec<Entry>, QueueError> {
        let read = |mut conn: MultiplexedConnection| async move {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(max);
            if !block.is_zero() {
                cmd.arg("BLOCK")
                    .arg(u64::try_from(block.as_millis()).unwrap_or(1).max(1));
            }
            cmd.arg("STREAMS").arg(&self.stream).arg(">");
            cmd.query_async::<Value>(&mut conn).await
        };
        let reply = if block.is_zero() {
            let conn = self.conn.clone();
            self.with_group(|| {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(max);
                cmd.arg("STREAMS").arg(&self.stream).arg(">");
                let mut conn = conn.clone();
                async move { cmd.query_async::<Value>(&mut conn).await }
            })
            .await?
        } else {
            let mut slot = self.blocking.lock().await;
            let conn = match slot.take() {
                Some(c) => c,
                None => connection::blocking(&self.config, BLOCK_SLICE)
                    .await
                    .map_err(unavailable)?,
            };
            match read(conn.clone()).await {
                Ok(v) => {
                    *slot = Some(conn);
                    v
                }
                Err(e) if is_nogroup(&e) => {
                    *slot = Some(conn);
                    drop(slot);
                    self.ensure_group().await?;
                    return Ok(Vec::new());
                }
                // The connection is dropped; the next call opens a new one.
                Err(e) => return Err(unavailable(e)),
            }
        };
        // [[stream, [entries...]]] or nil on timeout.
        Ok(array(&reply)
            .first()
            .map(|s| entries(array(s).get(1).unwrap_or(&Value::Nil)))
            .unwrap_or_default())
    }

    fn to_leased(
        &self,
        entry: Entry,
        deliveries: u32,
        out: &mut Vec<LeasedJob>,
        bad: &mut Vec<String>,
    ) {
        let job = entry
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_slice::<PollJob>(p).ok());
        match job {
            Some(mut job) => {
                job.meta.attempt = job
                    .meta
                    .attempt
                    .saturating_add(entry.extra_attempts)
                    .saturating_add(deliveries.saturating_sub(1));
                out.push(LeasedJob {
                    job,
                    receipt: LeaseReceipt(format!("{}|{}|{deliveries}", self.consumer, entry.id)),
                });
            }
            None => bad.push(entry.id),
        }
    }

    /// Removes entries that cannot be read (never redelivered forever).
    async fn drop_unreadable(&self, ids: Vec<String>) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        tracing::warn!(stream = %self.stream, count = ids.len(), "removed unreadable poll jobs");
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("XACK")
                .arg(&self.stream)
                .arg(GROUP)
                .arg(id)
                .ignore();
            pipe.cmd("XDEL").arg(&self.stream).arg(id).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }
}

impl RedisPollQueue {
    /// Runs a script taking (id, consumer, deliveries) triples for each receipt, a thousand at
    /// a time, and sums what it returns.
    async fn per_receipt(
        &self,
        script: &redis::Script,
        receipts: &[LeaseReceipt],
    ) -> Result<u64, QueueError> {
        let mut total = 0;
        for chunk in receipts.chunks(RECEIPTS_PER_CALL) {
            let mut invocation = script.key(&self.stream);
            invocation.arg(GROUP);
            let mut any = false;
            for (consumer, id, deliveries) in chunk.iter().filter_map(parse_receipt) {
                invocation.arg(id).arg(consumer).arg(deliveries);
                any = true;
            }
            if !any {
                continue;
            }
            let mut conn = self.conn.clone();
            let n: u64 = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            total += n;
        }
        Ok(total)
    }
}

fn parse_receipt(r: &LeaseReceipt) -> Option<(&str, &str, &str)> {
    let mut parts = r.0.rsplitn(3, '|');
    let deliveries = parts.next()?;
    let id = parts.next()?;
    let consumer = parts.next()?;
    Some((consumer, id, deliveries))
}

#[async_trait]
impl PollQueue for RedisPollQueue {
    async fn enqueue(&self, jobs: &[PollJob]) -> Result<EnqueueReport, QueueError> {
        let mut report = EnqueueReport::default();
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            let mut invocation = self.enqueue.key(&self.stream);
            invocation.arg(&self.dedup_prefix);
            for job in chunk {
                let payload = serde_json::to_vec(job).map_err(|e| QueueError::Corrupt {
                    message: e.to_string(),
                })?;
                invocation
                    .arg(format!(
                        "{}:{}",
                        job.poll.chamber_id.as_uuid().simple(),
                        job.poll.slot.as_unix_millis()
                    ))
                    .arg(u64::try_from(job.dedup_ttl().as_millis()).unwrap_or(u64::MAX))
                    .arg(payload);
            }
            let mut conn = self.conn.clone();
            let new: u64 = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            report.new += new;
            report.duplicates += chunk.len() as u64 - new;
        }
        Ok(report)
    }

    async fn lease(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<LeasedJob>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next_delayed = self.promote_due().await?;
            let mut out = Vec::new();
            let mut bad = Vec::new();
            for (entry, deliveries) in self.reclaim(max, visibility).await? {
                self.to_leased(entry, deliveries, &mut out, &mut bad);
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if out.len() < max {
                // Block only when nothing is at hand, and never past the next delayed job.
                let block = if out.is_empty() {
                    remaining
                        .min(BLOCK_SLICE)
                        .min(next_delayed.unwrap_or(Duration::MAX))
                } else {
                    Duration::ZERO
                };
                for entry in self.read_new(max - out.len(), block).await? {
                    self.to_leased(entry, 1, &mut out, &mut bad);
                }
            }
            self.drop_unreadable(bad).await?;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !out.is_empty() || remaining.is_zero() {
                return Ok(out);
            }
        }
    }

    async fn ack(&self, receipts: &[LeaseReceipt]) -> Result<u64, QueueError> {
        self.per_receipt(&self.ack, receipts).await
    }

    async fn extend(
        &self,
        receipts: &[LeaseReceipt],
        _visibility: Duration,
    ) -> Result<u64, QueueError> {
        // A lease's expiry is the idle time the taking worker asks for (`RECLAIM`), so
        // resetting the idle time extends it by that.
        self.per_receipt(&self.extend, receipts).await
    }

    async fn release(&self, receipt: &LeaseReceipt, delay: Duration) -> Result<(), QueueError> {
        let Some((consumer, id, deliveries)) = parse_receipt(receipt) else {
            return Ok(());
        };
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release
            .key(&self.stream)
            .key(&self.delayed)
            .arg(GROUP)
            .arg(id)
            .arg(consumer)
            .arg(deliveries)
            .arg(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let mut conn = self.conn.clone();
        let (groups, delayed_total, (secs, micros)): (Value, u64, (i64, i64)) = redis::pipe()
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .cmd("ZCARD")
            .arg(&self.delayed)
            .cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let now_ms = secs * 1000 + micros / 1000;
        let due: u64 = redis::cmd("ZCOUNT")
            .arg(&self.delayed)
            .arg("-inf")
            .arg(now_ms)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut depth = QueueDepth {
            delayed: delayed_total - due,
            ..QueueDepth::default()
        };
        let mut last_delivered = String::from("0-0");
        for g in array(&groups) {
            let mut name = None;
            let (mut pending, mut lag) = (0u64, None);
            let mut last = None;
            for (field, v) in info_fields(g) {
                match field.as_str() {
                    "name" => name = text(&v),
                    "pending" => pending = int(&v).unwrap_or(0),
                    "lag" => lag = int(&v),
                    "last-delivered-id" => last = text(&v),
                    _ => {}
                }
            }
            if name.as_deref() == Some(GROUP) {
                depth.leased = pending;
                if let Some(last) = last {
                    last_delivered = last;
                }
                depth.ready = match lag {
                    Some(lag) => lag,
                    None => {
                        let len: u64 = redis::cmd("XLEN")
                            .arg(&self.stream)
                            .query_async(&mut conn)
                            .await
                            .map_err(unavailable)?;
                        len.saturating_sub(pending)
                    }
                };
            }
        }
        depth.ready += due;
        if depth.ready > 0 {
            let next: Value = redis::cmd("XRANGE")
                .arg(&self.stream)
                .arg(format!("({last_delivered}"))
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            depth.oldest_ready_enqueued_at = entries(&next)
                .first()
                .and_then(|e| e.payload.as_deref())
                .and_then(|p| serde_json::from_slice::<PollJob>(p).ok())
                .map(|j| j.meta.enqueued_at);
        }
        Ok(depth)
    }
}

impl RedisPollQueue {
    /// The group's last delivered id: entries after it are ready.
    async fn last_delivered(&self) -> Result<String, QueueError> {
        let mut conn = self.conn.clone();
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async(&mut conn)
            .await
            .or_else(|e| {
                if e.code() == Some("ERR") && e.to_string().contains("no such key") {
                    Ok(Value::Nil)
                } else {
                    Err(e)
                }
            })
            .map_err(unavailable)?;
        Ok(array(&groups)
            .iter()
            .map(info_fields)
            .find(|f| {
                f.iter()
                    .any(|(k, v)| k == "name" && text(v).as_deref() == Some(GROUP))
            })
            .and_then(|f| {
                f.into_iter()
                    .find(|(k, _)| k == "last-delivered-id")
                    .and_then(|(_, v)| text(&v))
            })
            .unwrap_or_else(|| "0-0".into()))
    }

    /// Leased jobs, oldest first: id, consumer, and when the lease began.
    async fn pending(&self, from: &str, to: &str, count: usize) -> Result<Vec<Holder>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: redis::RedisResult<(Value, (i64, i64))> = redis::pipe()
            .cmd("XPENDING")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(from)
            .arg(to)
            .arg(count)
            .cmd("TIME")
            .query_async(&mut conn)
            .await;
        let (reply, (secs, micros)) = match reply {
            Err(e) if is_nogroup(&e) => return Ok(Vec::new()),
            other => other.map_err(unavailable)?,
        };
        let now_ms = secs * 1000 + micros / 1000;
        Ok(array(&reply)
            .iter()
            .filter_map(|p| {
                let p = array(p);
                let idle = p.get(2).and_then(int).and_then(|n| i64::try_from(n).ok())?;
                Some(Holder {
                    id: text(p.first()?)?,
                    consumer: text(p.get(1)?)?,
                    leased_at: Timestamp::from_unix_millis(now_ms - idle),
                })
            })
            .collect())
    }

    /// The stream entries with these ids, as queued jobs (an unreadable one is left out).
    async fn entries_by_id(
        &self,
        ids: Vec<(String, Option<Holder>)>,
        state: QueuedJobState,
    ) -> Result<Vec<QueuedJob>, QueueError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (id, _) in &ids {
            pipe.cmd("XRANGE").arg(&self.stream).arg(id).arg(id);
        }
        let mut conn = self.conn.clone();
        let replies: Vec<Value> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(ids
            .into_iter()
            .zip(replies)
            .filter_map(|((id, holder), reply)| {
                let entry = entries(&reply).into_iter().next()?;
                queued(entry, state, holder).filter(|q| q.id == id)
            })
            .collect())
    }
}

/// A leased job's holder, from the pending list.
struct Holder {
    id: String,
    consumer: String,
    leased_at: Timestamp,
}

/// A stream entry as a queued job; `None` if unreadable.
fn queued(entry: Entry, state: QueuedJobState, holder: Option<Holder>) -> Option<QueuedJob> {
    let mut job: PollJob = serde_json::from_slice(entry.payload.as_deref()?).ok()?;
    job.meta.attempt = job.meta.attempt.saturating_add(entry.extra_attempts);
    Some(QueuedJob {
        id: entry.id,
        job,
        state,
        leased_at: holder.as_ref().map(|h| h.leased_at),
        consumer: holder.map(|h| h.consumer),
    })
}

#[async_trait]
impl QueueInspector for RedisPollQueue {
    async fn consumers(&self, within: Duration) -> Result<Vec<QueueConsumer>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: redis::RedisResult<Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.stream)
            .arg(GROUP)
            .query_async(&mut conn)
            .await;
        let reply = match reply {
            Err(e) if is_nogroup(&e) || e.to_string().contains("no such key") => {
                return Ok(Vec::new());
            }
            other => other.map_err(unavailable)?,
        };
        let mut consumers: Vec<QueueConsumer> = array(&reply)
            .iter()
            .filter_map(|c| {
                let fields = info_fields(c);
                let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
                Some(QueueConsumer {
                    name: text(get("name")?)?,
                    leased: get("pending").and_then(int).unwrap_or(0),
                    idle: Duration::from_millis(get("idle").and_then(int).unwrap_or(0)),
                })
            })
            .filter(|c| c.idle <= within || c.leased > 0)
            .collect();
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(consumers)
    }

    async fn jobs(
        &self,
        state: QueuedJobState,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<QueuedJob>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let upto = offset.saturating_add(limit);
        match state {
            QueuedJobState::Ready => {
                let last = self.last_delivered().await?;
                let mut conn = self.conn.clone();
                let reply: Value = redis::cmd("XRANGE")
                    .arg(&self.stream)
                    .arg(format!("({last}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(upto)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Ok(entries(&reply)
                    .into_iter()
                    .skip(offset)
                    .filter_map(|e| queued(e, QueuedJobState::Ready, None))
                    .collect())
            }
            QueuedJobState::Leased => {
                let ids: Vec<(String, Option<Holder>)> = self
                    .pending("-", "+", upto)
                    .await?
                    .into_iter()
                    .skip(offset)
                    .map(|holder| (holder.id.clone(), Some(holder)))
                    .collect();
                self.entries_by_id(ids, QueuedJobState::Leased).await
            }
            QueuedJobState::Delayed => {
                let mut conn = self.conn.clone();
                let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                    .arg(&self.delayed)
                    .arg(offset)
                    .arg(upto - 1)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Ok(members
                    .iter()
                    .filter_map(|m| delayed_member(m))
                    .map(|(id, job)| QueuedJob {
                        id: format!("{DELAYED_ID}{id}"),
                        job,
                        state: QueuedJobState::Delayed,
                        consumer: None,
                        leased_at: None,
                    })
                    .collect())
            }
        }
    }

    async fn job(&self, id: &str) -> Result<Option<QueuedJob>, QueueError> {
        if let Some(old) = id.strip_prefix(DELAYED_ID) {
            let mut conn = self.conn.clone();
            let mut cursor = 0u64;
            loop {
                let (next, found): (u64, Vec<Vec<u8>>) = redis::cmd("ZSCAN")
                    .arg(&self.delayed)
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("*:{old}:*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                // ZSCAN answers member, score pairs.
                if let Some((_, job)) = found
                    .chunks(2)
                    .filter_map(|pair| delayed_member(pair.first()?))
                    .find(|(found, _)| found == old)
                {
                    return Ok(Some(QueuedJob {
                        id: id.to_owned(),
                        job,
                        state: QueuedJobState::Delayed,
                        consumer: None,
                        leased_at: None,
                    }));
                }
                if next == 0 {
                    return Ok(None);
                }
                cursor = next;
            }
        }
        // Only a stream id is looked up (a malformed one would be a Redis error).
        let valid = id.split_once('-').is_some_and(|(ms, seq)| {
            !ms.is_empty()
                && !seq.is_empty()
                && ms.bytes().all(|b| b.is_ascii_digit())
                && seq.bytes().all(|b| b.is_ascii_digit())
        });
        if !valid {
            return Ok(None);
        }
        let holder = self.pending(id, id, 1).await?.into_iter().next();
        let state = if holder.is_some() {
            QueuedJobState::Leased
        } else {
            QueuedJobState::Ready
        };
        Ok(self
            .entries_by_id(vec![(id.to_owned(), holder)], state)
            .await?
            .into_iter()
            .next())
    }
}
