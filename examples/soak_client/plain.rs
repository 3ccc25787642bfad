//! Pass-through sessions: reads checked against `soak_kv`, slow reads, and transactions writing
//! `soak_rows` whose keys go into the ledger. Operations, picked at random per round:
//!
//! | op | share | what |
//! |---|--:|---|
//! | `read-simple` | 25 % | `SELECT v FROM soak_kv WHERE id = k` (simple protocol) |
//! | `read-extended` | 25 % | the same prepared, `$1` bound (extended protocol) |
//! | `read-slow` | 10 % | `SELECT pg_sleep(0.05), count(*) FROM soak_kv` |
//! | `tx-extended` | 25 % | `BEGIN`, 1–3 prepared `INSERT`s, `COMMIT` |
//! | `tx-simple` | 15 % | `BEGIN; INSERT …; …; COMMIT` as one Query message |

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{SimpleQueryMessage, Statement};

use crate::conn::{connect, timed, Conn, Failure};
use crate::rng::Rng;
use crate::stats::KeyState;
use crate::tables::{kv_value, payload, KV_ROWS};
use crate::Ctx;

const ROLE: &str = "plain";

/// A connection with the statements prepared on it.
struct Session {
    conn: Conn,
    select: Option<Statement>,
    insert: Option<Statement>,
}

/// How an operation ended. `Failed` carries whether a transaction block may be left open.
enum Step {
    Ok(Session),
    Failed(Session, Failure, bool),
    Killed(&'static str),
}

pub async fn run(ctx: Arc<Ctx>, session: u32) {
    let mut rng = Rng::new(ctx.seed, 1_000_000 + u64::from(session));
    // Staggered starts: 200 sessions do not all connect in the same millisecond.
    tokio::time::sleep(rng.upto(ctx.plain_think)).await;
    let mut current: Option<Session> = None;
    while Instant::now() < ctx.deadline {
        let s = match current.take() {
            Some(s) => s,
            None => match connect(&ctx, ROLE, &mut rng).await {
                Some(conn) => Session {
                    conn,
                    select: None,
                    insert: None,
                },
                None => break,
            },
        };
        let kill = rng.chance(ctx.kill_rate);
        let (op, step) = match rng.below(100) {
            0..=24 => ("read-simple", read_simple(&ctx, &mut rng, s, kill).await),
            25..=49 => (
                "read-extended",
                read_extended(&ctx, &mut rng, s, kill).await,
            ),
            50..=59 => ("read-slow", read_slow(&ctx, &mut rng, s, kill).await),
            60..=84 => (
                "tx-extended",
                tx_extended(&ctx, &mut rng, s, session, kill).await,
            ),
            _ => (
                "tx-simple",
                tx_simple(&ctx, &mut rng, s, session, kill).await,
            ),
        };
        current = match step {
            Step::Ok(s) => {
                ctx.stats.inc(&format!("ops.{ROLE}.{op}.ok"));
                Some(s)
            }
            Step::Failed(mut s, failure, in_tx) => {
                ctx.stats.inc(&format!("ops.{ROLE}.{op}.failed"));
                let class = s.conn.classify(&failure).await;
                ctx.error(ROLE, op, &class);
                if class == "timeout" {
                    // The request may still be running: the connection cannot be reused.
                    s.conn.kill();
                    None
                } else {
                    recover(&ctx, s, in_tx).await
                }
            }
            Step::Killed(point) => {
                ctx.stats.inc(&format!("ops.{ROLE}.{op}.killed"));
                ctx.stats.inc(&format!("kill.{ROLE}.{point}"));
                None
            }
        };
        tokio::time::sleep(rng.around(ctx.plain_think)).await;
    }
}

/// After a failed operation: a dead or timed-out connection is dropped (the next round
/// reconnects); a live one leaves any transaction block with ROLLBACK.
async fn recover(ctx: &Ctx, s: Session, in_tx: bool) -> Option<Session> {
    if s.conn.is_closed() {
        return None;
    }
    if in_tx
        && timed(ctx, s.conn.client.batch_execute("ROLLBACK"))
            .await
            .is_err()
    {
        s.conn.kill();
        return None;
    }
    Some(s)
}

/// Polls `request` for at most `after`: `Some` with its output if it finished first.
async fn race<T>(request: impl Future<Output = T>, after: Duration) -> Option<T> {
    tokio::select! {
        out = request => Some(out),
        _ = tokio::time::sleep(after) => None,
    }
}

fn check(ctx: &Ctx, got: Option<&str>, want: &str) {
    if got != Some(want) {
        ctx.stats.inc("plain.wrong_results");
        eprintln!("soak_client: plain read returned {got:?}, expected {want:?}");
    }
}

async fn read_simple(ctx: &Ctx, rng: &mut Rng, s: Session, kill: bool) -> Step {
    let id = rng.between(1, KV_ROWS);
    let sql = format!("SELECT v FROM soak_kv WHERE id = {id}");
    let request = s.conn.client.simple_query(&sql);
    let result = if kill {
        let done = race(request, rng.upto(Duration::from_millis(2))).await;
        s.conn.kill();
        return Step::Killed(if done.is_some() {
            "after-answer"
        } else {
            "mid-query"
        });
    } else {
        timed(ctx, request).await
    };
    match result {
        Ok(messages) => {
            let value = messages.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                _ => None,
            });
            check(ctx, value.flatten().as_deref(), &kv_value(id));
            Step::Ok(s)
        }
        Err(f) => Step::Failed(s, f, false),
    }
}

