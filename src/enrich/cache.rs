//! The result cache across statements: results of inference calls kept by (function, endpoint
//! or language, exact input) for `inference_cache_ttl`. Statements that repeat inputs
//! (dashboards, retries, backfills run twice) then call the service only for what is new.
//!
//! Two tiers, each optional: in process (`inference_cache_bytes`, least recently used first out
//! when the byte budget is full), then in Redis (`inference_cache_redis`, shared by a fleet of
//! sidecars, see [`super::fleet`]); a result found in Redis is kept in process too.
//!
//! Only successful results are kept. An in-process entry's weight is its key and value bytes
//! plus a fixed overhead; an entry heavier than a sixteenth of the budget is not kept. Redis
//! keys are SHA-256 digests of the exact input (no input text in key names, and no input one
//! client can craft to collide with another's).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use sha2::{Digest, Sha256};

use super::{share, CallError, CallStats, InvokeInput, ModelInput, SentimentInput};
use crate::backends::{Sentiment, SentimentLabel};

/// Bytes an entry costs beyond its strings (map slot, list links, allocation headers).
const ENTRY_OVERHEAD: usize = 96;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Sentiment {
        language: String,
        text: String,
    },
    Invoke {
        endpoint: String,
        fields: Vec<Option<String>>,
    },
    Model {
        model_id: String,
        content_type: String,
        accept: Option<String>,
        body: String,
    },
}

impl Key {
    /// The Redis name of the key: SHA-256 over a length-prefixed encoding of every part, with a
    /// version byte (a change of encoding or of results' meaning starts a new key space).
    fn digest(&self) -> [u8; 32] {
        fn part(hash: &mut Sha256, bytes: &[u8]) {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        }
        let mut hash = Sha256::new();
        hash.update([1u8]);
        match self {
            Key::Sentiment { language, text } => {
                hash.update(b"s");
                part(&mut hash, language.as_bytes());
                part(&mut hash, text.as_bytes());
            }
            Key::Invoke { endpoint, fields } => {
                hash.update(b"i");
                part(&mut hash, endpoint.as_bytes());
                hash.update((fields.len() as u64).to_le_bytes());
                for field in fields {
                    match field {
                        None => hash.update([0u8]),
                        Some(text) => {
                            hash.update([1u8]);
                            part(&mut hash, text.as_bytes());
                        }
                    }
                }
            }
            Key::Model {
                model_id,
                content_type,
                accept,
                body,
            } => {
                hash.update(b"m");
                part(&mut hash, model_id.as_bytes());
                part(&mut hash, content_type.as_bytes());
                match accept {
                    None => hash.update([0u8]),
                    Some(accept) => {
                        hash.update([1u8]);
                        part(&mut hash, accept.as_bytes());
                    }
                }
                part(&mut hash, body.as_bytes());
            }
        }
        hash.finalize().into()
    }

