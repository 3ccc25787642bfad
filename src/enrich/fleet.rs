//! What a fleet of sidecars shares through Redis (`redis_url`): the result cache
//! (`inference_cache_redis`) and a limit of inference calls in flight per endpoint or language
//! over all of them (`fleet_max_calls_per_endpoint`).
//!
//! Redis is a help, never a dependency of a statement: every operation has `redis_timeout`, and
//! an operation that fails or times out counts as a cache miss (the call is made) or, for the
//! call limit, lets the call go on under the sidecar's own limits. Failures are counted
//! (`pgenrich_redis_errors_total`) and logged at most every 10 seconds.
//!
//! The call limit is a counting semaphore of leases: a sorted set per endpoint whose members are
//! the calls holding a slot, scored by when their lease ends (Redis's clock, so that sidecars'
//! clocks do not matter). A call takes a slot with one script (drop ended leases, count, add),
//! renews its lease while it runs and removes it when it ends; the slots of a sidecar that died
//! come free when their leases end ([`LEASE`]). A call that finds no free slot retries after a
//! short, growing pause (up to [`MAX_PAUSE`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::task::AbortOnDropHandle;

/// How long a slot stays taken without renewal (a sidecar that died frees its slots after it).
pub const LEASE: Duration = Duration::from_secs(10);
/// Longest pause between two attempts to take a slot.
pub const MAX_PAUSE: Duration = Duration::from_millis(50);
/// Failures are logged at most this often (each is counted).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Settings of the shared Redis (Debug leaves the URL out).
#[derive(Clone)]
pub struct FleetConfig {
    /// `redis://` or `rediss://` (TLS) URL; may hold a password, so it is never logged.
    pub url: String,
    /// Prefix of every key pgenrich writes.
    pub key_prefix: String,
    /// Longest wait for one Redis operation.
    pub timeout: Duration,
    /// Keep inference results in Redis, for `cache_ttl`.
    pub cache: bool,
    pub cache_ttl: Duration,
    /// Calls in flight per endpoint or language over the fleet; None: no such limit.
    pub max_calls_per_target: Option<usize>,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("url", &"…")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("cache", &self.cache)
            .field("cache_ttl", &self.cache_ttl)
            .field("max_calls_per_target", &self.max_calls_per_target)
            .finish()
    }
}

/// Takes a slot: KEYS[1] the endpoint's set; ARGV limit, lease (ms), token. 1 taken, 0 full.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
  return 1
end
return 0
";

/// Renews a slot's lease: KEYS[1] the set; ARGV lease (ms), token. 0 when the slot was lost.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2]) == 1 then
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
  return 1
end
return 0
";

pub struct Fleet {
    config: FleetConfig,
    client: redis::Client,
    /// Connected on first use (on the runtime that uses it), reconnecting after failures.
    connection: OnceLock<Option<ConnectionManager>>,
    take: redis::Script,
    renew: redis::Script,
    /// This process's part of slot tokens, and the next call's number.
    process: String,
    next_token: AtomicU64,
    /// When a failure was last logged (ms since `started`).
    started: Instant,
    last_logged: AtomicU64,
}

/// Checks a `redis_url` (the reason never repeats it: it may hold a password).
pub fn check_url(url: &str) -> Result<(), String> {
    client(url).map(drop)
}

fn client(url: &str) -> Result<redis::Client, String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err("expected redis://[user:password@]host[:port][/db] or rediss://… (TLS)".into());
    }
    redis::Client::open(url).map_err(|e| format!("not a Redis URL ({:?})", e.kind()))
}

