//! What the run counts: named counters (operations, errors by SQLSTATE, kills, ML row checks),
//! the ledger of inserted keys and the probe latencies; and the `key=value` summary.
//!
//! Counter names: `ops.<role>.<operation>.<ok|failed|killed>`, `error.<role>.<class>` and
//! `connect_error.<role>.<class>` (class: a SQLSTATE, or `closed`, `io`, `timeout`, … for
//! errors without one, see [`crate::conn::classify`]), `kill.<role>.<point>`, `ml.<check>`,
//! `rows.<fate>` (from [`crate::tables::verify`]), `reconnects.<role>`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A key's fate as far as the client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// In a transaction that has not ended yet (or whose session was abandoned at the end).
    Pending,
    /// COMMIT was acknowledged: the row must be in the table, once.
    Committed,
    /// COMMIT was never sent (rolled back, failed, or killed before it): the row must be absent.
    Aborted,
    /// COMMIT was sent and its answer lost: present once or absent, never twice.
    InDoubt,
}

#[derive(Default)]
pub struct Stats {
    counters: Mutex<BTreeMap<String, u64>>,
    ledger: Mutex<HashMap<i64, KeyState>>,
    /// (Unix time in ms at completion, latency in µs) of every successful probe.
    probes: Mutex<Vec<(u64, u32)>>,
    last_key: AtomicI64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Stats {
    pub fn add(&self, name: &str, n: u64) {
        if n > 0 {
            *lock(&self.counters).entry(name.to_owned()).or_default() += n;
        }
    }

    pub fn set(&self, name: &str, value: u64) {
        lock(&self.counters).insert(name.to_owned(), value);
    }

    pub fn inc(&self, name: &str) {
        self.add(name, 1);
    }

    pub fn get(&self, name: &str) -> u64 {
        lock(&self.counters).get(name).copied().unwrap_or(0)
    }

    /// A key no other row of the run has.
    pub fn next_key(&self) -> i64 {
        self.last_key.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn set_keys(&self, keys: &[i64], state: KeyState) {
        let mut ledger = lock(&self.ledger);
        for key in keys {
            ledger.insert(*key, state);
        }
    }

    pub fn ledger(&self) -> HashMap<i64, KeyState> {
        lock(&self.ledger).clone()
    }

    pub fn probe(&self, latency: Duration) {
        let micros = latency.as_micros().min(u32::MAX as u128) as u32;
        lock(&self.probes).push((unix_ms(), micros));
    }

    /// One `unix_ms latency_us` line per probe.
    pub fn write_probe_samples(&self, path: &str) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (at, micros) in lock(&self.probes).iter() {
            writeln!(out, "{at} {micros}")?;
        }
        out.flush()
    }

    fn sum(&self, prefix: &str) -> u64 {
        lock(&self.counters)
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn progress_line(&self) -> String {
        format!(
            "ops ok {} failed {} killed {}; errors {} (connect {}); ML rows checked {} wrong {} duplicated {}; probes {}",
            self.sum_suffix(".ok"),
            self.sum_suffix(".failed"),
            self.sum_suffix(".killed"),
            self.sum("error."),
            self.sum("connect_error."),
            self.get("ml.rows_checked"),
            self.get("ml.rows_wrong"),
            self.get("ml.rows_duplicated"),
            lock(&self.probes).len()
        )
    }

    fn sum_suffix(&self, suffix: &str) -> u64 {
        lock(&self.counters)
            .iter()
            .filter(|(k, _)| k.starts_with("ops.") && k.ends_with(suffix))
            .map(|(_, v)| v)
            .sum()
    }

    /// The summary: every counter, the ledger's counts and the probe percentiles.
    pub fn print(&self) {
        let mut fates: BTreeMap<&str, u64> = BTreeMap::new();
        for state in lock(&self.ledger).values() {
            let name = match state {
                KeyState::Pending => "keys.pending",
                KeyState::Committed => "keys.committed",
                KeyState::Aborted => "keys.aborted",
                KeyState::InDoubt => "keys.in_doubt",
            };
            *fates.entry(name).or_default() += 1;
        }
        let mut out = String::new();
        for (name, value) in lock(&self.counters).iter() {
            out.push_str(&format!("{name}={value}\n"));
        }
        for (name, value) in fates {
            out.push_str(&format!("{name}={value}\n"));
        }
        let mut latencies: Vec<u32> = lock(&self.probes).iter().map(|(_, l)| *l).collect();
        latencies.sort_unstable();
        out.push_str(&format!("probe.samples={}\n", latencies.len()));
        if !latencies.is_empty() {
            for (name, p) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)] {
                out.push_str(&format!("probe.{name}_us={}\n", percentile(&latencies, p)));
            }
            out.push_str(&format!(
                "probe.max_us={}\n",
                latencies.last().copied().unwrap_or(0)
            ));
        }
        print!("{out}");
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.99), 7);
    }
}
