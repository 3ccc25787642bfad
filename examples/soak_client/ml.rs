//! ML sessions: statements over a random `id` range of `soak_ml`, every row checked against the
//! mock's models (`invoke_endpoint('score', …, a)` returns `a`; `detect_sentiment` the mock's
//! label and confidence of `txt`). A statement that completes must return each expected row
//! exactly once with the right value; one that fails or is killed must still never return a
//! wrong or repeated row. Forms, picked at random:
//!
//! | form | statement |
//! |---|---|
//! | `stream-simple` | `SELECT id, invoke_endpoint('score', NULL/100/500, a) … WHERE id BETWEEN x AND y` |
//! | `stream-extended` | the same prepared, `BETWEEN $1 AND $2` |
//! | `residual-simple` | `SELECT id … WHERE id BETWEEN x AND y AND invoke_endpoint(…)::float8 > k` |
//! | `residual-extended` | the same prepared, `> $3` |
//! | `sentiment-simple` | `SELECT id, detect_sentiment(txt, 'en') … WHERE id BETWEEN x AND y` |

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mock_aws::models;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

use crate::conn::{connect, timed, Conn, Failure};
use crate::rng::Rng;
use crate::tables::{ml_a, ml_txt};
use crate::Ctx;

const ROLE: &str = "ml";
const STREAM_SQL: &str =
    "SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, a) FROM soak_ml WHERE id BETWEEN $1 AND $2";
const RESIDUAL_SQL: &str = "SELECT id FROM soak_ml WHERE id BETWEEN $1 AND $2 \
                            AND aws_sagemaker.invoke_endpoint('score', NULL, a)::float8 > $3";

#[derive(Clone, Copy, PartialEq)]
enum Want {
    /// `(id, score)`: the score is `a`.
    Score,
    /// `(id)` of the rows whose `a` exceeds the threshold.
    Above(f64),
    /// `(id, (LABEL,confidence))`.
    Sentiment,
}

/// The rows of one statement so far.
struct Check {
    lo: i64,
    want: Want,
    seen: Vec<bool>,
    rows: u64,
    wrong: u64,
    duplicated: u64,
}

impl Check {
    fn new(lo: i64, hi: i64, want: Want) -> Check {
        Check {
            lo,
            want,
            seen: vec![false; (hi - lo + 1) as usize],
            rows: 0,
            wrong: 0,
            duplicated: 0,
        }
    }

    fn expected(&self, id: i64) -> bool {
        match self.want {
            Want::Above(k) => ml_a(id) as f64 > k,
            _ => true,
        }
    }

    fn expected_rows(&self) -> u64 {
        (0..self.seen.len() as i64)
            .filter(|i| self.expected(self.lo + i))
            .count() as u64
    }

    fn value_ok(&self, id: i64, value: Option<&str>) -> bool {
        match self.want {
            Want::Above(_) => true,
            Want::Score => value == Some(models::score(&[ml_a(id).to_string()]).as_str()),
            Want::Sentiment => {
                let want = models::sentiment(&ml_txt(id));
                let got = value
                    .and_then(|v| v.strip_prefix('(')?.strip_suffix(')'))
                    .and_then(|v| v.split_once(','));
                matches!(got, Some((label, conf)) if label == want.label
                    && conf.parse::<f32>().is_ok_and(|c| (c - want.confidence()).abs() < 1e-6))
            }
        }
    }

    fn row(&mut self, ctx: &Ctx, id: Option<i64>, value: Option<&str>) {
        self.rows += 1;
        let slot = id
            .filter(|&id| self.expected(id))
            .and_then(|id| usize::try_from(id - self.lo).ok())
            .filter(|&i| i < self.seen.len());
        let good = match (id, slot) {
            (Some(id), Some(i)) if self.seen[i] => {
                self.duplicated += 1;
                self.value_ok(id, value)
            }
            (Some(id), Some(i)) => {
                self.seen[i] = true;
                self.value_ok(id, value)
            }
            _ => false,
        };
        if !good {
            self.wrong += 1;
            if ctx.stats.get("ml.rows_wrong") + self.wrong <= 20 {
                eprintln!("soak_client: wrong ML row: id {id:?}, value {value:?}");
            }
        }
    }