    fn weight(&self) -> usize {
        match self {
            Key::Sentiment { language, text } => language.len() + text.len(),
            Key::Invoke { endpoint, fields } => {
                endpoint.len()
                    + fields
                        .iter()
                        .map(|f| 24 + f.as_ref().map_or(0, String::len))
                        .sum::<usize>()
            }
            Key::Model {
                model_id,
                content_type,
                accept,
                body,
            } => {
                model_id.len()
                    + content_type.len()
                    + accept.as_ref().map_or(0, String::len)
                    + body.len()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Sentiment(Sentiment),
    Text(String),
}

const LABELS: [SentimentLabel; 4] = [
    SentimentLabel::Positive,
    SentimentLabel::Negative,
    SentimentLabel::Neutral,
    SentimentLabel::Mixed,
];

impl Value {
    /// Redis's copy: `s`, the label's index and the score (f32, little-endian); or `t` and the
    /// record.
    fn encode(&self) -> Vec<u8> {
        match self {
            Value::Sentiment(s) => {
                let label = LABELS.iter().position(|l| *l == s.label).unwrap_or(0) as u8;
                let mut bytes = vec![b's', label];
                bytes.extend_from_slice(&s.confidence.to_le_bytes());
                bytes
            }
            Value::Text(text) => [b"t", text.as_bytes()].concat(),
        }
    }

    /// None for anything [`Value::encode`] does not write (treated as a miss).
    fn decode(bytes: &[u8]) -> Option<Value> {
        match bytes {
            [b's', label, score @ ..] => Some(Value::Sentiment(Sentiment {
                label: *LABELS.get(usize::from(*label))?,
                confidence: f32::from_le_bytes(score.try_into().ok()?),
            })),
            [b't', text @ ..] => Some(Value::Text(String::from_utf8(text.to_vec()).ok()?)),
            _ => None,
        }
    }
}

struct Entry {
    value: Value,
    stored: Instant,
    weight: usize,
}

struct Inner {
    entries: LruCache<Key, Entry>,
    bytes: usize,
}

pub struct ResultCache {
    inner: Mutex<Inner>,
    budget: usize,
    ttl: Duration,
}

impl ResultCache {
    pub fn new(budget: usize, ttl: Duration) -> ResultCache {
        ResultCache {
            inner: Mutex::new(Inner {
                // Bounded by bytes (below), not by a count of entries.
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
            budget,
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every change is one call).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &Key, now: Instant) -> Option<Value> {
        let mut inner = self.lock();
        let fresh = match inner.entries.get(key) {
            None => return None,
            Some(entry) => now.duration_since(entry.stored) < self.ttl,
        };
        if fresh {
            return inner.entries.get(key).map(|e| e.value.clone());
        }
        if let Some(stale) = inner.entries.pop(key) {
            inner.bytes -= stale.weight;
        }
        None
    }

    fn put(&self, key: Key, value: Value, now: Instant) {
        let weight = ENTRY_OVERHEAD
            + key.weight()
            + match &value {
                Value::Sentiment(_) => 16,
                Value::Text(text) => text.len(),
            };
        if weight > self.budget / 16 {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.entries.put(
            key,
            Entry {
                value,
                stored: now,
                weight,
            },
        ) {
            inner.bytes -= old.weight;
        }
        inner.bytes += weight;
        while inner.bytes > self.budget {
            match inner.entries.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.weight,
                None => break,
            }
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// An ML function's input as the cache sees it.
trait Cached: Clone {
    type Output: Clone;
    /// None for inputs answered without a call (NULL or empty): nothing to keep.
    fn key(&self) -> Option<Key>;
    fn value(output: &Self::Output) -> Value;
    fn output(value: Value) -> Option<Self::Output>;
}

impl Cached for SentimentInput {
    type Output = Sentiment;

    fn key(&self) -> Option<Key> {
        match (&self.text, &self.language) {
            (Some(text), Some(language)) if !text.is_empty() => Some(Key::Sentiment {
                language: language.clone(),
                text: text.clone(),
            }),
            _ => None,
        }
    }

    fn value(output: &Sentiment) -> Value {
        Value::Sentiment(*output)
    }

    fn output(value: Value) -> Option<Sentiment> {
        match value {
            Value::Sentiment(s) => Some(s),
            Value::Text(_) => None,
        }
    }
}

impl Cached for InvokeInput {
    type Output = String;

    fn key(&self) -> Option<Key> {
        Some(Key::Invoke {
            endpoint: self.endpoint.clone()?,
            fields: self.fields.clone(),
        })
    }

    fn value(output: &String) -> Value {
        Value::Text(output.clone())
    }

    fn output(value: Value) -> Option<String> {
        match value {
            Value::Text(t) => Some(t),
            Value::Sentiment(_) => None,
        }
    }
}

impl Cached for ModelInput {
    type Output = String;

    fn key(&self) -> Option<Key> {
        Some(Key::Model {
            model_id: self.model_id.clone()?,
            content_type: self.content_type.clone()?,
            accept: self.accept.clone(),
            body: self.body.clone()?,
        })
    }

    fn value(output: &String) -> Value {
        Value::Text(output.clone())
    }

    fn output(value: Value) -> Option<String> {
        match value {
            Value::Text(t) => Some(t),
            Value::Sentiment(_) => None,
        }
    }
}

/// How the executor consults the caches: inputs with a fresh result in process, then in Redis,
/// are answered from there; the rest go through the service calls and their results are kept
/// in both.
impl super::Executor {
    fn caching(&self) -> bool {
        self.cache.is_some() || self.fleet.as_ref().is_some_and(|f| f.caches())
    }

    /// Sentiment for each input, in order (NULL for NULL or empty text or NULL language).
    pub async fn detect_sentiment(
        &self,
        inputs: &[SentimentInput],
        claim: &Arc<share::Claim>,
        stats: &mut CallStats,
    ) -> Result<Vec<Option<Sentiment>>, CallError> {
        if !self.caching() {
            return self.detect_sentiment_calls(inputs, claim, stats).await;
        }
        self.through_caches(inputs, |fresh| async move {
            self.detect_sentiment_calls(&fresh, claim, stats).await
        })
        .await
    }

    /// The endpoint's output record for each input, in order.
    pub async fn invoke_endpoint(
        &self,
        inputs: &[InvokeInput],
        claim: &Arc<share::Claim>,
        stats: &mut CallStats,
    ) -> Result<Vec<Option<String>>, CallError> {
        if !self.caching() {
            return self.invoke_endpoint_calls(inputs, claim, stats).await;
        }
        self.through_caches(inputs, |fresh| async move {
            self.invoke_endpoint_calls(&fresh, claim, stats).await
        })
        .await
    }

    /// A model's response body for each input, in order (NULL for a NULL `model_input`).
    pub async fn invoke_model(
        &self,
        inputs: &[ModelInput],
        claim: &Arc<share::Claim>,
        stats: &mut CallStats,
    ) -> Result<Vec<Option<String>>, CallError> {
        if !self.caching() {
            return self.invoke_model_calls(inputs, claim, stats).await;
        }
        self.through_caches(inputs, |fresh| async move {
            self.invoke_model_calls(&fresh, claim, stats).await
        })
        .await
    }

    async fn through_caches<I, F, Fut>(
        &self,
        inputs: &[I],
        calls: F,
    ) -> Result<Vec<Option<I::Output>>, CallError>
    where
        I: Cached,
        F: FnOnce(Vec<I>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Option<I::Output>>, CallError>>,
    {
        let now = Instant::now();
        let keys: Vec<Option<Key>> = inputs.iter().map(Cached::key).collect();
        let mut results: Vec<Option<I::Output>> = vec![None; inputs.len()];
        if let Some(cache) = &self.cache {
            let (mut hits, mut misses) = (0, 0);
            for (result, key) in results.iter_mut().zip(&keys) {
                let Some(key) = key else { continue };
                *result = cache.get(key, now).and_then(I::output);
                match result {
                    Some(_) => hits += 1,
                    None => misses += 1,
                }
            }
            crate::metrics::cache_lookups("memory", hits, misses);
        }
        let fleet = self.fleet.as_ref().filter(|f| f.caches());
        if let Some(fleet) = fleet {
            let asked: Vec<usize> = (0..inputs.len())
                .filter(|&row| results[row].is_none() && keys[row].is_some())
                .collect();
            let digests: Vec<[u8; 32]> = asked
                .iter()
                .filter_map(|&row| keys[row].as_ref().map(Key::digest))
                .collect();
            let found = fleet.get_many(&digests).await;
            let mut hits = 0;
            for (&row, bytes) in asked.iter().zip(found) {
                let Some(value) = bytes.as_deref().and_then(Value::decode) else {
                    continue;
                };
                if let (Some(cache), Some(key)) = (&self.cache, &keys[row]) {
                    cache.put(key.clone(), value.clone(), now);
                }
                results[row] = I::output(value);
                hits += u64::from(results[row].is_some());
            }
            crate::metrics::cache_lookups("redis", hits, asked.len() as u64 - hits);
        }
        let rest: Vec<usize> = (0..inputs.len())
            .filter(|&row| results[row].is_none())
            .collect();
        let fresh: Vec<I> = rest.iter().map(|&row| inputs[row].clone()).collect();
        let answers = calls(fresh).await?;
        let mut shared = Vec::new();
        for (&row, answer) in rest.iter().zip(answers) {
            if let (Some(output), Some(key)) = (&answer, &keys[row]) {
                let value = I::value(output);
                if fleet.is_some() {
                    shared.push((key.digest(), value.encode()));
                }
                if let Some(cache) = &self.cache {
                    cache.put(key.clone(), value, now);
                }
            }
            results[row] = answer;
        }
        if let Some(fleet) = fleet {
            fleet.put_many(shared);
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Key {
        Key::Invoke {
            endpoint: "e".into(),
            fields: vec![Some(format!("{i:04}"))],
        }
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = ResultCache::new(1 << 20, Duration::from_secs(60));
        let t0 = Instant::now();
        cache.put(key(1), Value::Text("a".into()), t0);
        assert!(cache.get(&key(1), t0 + Duration::from_secs(59)).is_some());
        assert!(cache.get(&key(1), t0 + Duration::from_secs(60)).is_none());
        assert_eq!(cache.bytes(), 0, "a stale entry is dropped when met");
    }

    #[test]
    fn the_byte_budget_evicts_the_least_recently_used() {
        let cache = ResultCache::new(16 * 200, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..100 {
            cache.put(key(i), Value::Text("r".into()), now);
            // Key 0 stays in use.
            assert!(cache.get(&key(0), now).is_some(), "after {i}");
        }
        assert!(cache.bytes() <= 16 * 200);
        assert!(cache.get(&key(99), now).is_some());
        assert!(cache.get(&key(1), now).is_none(), "evicted");
        // Too heavy for the budget: not kept at all.
        cache.put(key(1000), Value::Text("x".repeat(300)), now);
        assert!(cache.get(&key(1000), now).is_none());
    }

    #[test]
    fn sentiments_and_records_are_kept_apart() {
        let cache = ResultCache::new(1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        let record = |endpoint: &str, field: Option<&str>| Key::Invoke {
            endpoint: endpoint.into(),
            fields: vec![field.map(str::to_owned)],
        };
        cache.put(record("e", Some("good")), Value::Text("0.9".into()), now);
        assert_eq!(
            cache.get(&record("e", Some("good")), now),
            Some(Value::Text("0.9".into()))
        );
        let sentiment = Key::Sentiment {
            language: "e".into(),
            text: "good".into(),
        };
        assert!(cache.get(&sentiment, now).is_none());
        assert!(cache.get(&record("f", Some("good")), now).is_none());
        assert!(cache.get(&record("e", None), now).is_none());
    }

    #[test]
    fn redis_values_round_trip_and_anything_else_is_a_miss() {
        for value in [
            Value::Text(String::new()),
            Value::Text("0.25,ü".into()),
            Value::Sentiment(Sentiment {
                label: SentimentLabel::Mixed,
                confidence: 0.125,
            }),
        ] {
            assert_eq!(Value::decode(&value.encode()), Some(value));
        }
        for junk in [
            &b""[..],
            b"x",
            b"s",
            b"s\x04\0\0\0\0",
            b"s\x00\0\0",
            b"t\xff",
        ] {
            assert_eq!(Value::decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn digests_tell_every_part_apart() {
        let invoke = |endpoint: &str, fields: &[Option<&str>]| Key::Invoke {
            endpoint: endpoint.into(),
            fields: fields.iter().map(|f| f.map(str::to_owned)).collect(),
        };
        let keys = [
            invoke("ab", &[Some("c")]),
            invoke("a", &[Some("bc")]),
            invoke("a", &[Some("b"), Some("c")]),
            invoke("a", &[Some("b"), None]),
            invoke("a", &[Some("b"), Some("")]),
            invoke("a", &[Some("b")]),
            Key::Sentiment {
                language: "a".into(),
                text: "b".into(),
            },
        ];
        let digests: std::collections::HashSet<[u8; 32]> = keys.iter().map(Key::digest).collect();
        assert_eq!(digests.len(), keys.len());
        assert_eq!(keys[0].digest(), invoke("ab", &[Some("c")]).digest());
    }
}