impl Fleet {
    /// Checks the URL (without connecting: Redis may come up later).
    pub fn new(config: FleetConfig) -> Result<Arc<Fleet>, String> {
        let client = client(&config.url)?;
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).map_err(|e| format!("no randomness: {e}"))?;
        Ok(Arc::new(Fleet {
            client,
            connection: OnceLock::new(),
            take: redis::Script::new(TAKE),
            renew: redis::Script::new(RENEW),
            process: random.iter().map(|b| format!("{b:02x}")).collect(),
            next_token: AtomicU64::new(0),
            started: Instant::now(),
            last_logged: AtomicU64::new(0),
            config,
        }))
    }

    pub fn caches(&self) -> bool {
        self.config.cache
    }

    pub fn limits_calls(&self) -> bool {
        self.config.max_calls_per_target.is_some()
    }

    fn connection(&self) -> Option<ConnectionManager> {
        self.connection
            .get_or_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.config.timeout))
                    .set_response_timeout(Some(self.config.timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
                    Ok(manager) => Some(manager),
                    Err(error) => {
                        self.failed("connect", &error);
                        None
                    }
                }
            })
            .clone()
    }

    /// Runs one Redis operation within `redis_timeout`; None when it failed (counted, logged).
    async fn run<T, F>(
        &self,
        op: &'static str,
        work: impl FnOnce(ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection()?;
        match tokio::time::timeout(self.config.timeout, work(connection)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.failed(op, &error);
                None
            }
            Err(_) => {
                self.failed(op, &"timed out (redis_timeout)");
                None
            }
        }
    }

    fn failed(&self, op: &'static str, error: &dyn std::fmt::Display) {
        crate::metrics::redis_error(op);
        let now = self.started.elapsed().as_millis() as u64 + LOG_EVERY.as_millis() as u64;
        let last = self.last_logged.load(Ordering::Relaxed);
        if now >= last + LOG_EVERY.as_millis() as u64
            && self
                .last_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(op, %error, "Redis operation failed; going on without it");
        }
    }

    fn key(&self, kind: &str, name: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.config.key_prefix.len() + kind.len() + name.len());
        key.extend_from_slice(self.config.key_prefix.as_bytes());
        key.extend_from_slice(kind.as_bytes());
        key.extend_from_slice(name);
        key
    }

    /// The cached values of `names` (results' digests), in order; all None when Redis failed.
    pub async fn get_many(&self, names: &[[u8; 32]]) -> Vec<Option<Vec<u8>>> {
        if names.is_empty() {
            return Vec::new();
        }
        let keys: Vec<Vec<u8>> = names.iter().map(|n| self.key("r:", n)).collect();
        let found = self
            .run("cache_get", |mut c| async move {
                redis::cmd("MGET")
                    .arg(&keys)
                    .query_async::<Vec<Option<Vec<u8>>>>(&mut c)
                    .await
            })
            .await;
        match found {
            Some(values) if values.len() == names.len() => values,
            _ => vec![None; names.len()],
        }
    }

    /// Stores results for `cache_ttl`, in the background (the statement does not wait).
    pub fn put_many(self: &Arc<Self>, entries: Vec<([u8; 32], Vec<u8>)>) {
        if entries.is_empty() {
            return;
        }
        let fleet = Arc::clone(self);
        tokio::spawn(async move {
            let ttl = fleet.config.cache_ttl.as_millis().max(1) as u64;
            let mut pipe = redis::pipe();
            for (name, value) in &entries {
                pipe.cmd("SET")
                    .arg(fleet.key("r:", name))
                    .arg(value)
                    .arg("PX")
                    .arg(ttl)
                    .ignore();
            }
            fleet
                .run("cache_put", |mut c| async move {
                    pipe.query_async::<()>(&mut c).await
                })
                .await;
        });
    }

    /// A slot among the fleet's `fleet_max_calls_per_endpoint` for a call to `target`, waiting
    /// while all are taken. None when there is no such limit or Redis failed (the call then goes
    /// on under this sidecar's limits alone).
    pub async fn slot(self: &Arc<Self>, target: &str) -> Option<FleetSlot> {
        let limit = self.config.max_calls_per_target?;
        let key = self.key("slots:", target.as_bytes());
        let token = format!(
            "{}:{}",
            self.process,
            self.next_token.fetch_add(1, Ordering::Relaxed)
        );
        let lease = LEASE.as_millis() as u64;
        // From here the slot may exist in Redis: dropping the guard (also while this future is
        // dropped) removes it.
        let mut slot = FleetSlot {
            fleet: Arc::clone(self),
            key,
            token,
            renewal: None,
        };
        let started = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let taken = self
                .run("slot_take", |mut c| {
                    let mut invocation = self.take.key(&slot.key);
                    invocation.arg(limit).arg(lease).arg(&slot.token);
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                })
                .await?;
            if taken == 1 {
                break;
            }
            crate::metrics::fleet_waited();
            tokio::time::sleep(jitter(pause)).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
        crate::metrics::fleet_wait(started.elapsed());
        let fleet = Arc::clone(self);
        let (key, token) = (slot.key.clone(), slot.token.clone());
        slot.renewal = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let mut every = tokio::time::interval(LEASE / 3);
            every.tick().await;
            loop {
                every.tick().await;
                let renewed = fleet
                    .run("slot_renew", |mut c| {
                        let mut invocation = fleet.renew.key(&key);
                        invocation.arg(lease).arg(&token);
                        async move { invocation.invoke_async::<i64>(&mut c).await }
                    })
                    .await;
                if renewed == Some(0) {
                    tracing::debug!("fleet slot's lease ended before the call did");
                }
            }
        })));
        Some(slot)
    }
}

/// `pause` ± a quarter, so that waiting sidecars do not retry in step.
fn jitter(pause: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    let quarter = pause / 4;
    pause - quarter + quarter * 2 * u32::from(byte[0]) / 255
}

/// A call's slot in the fleet's limit, held until the call ends.
pub struct FleetSlot {
    fleet: Arc<Fleet>,
    key: Vec<u8>,
    token: String,
    renewal: Option<AbortOnDropHandle<()>>,
}

impl Drop for FleetSlot {
    fn drop(&mut self) {
        self.renewal.take();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the lease ends on its own
        };
        let fleet = Arc::clone(&self.fleet);
        let (key, token) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
        runtime.spawn(async move {
            fleet
                .run("slot_release", |mut c| async move {
                    redis::cmd("ZREM")
                        .arg(key)
                        .arg(token)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await;
        });
    }
}