    fn seen_rows(&self) -> u64 {
        self.seen.iter().filter(|s| **s).count() as u64
    }
}

/// How to kill this statement, if at all.
#[derive(Clone, Copy)]
enum Kill {
    None,
    /// Drop the connection after this many rows.
    AfterRows(u64),
    /// Drop the connection this long after sending the statement.
    After(Duration),
}

struct Session {
    conn: Conn,
    stream: Option<Statement>,
    residual: Option<Statement>,
}

pub async fn run(ctx: Arc<Ctx>, session: u32) {
    let mut rng = Rng::new(ctx.seed, 2_000_000 + u64::from(session));
    tokio::time::sleep(rng.upto(ctx.ml_think)).await;
    let mut current: Option<Session> = None;
    while Instant::now() < ctx.deadline {
        let mut s = match current.take() {
            Some(s) => s,
            None => match connect(&ctx, ROLE, &mut rng).await {
                Some(conn) => Session {
                    conn,
                    stream: None,
                    residual: None,
                },
                None => break,
            },
        };
        let span = rng.between(1, i64::from(ctx.ml_max_range));
        let lo = rng.between(1, (i64::from(ctx.ml_rows) - span + 1).max(1));
        let hi = lo + span - 1;
        let threshold = rng.between(0, 999) as f64 + 0.5;
        let (form, want) = match rng.below(100) {
            0..=29 => ("stream-simple", Want::Score),
            30..=49 => ("stream-extended", Want::Score),
            50..=64 => ("residual-simple", Want::Above(threshold)),
            65..=79 => ("residual-extended", Want::Above(threshold)),
            _ => ("sentiment-simple", Want::Sentiment),
        };
        let mut check = Check::new(lo, hi, want);
        let kill = if !rng.chance(ctx.kill_rate) {
            Kill::None
        } else if rng.chance(0.5) {
            Kill::AfterRows(1 + rng.below(check.expected_rows().max(2) / 2))
        } else {
            Kill::After(rng.upto(Duration::from_millis(30)))
        };
        let batch = ["NULL", "100", "500"][rng.below(3) as usize];
        let outcome = match form {
            "stream-simple" => {
                let sql = format!(
                    "SELECT id, aws_sagemaker.invoke_endpoint('score', {batch}, a) \
                     FROM soak_ml WHERE id BETWEEN {lo} AND {hi}"
                );
                run_simple(&ctx, &mut s, &sql, &mut check, kill).await
            }
            "residual-simple" => {
                let sql = format!(
                    "SELECT id FROM soak_ml WHERE id BETWEEN {lo} AND {hi} \
                     AND aws_sagemaker.invoke_endpoint('score', {batch}, a)::float8 > {threshold}"
                );
                run_simple(&ctx, &mut s, &sql, &mut check, kill).await
            }
            "sentiment-simple" => {
                let sql = format!(
                    "SELECT id, aws_comprehend.detect_sentiment(txt, 'en') \
                     FROM soak_ml WHERE id BETWEEN {lo} AND {hi}"
                );
                run_simple(&ctx, &mut s, &sql, &mut check, kill).await
            }
            _ => {
                let (lo, hi) = (lo as i32, hi as i32);
                let residual = matches!(want, Want::Above(_));
                let params: Vec<&(dyn ToSql + Sync)> = if residual {
                    vec![&lo, &hi, &threshold]
                } else {
                    vec![&lo, &hi]
                };
                run_extended(&ctx, &mut s, residual, &params, &mut check, kill).await
            }
        };
        ctx.stats.add("ml.rows_checked", check.rows);
        ctx.stats.add("ml.rows_wrong", check.wrong);
        ctx.stats.add("ml.rows_duplicated", check.duplicated);
        current = match outcome {
            Ok(true) => {
                ctx.stats.inc(&format!("ops.{ROLE}.{form}.ok"));
                let missing = check.expected_rows().saturating_sub(check.seen_rows());
                ctx.stats.add("ml.rows_missing", missing);
                ctx.stats.inc("ml.statements_complete");
                Some(s)
            }
            Ok(false) => {
                ctx.stats.inc(&format!("ops.{ROLE}.{form}.killed"));
                let point = match kill {
                    Kill::AfterRows(_) => "mid-result",
                    _ => "mid-query",
                };
                ctx.stats.inc(&format!("kill.{ROLE}.{point}"));
                s.conn.kill();
                None
            }
            Err(failure) => {
                ctx.stats.inc(&format!("ops.{ROLE}.{form}.failed"));
                let class = s.conn.classify(&failure).await;
                ctx.error(ROLE, form, &class);
                if class == "timeout" || s.conn.is_closed() {
                    s.conn.kill();
                    None
                } else {
                    Some(s)
                }
            }
        };
        tokio::time::sleep(rng.around(ctx.ml_think)).await;
    }
}