async fn read_extended(ctx: &Ctx, rng: &mut Rng, mut s: Session, kill: bool) -> Step {
    let id = rng.between(1, KV_ROWS);
    let select = match s.select.clone() {
        Some(st) => st,
        None => match timed(
            ctx,
            s.conn
                .client
                .prepare("SELECT v FROM soak_kv WHERE id = $1::int4"),
        )
        .await
        {
            Ok(st) => {
                s.select = Some(st.clone());
                st
            }
            Err(f) => return Step::Failed(s, f, false),
        },
    };
    let param = id as i32;
    let params: [&(dyn ToSql + Sync); 1] = [&param];
    let request = s.conn.client.query_opt(&select, &params);
    let result = if kill {
        let done = race(request, rng.upto(Duration::from_millis(2))).await;
        s.conn.kill();
        return Step::Killed(if done.is_some() {
            "after-answer"
        } else {
            "mid-query"
        });
    } else {
        timed(ctx, request).await
    };
    match result {
        Ok(row) => {
            let value = row.and_then(|r| r.try_get::<_, String>(0).ok());
            check(ctx, value.as_deref(), &kv_value(id));
            Step::Ok(s)
        }
        Err(f) => Step::Failed(s, f, false),
    }
}

async fn read_slow(ctx: &Ctx, rng: &mut Rng, s: Session, kill: bool) -> Step {
    let request = s
        .conn
        .client
        .simple_query("SELECT pg_sleep(0.05), count(*) FROM soak_kv");
    let result = if kill {
        // Mostly while the backend sleeps: pgenrich must cancel the query and let go.
        let done = race(request, rng.upto(Duration::from_millis(60))).await;
        s.conn.kill();
        return Step::Killed(if done.is_some() {
            "after-answer"
        } else {
            "mid-query"
        });
    } else {
        timed(ctx, request).await
    };
    match result {
        Ok(messages) => {
            let count = messages.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(1).map(str::to_owned),
                _ => None,
            });
            check(ctx, count.as_deref(), &KV_ROWS.to_string());
            Step::Ok(s)
        }
        Err(f) => Step::Failed(s, f, false),
    }
}

