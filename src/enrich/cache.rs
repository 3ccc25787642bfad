//! The result cache across statements (`inference_cache_bytes`, off by default): results of
//! inference calls kept by (function, endpoint or language, exact input) for `inference_cache_ttl`,
//! least recently used first out when the byte budget is full. Statements that repeat inputs
//! (dashboards, retries, backfills run twice) then call the service only for what is new.
//!
//! Only successful results are kept. An entry's weight is its key and value bytes plus a fixed
//! overhead; an entry heavier than a sixteenth of the budget is not kept.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use std::sync::Arc;

use super::{share, CallError, CallStats, InvokeInput, SentimentInput};
use crate::backends::Sentiment;

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
}

impl Key {
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
        }
    }
}

#[derive(Debug, Clone)]
enum Value {
    Sentiment(Sentiment),
    Text(String),
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

    pub fn sentiment(&self, language: &str, text: &str) -> Option<Sentiment> {
        let key = Key::Sentiment {
            language: language.to_owned(),
            text: text.to_owned(),
        };
        match self.get(&key, Instant::now()) {
            Some(Value::Sentiment(s)) => Some(s),
            _ => None,
        }
    }

    pub fn keep_sentiment(&self, language: &str, text: &str, sentiment: Sentiment) {
        let key = Key::Sentiment {
            language: language.to_owned(),
            text: text.to_owned(),
        };
        self.put(key, Value::Sentiment(sentiment), Instant::now());
    }

    pub fn record(&self, endpoint: &str, fields: &[Option<String>]) -> Option<String> {
        let key = Key::Invoke {
            endpoint: endpoint.to_owned(),
            fields: fields.to_vec(),
        };
        match self.get(&key, Instant::now()) {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        }
    }

    pub fn keep_record(&self, endpoint: &str, fields: &[Option<String>], record: String) {
        let key = Key::Invoke {
            endpoint: endpoint.to_owned(),
            fields: fields.to_vec(),
        };
        self.put(key, Value::Text(record), Instant::now());
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// How the executor consults the cache: inputs with a fresh result are answered from it, the
/// rest go through the service calls and their results are kept.
impl super::Executor {
    /// Sentiment for each input, in order (NULL for NULL or empty text or NULL language).
    pub async fn detect_sentiment(
        &self,
        inputs: &[SentimentInput],
        claim: &Arc<share::Claim>,
        stats: &mut CallStats,
    ) -> Result<Vec<Option<Sentiment>>, CallError> {
        let Some(cache) = &self.cache else {
            return self.detect_sentiment_calls(inputs, claim, stats).await;
        };
        let cached = |input: &SentimentInput| match (&input.text, &input.language) {
            (Some(text), Some(language)) if !text.is_empty() => cache.sentiment(language, text),
            _ => None,
        };
        let (mut results, rest) = split_cached(inputs, cached);
        let fresh: Vec<SentimentInput> = rest.iter().map(|&i| inputs[i].clone()).collect();
        let answers = self.detect_sentiment_calls(&fresh, claim, stats).await?;
        for ((&row, input), answer) in rest.iter().zip(&fresh).zip(answers) {
            if let (Some(sentiment), Some(text), Some(language)) =
                (&answer, &input.text, &input.language)
            {
                cache.keep_sentiment(language, text, *sentiment);
            }
            results[row] = answer;
        }
        Ok(results)
    }

    /// The endpoint's output record for each input, in order.
    pub async fn invoke_endpoint(
        &self,
        inputs: &[InvokeInput],
        claim: &Arc<share::Claim>,
        stats: &mut CallStats,
    ) -> Result<Vec<Option<String>>, CallError> {
        let Some(cache) = &self.cache else {
            return self.invoke_endpoint_calls(inputs, claim, stats).await;
        };
        let cached = |input: &InvokeInput| {
            let endpoint = input.endpoint.as_deref()?;
            cache.record(endpoint, &input.fields)
        };
        let (mut results, rest) = split_cached(inputs, cached);
        let fresh: Vec<InvokeInput> = rest.iter().map(|&i| inputs[i].clone()).collect();
        let answers = self.invoke_endpoint_calls(&fresh, claim, stats).await?;
        for ((&row, input), answer) in rest.iter().zip(&fresh).zip(answers) {
            if let (Some(record), Some(endpoint)) = (&answer, &input.endpoint) {
                cache.keep_record(endpoint, &input.fields, record.clone());
            }
            results[row] = answer;
        }
        Ok(results)
    }
}

/// The cached results of `inputs` (None where there is none) and the rows still to call for;
/// counts hits and misses.
fn split_cached<I, O>(
    inputs: &[I],
    cached: impl Fn(&I) -> Option<O>,
) -> (Vec<Option<O>>, Vec<usize>) {
    let mut results = Vec::with_capacity(inputs.len());
    let mut rest = Vec::new();
    for (row, input) in inputs.iter().enumerate() {
        let hit = cached(input);
        if hit.is_none() {
            rest.push(row);
        }
        results.push(hit);
    }
    crate::metrics::cache_lookups((inputs.len() - rest.len()) as u64, rest.len() as u64);
    (results, rest)
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
        cache.keep_record("e", &[Some("good".into())], "0.9".into());
        assert_eq!(
            cache.record("e", &[Some("good".into())]).as_deref(),
            Some("0.9")
        );
        assert!(cache.sentiment("e", "good").is_none());
        assert!(cache.record("f", &[Some("good".into())]).is_none());
        assert!(cache.record("e", &[None]).is_none());
    }
}