fn parse_id(text: Option<&str>) -> Option<i64> {
    text.and_then(|t| t.parse().ok())
}

/// Runs one statement to its end (`Ok(true)`), or to the kill point (`Ok(false)`; the caller
/// drops the connection).
async fn run_simple(
    ctx: &Ctx,
    s: &mut Session,
    sql: &str,
    check: &mut Check,
    kill: Kill,
) -> Result<bool, Failure> {
    let limit = match kill {
        Kill::AfterRows(n) => Some(n),
        _ => None,
    };
    let statement = async {
        let mut stream = pin!(s.conn.client.simple_query_raw(sql).await?);
        while let Some(message) = stream.try_next().await? {
            if let SimpleQueryMessage::Row(row) = message {
                let value = if row.len() > 1 { row.get(1) } else { None };
                check.row(ctx, parse_id(row.get(0)), value);
                if Some(check.rows) == limit {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    };
    bounded(ctx, statement, kill).await
}

async fn run_extended(
    ctx: &Ctx,
    s: &mut Session,
    residual: bool,
    params: &[&(dyn ToSql + Sync)],
    check: &mut Check,
    kill: Kill,
) -> Result<bool, Failure> {
    let statement = match prepared(ctx, s, residual).await {
        Ok(statement) => statement,
        Err(failure) => return Err(failure),
    };
    let limit = match kill {
        Kill::AfterRows(n) => Some(n),
        _ => None,
    };
    let client: &Client = &s.conn.client;
    let run = async {
        let mut rows = pin!(client.query_raw(&statement, params.iter().copied()).await?);
        while let Some(row) = rows.try_next().await? {
            let id = row.try_get::<_, i32>(0).ok().map(i64::from);
            let value = if residual {
                None
            } else {
                row.try_get::<_, Option<String>>(1).ok().flatten()
            };
            check.row(ctx, id, value.as_deref());
            if Some(check.rows) == limit {
                return Ok(false);
            }
        }
        Ok(true)
    };
    bounded(ctx, run, kill).await
}

async fn prepared(ctx: &Ctx, s: &mut Session, residual: bool) -> Result<Statement, Failure> {
    let slot = if residual {
        &mut s.residual
    } else {
        &mut s.stream
    };
    if let Some(statement) = slot {
        return Ok(statement.clone());
    }
    let sql = if residual { RESIDUAL_SQL } else { STREAM_SQL };
    let statement = timed(ctx, s.conn.client.prepare(sql)).await?;
    *slot = Some(statement.clone());
    Ok(statement)
}

/// The statement under the operation timeout, or cut short by a timed kill (`Ok(false)`).
async fn bounded(
    ctx: &Ctx,
    statement: impl std::future::Future<Output = Result<bool, tokio_postgres::Error>>,
    kill: Kill,
) -> Result<bool, Failure> {
    match kill {
        Kill::After(delay) => match tokio::time::timeout(delay, statement).await {
            // Finished before the kill: a complete statement, nothing to kill.
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => Err(Failure::Pg(e)),
            Err(_) => Ok(false),
        },
        _ => timed(ctx, statement).await,
    }
}