async fn tx_extended(ctx: &Ctx, rng: &mut Rng, mut s: Session, session: u32, kill: bool) -> Step {
    let n = 1 + rng.below(3) as usize;
    let keys: Vec<i64> = (0..n).map(|_| ctx.stats.next_key()).collect();
    ctx.stats.set_keys(&keys, KeyState::Pending);
    // Kill points: 0 idle in the transaction after BEGIN, 1..=n during INSERT i, n+1 during COMMIT.
    let kill_at = kill.then(|| rng.below(n as u64 + 2) as usize);
    let abort = |s: Session, f: Failure| {
        ctx.stats.set_keys(&keys, KeyState::Aborted);
        Step::Failed(s, f, true)
    };
    if let Err(f) = timed(ctx, s.conn.client.batch_execute("BEGIN")).await {
        return abort(s, f);
    }
    let insert = match s.insert.clone() {
        Some(st) => st,
        None => match timed(
            ctx,
            s.conn
                .client
                .prepare("INSERT INTO soak_rows (key, session, payload) VALUES ($1, $2, $3)"),
        )
        .await
        {
            Ok(st) => {
                s.insert = Some(st.clone());
                st
            }
            Err(f) => return abort(s, f),
        },
    };
    if kill_at == Some(0) {
        ctx.stats.set_keys(&keys, KeyState::Aborted);
        s.conn.kill();
        return Step::Killed("in-transaction");
    }
    let session = session as i32;
    for (i, key) in keys.iter().enumerate() {
        let text = payload(*key);
        let params: [&(dyn ToSql + Sync); 3] = [key, &session, &text];
        let request = s.conn.client.execute(&insert, &params);
        if kill_at == Some(i + 1) {
            let done = race(request, rng.upto(Duration::from_millis(2))).await;
            ctx.stats.set_keys(&keys, KeyState::Aborted);
            s.conn.kill();
            return Step::Killed(if done.is_some() {
                "in-transaction"
            } else {
                "mid-insert"
            });
        }
        if let Err(f) = timed(ctx, request).await {
            return abort(s, f);
        }
    }
    let commit = s.conn.client.batch_execute("COMMIT");
    if kill_at == Some(n + 1) {
        let done = race(commit, rng.upto(Duration::from_millis(2))).await;
        let state = match done {
            Some(Ok(())) => KeyState::Committed,
            _ => KeyState::InDoubt,
        };
        ctx.stats.set_keys(&keys, state);
        s.conn.kill();
        return Step::Killed("mid-commit");
    }
    match timed(ctx, commit).await {
        Ok(()) => {
            ctx.stats.set_keys(&keys, KeyState::Committed);
            Step::Ok(s)
        }
        Err(f) => {
            // COMMIT was sent: whether it took effect is unknown.
            ctx.stats.set_keys(&keys, KeyState::InDoubt);
            Step::Failed(s, f, true)
        }
    }
}

async fn tx_simple(ctx: &Ctx, rng: &mut Rng, s: Session, session: u32, kill: bool) -> Step {
    let n = 1 + rng.below(3) as usize;
    let keys: Vec<i64> = (0..n).map(|_| ctx.stats.next_key()).collect();
    ctx.stats.set_keys(&keys, KeyState::Pending);
    let mut sql = String::from("BEGIN;");
    for key in &keys {
        sql.push_str(&format!(
            " INSERT INTO soak_rows (key, session, payload) VALUES ({key}, {session}, '{}');",
            payload(*key)
        ));
    }
    sql.push_str(" COMMIT");
    let request = s.conn.client.batch_execute(&sql);
    if kill {
        let done = race(request, rng.upto(Duration::from_millis(3))).await;
        let state = match done {
            Some(Ok(())) => KeyState::Committed,
            _ => KeyState::InDoubt,
        };
        ctx.stats.set_keys(&keys, state);
        s.conn.kill();
        return Step::Killed("mid-message");
    }
    match timed(ctx, request).await {
        Ok(()) => {
            ctx.stats.set_keys(&keys, KeyState::Committed);
            Step::Ok(s)
        }
        Err(f) => {
            // The message held the COMMIT; an error may have come before or after it.
            ctx.stats.set_keys(&keys, KeyState::InDoubt);
            Step::Failed(s, f, true)
        }
    }
}
