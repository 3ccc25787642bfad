//! Inspecting and planning ML statements off the relay's threads.
//!
//! The relay only searches a Query or Parse text for the ML schema names (a byte search, linear
//! in the text); a text that mentions one is handed over as [`Intercept::Inspect`], and the
//! session's task plans it here: on a planner thread whose stack is far larger than any
//! statement that passes [`guard::check`] needs, so neither a pass-through loop (which carries
//! other sessions) nor a runtime worker ever parses SQL. A statement that nests too deeply gets
//! `54001`; a panic while planning is contained to the statement (`XX000`), and the session goes
//! on. At most `PLANNERS` statements are planned at once, whatever the number of sessions.
//!
//! The planner threads are kept between statements: a thread started per statement took a
//! one-row ML statement from 0.95 to 3.4 ms end to end (`benches/e2e_small_ml.sh`; starting and
//! joining such a thread alone costs about 0.2 ms here), and unmapping its stack interrupts every
//! other CPU running pgenrich (a TLB shootdown). A thread that has planned a deeply nested
//! statement (or panicked) ends after answering, so the stack pages such a statement made
//! resident go back to the system; the next statement starts a fresh one.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, OnceLock, PoisonError};

use tokio::sync::{oneshot, Semaphore};

use super::hook::{plan_query, plan_statement};
use super::*;
use crate::error::panic_text;
use crate::session::statements::CursorWork;
use crate::sql::guard;

/// Stack of a planner thread: the deepest statements the guard lets through need less than
/// 16 MiB in a debug build (4 MiB overflows; see the tests); four times that. Only the pages a
/// statement touches are used.
const PLANNER_STACK: usize = 64 << 20;

/// Statements planned at once, all sessions together: also the number of planner threads kept.
const PLANNERS: usize = 4;

/// A statement nesting deeper than this (the guard's estimate) retires its planner thread:
/// about a megabyte of stack in a debug build, far less in a release build.
const RETIRE_DEPTH: usize = 300;

static SLOTS: Semaphore = Semaphore::const_new(PLANNERS);

/// What the session does with an inspected Query or Parse.
#[derive(Debug)]
pub enum Planned {
    /// No ML call: the message goes upstream unchanged.
    Relay,
    /// An ML statement, planned.
    Intercept(Intercept),
    /// Refused with this error, as PostgreSQL would refuse a statement.
    Rejected(ErrorMessage),
}

/// The session's cursors over ML statements: client name → upstream name.
pub type HeldCursors = std::collections::HashMap<String, String>;

/// Inspects and plans a Query or Parse (`kind`, `body`) on a planner thread; `held` are the
/// session's cursors over ML statements, which FETCH, MOVE and CLOSE may name. A text longer
/// than `max_bytes` (`max_ml_statement_bytes`) is not tokenized: it is relayed when it certainly
/// calls no ML function ([`crate::sql::light`]), refused with `54000` otherwise.
pub async fn plan(kind: u8, body: Bytes, held: HeldCursors, max_bytes: usize) -> Planned {
    // Never closed, so acquiring only waits.
    let _slot = SLOTS.acquire().await;
    plan_in(pool(), kind, body, (held, max_bytes)).await
}

async fn plan_in(
    pool: &'static Pool,
    kind: u8,
    body: Bytes,
    (held, max_bytes): (HeldCursors, usize),
) -> Planned {
    let (answer, planned) = oneshot::channel();
    if let Err(error) = pool.submit(Job {
        kind,
        body,
        held,
        max_bytes,
        answer,
    }) {
        return Planned::Rejected(ErrorMessage::error(
            SqlState::InsufficientResources,
            format!("pgenrich cannot start a thread to plan the ML statement: {error}"),
        ));
    }
    planned
        .await
        .unwrap_or_else(|_| Planned::Rejected(failed("the planner thread ended")))
}

/// One statement for a planner thread.
struct Job {
    kind: u8,
    body: Bytes,
    held: HeldCursors,
    max_bytes: usize,
    answer: oneshot::Sender<Planned>,
}

/// The planner threads and their queue.
struct Pool {
    queue: mpsc::Sender<Job>,
    /// Taken by one idle thread at a time, which waits on it for the next job.
    jobs: Mutex<mpsc::Receiver<Job>>,
    /// Threads started and not yet retired.
    live: AtomicUsize,
    /// Threads started in all.
    started: AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::new)
}

impl Pool {
    fn new() -> Pool {
        let (queue, jobs) = mpsc::channel();
        Pool {
            queue,
            jobs: Mutex::new(jobs),
            live: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
        }
    }

    /// Queues `job`, first starting threads up to `PLANNERS` (a retired one is replaced here).
    /// Err only when no thread is left to take it.
    fn submit(&'static self, job: Job) -> std::io::Result<()> {
        loop {
            let live = self.live.load(Ordering::Acquire);
            if live >= PLANNERS {
                break;
            }
            if self
                .live
                .compare_exchange(live, live + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let started = std::thread::Builder::new()
                .name("pgenrich-plan".to_owned())
                .stack_size(PLANNER_STACK)
                .spawn(move || self.work());
            match started {
                Ok(_) => {
                    self.started.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
                        return Err(error);
                    }
                    tracing::warn!(%error, "cannot start a planner thread; planning with fewer");
                    break;
                }
            }
        }
        // The receiver lives as long as the pool.
        let _ = self.queue.send(job);
        Ok(())
    }

    /// A planner thread: plans jobs until one retires it.
    fn work(&self) {
        loop {
            let job = {
                let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            let Job {
                kind,
                body,
                held,
                max_bytes,
                answer,
            } = job;
            let plan = || plan_now(kind, &body, &held, max_bytes);
            let (planned, retire) = match catch_unwind(AssertUnwindSafe(plan)) {
                Ok(done) => done,
                Err(panic) => (Planned::Rejected(failed(&panic_text(&*panic))), true),
            };
            // Counted out before answering: the session's next statement then starts a thread.
            if retire {
                self.live.fetch_sub(1, Ordering::AcqRel);
            }
            let _ = answer.send(planned);
            if retire {
                return;
            }
        }
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

fn failed(what: &str) -> ErrorMessage {
    tracing::error!(what, "planning an ML statement failed");
    ErrorMessage::error(
        SqlState::InternalError,
        "pgenrich failed while planning the ML statement",
    )
    .with_detail(what.to_owned())
}

/// Inspects and plans on the calling thread (a planner thread); true with the outcome when the
/// statement nested deeply enough that the thread should end (see `RETIRE_DEPTH`).
fn plan_now(kind: u8, body: &[u8], held: &HeldCursors, max_bytes: usize) -> (Planned, bool) {
    let Some(text) = protocol::statement_text(kind, body) else {
        return (Planned::Relay, false);
    };
    if text.len() > max_bytes {
        if !crate::sql::light::may_call_ml(text) {
            return (Planned::Relay, false);
        }
        let error = ErrorMessage::error(
            SqlState::ProgramLimitExceeded,
            format!(
                "ML statement text of {} bytes exceeds pgenrich's max_ml_statement_bytes ({max_bytes})",
                text.len()
            ),
        )
        .with_hint(
            "Send long values (lists, documents) as parameters, e.g. = ANY($1) for a list, \
             split the statement, or raise max_ml_statement_bytes.",
        );
        return (Planned::Rejected(error), false);
    }
    let text = String::from_utf8_lossy(text);
    let scan = guard::scan(&text);
    let deep = scan.is_some_and(|scan| scan.depth > RETIRE_DEPTH);
    (inspect_and_plan(kind, body, &text, scan, held), deep)
}

fn inspect_and_plan(
    kind: u8,
    body: &[u8],
    text: &str,
    scan: Option<guard::Scan>,
    held: &HeldCursors,
) -> Planned {
    let calls_ml = match guard::verdict(scan) {
        Ok(calls) => calls && sql::inspect(text) != Verdict::Relay,
        Err(error) => return Planned::Rejected(error_message(error)),
    };
    let cursor = |work| {
        Planned::Intercept(Intercept::Cursor {
            kind,
            body: Bytes::copy_from_slice(body),
            work,
        })
    };
    if !calls_ml {
        // Perhaps a statement about the session's cursors or prepared statements.
        return match sql::cursor::command(text, |name| held.get(name).cloned()) {
            Some(command) => cursor(CursorWork::Command(command)),
            None => Planned::Relay,
        };
    }
    if let Some(declared) = sql::cursor::declare(text) {
        return match declared {
            Ok(declare) => cursor(CursorWork::Declare(Box::new(declare))),
            Err(error) => Planned::Rejected(error_message(error)),
        };
    }
    let planned = if kind == frontend::QUERY {
        plan_query(text)
    } else {
        plan_statement(text)
    };
    let intercept = match planned {
        Ok(intercept) => intercept,
        Err(error) => return Planned::Rejected(error_message(error)),
    };
    let parse =
        statements::parse_parts(body).map(|(name, types)| (name, Bytes::copy_from_slice(types)));
    Planned::Intercept(match (kind, parse, intercept) {
        (frontend::PARSE, Some((name, types)), Intercept::Query(plan)) => {
            Intercept::Parse { name, types, plan }
        }
        (frontend::PARSE, Some((name, types)), Intercept::Residual(plan)) => {
            Intercept::ParseResidual { name, types, plan }
        }
        (frontend::PARSE, Some((name, _)), Intercept::Explain { analyze, target }) => {
            Intercept::ParseExplain {
                name,
                analyze,
                target,
            }
        }
        (_, _, intercept) => intercept,
    })
}

fn error_message(error: plan::PlanError) -> ErrorMessage {
    let message = ErrorMessage::error(error.code, error.message);
    match error.hint {
        Some(hint) => message.with_hint(hint),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(sql: &str) -> Bytes {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        Bytes::from(body)
    }

    fn rejected(planned: Planned) -> ErrorMessage {
        match planned {
            Planned::Rejected(error) => error,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn streaming(planned: Planned) {
        assert!(
            matches!(planned, Planned::Intercept(Intercept::Query(_))),
            "expected a streaming plan, got {planned:?}"
        );
    }

    /// Plans a Query on `pool`'s threads, no cursors held, no byte limit to speak of.
    async fn query_in(pool: &'static Pool, body: Bytes) -> Planned {
        plan_in(pool, frontend::QUERY, body, (HeldCursors::new(), 64 << 20)).await
    }

    #[tokio::test]
    async fn planner_threads_are_kept_and_one_that_planned_a_deep_statement_is_replaced() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new()));
        let simple = || query("SELECT aws_comprehend.detect_sentiment(txt, 'en') FROM t");
        for _ in 0..3 * PLANNERS {
            streaming(query_in(pool, simple()).await);
        }
        assert_eq!(pool.started.load(Ordering::Relaxed), PLANNERS);
        assert_eq!(pool.live.load(Ordering::Relaxed), PLANNERS);

        let sum = vec!["a"; RETIRE_DEPTH + 10].join("+");
        let deep = query(&format!(
            "SELECT aws_sagemaker.invoke_endpoint('e', NULL, {sum}) FROM t"
        ));
        streaming(query_in(pool, deep).await);
        assert_eq!(pool.live.load(Ordering::Relaxed), PLANNERS - 1);
        streaming(query_in(pool, simple()).await);
        assert_eq!(pool.started.load(Ordering::Relaxed), PLANNERS + 1);
        assert_eq!(pool.live.load(Ordering::Relaxed), PLANNERS);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_statements_are_all_answered_while_threads_retire() {
        let sum = vec!["a"; RETIRE_DEPTH + 10].join("+");
        let statements: Vec<Bytes> = (0..48)
            .map(|i| {
                let argument = if i % 3 == 0 { sum.as_str() } else { "txt" };
                query(&format!(
                    "SELECT aws_sagemaker.invoke_endpoint('e{i}', NULL, {argument}) FROM t"
                ))
            })
            .collect();
        let tasks: Vec<_> = statements
            .into_iter()
            .map(|sql| tokio::spawn(plan(frontend::QUERY, sql, HeldCursors::new(), 64 << 20)))
            .collect();
        let all = futures_util::future::join_all(tasks);
        let answers = tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .expect("every statement is answered (no job is left without a planner thread)");
        for answer in answers {
            streaming(answer.expect("the task ends"));
        }
        assert!(pool().live.load(Ordering::Relaxed) <= PLANNERS);
    }

    #[tokio::test]
    async fn the_deepest_statements_the_guard_passes_are_planned() {
        // A residual statement with a long OR chain, and a streaming one with a long sum, each
        // just within the guard: the planner thread's stack holds them (in a debug build too).
        let chain = vec!["a = 1"; guard::MAX_DEPTH / 2 - 10].join(" OR ");
        let sql = format!(
            "SELECT id FROM t WHERE aws_sagemaker.invoke_endpoint('e', NULL, a)::int > 1 AND ({chain})"
        );
        assert!(guard::scan(&sql).expect("tokenizes").depth <= guard::MAX_DEPTH);
        match plan(frontend::QUERY, query(&sql), HeldCursors::new(), 64 << 20).await {
            Planned::Intercept(Intercept::Residual(_)) => {}
            other => panic!("expected a residual plan, got {other:?}"),
        }
        let sum = vec!["a"; guard::MAX_DEPTH - 1].join("+");
        let sql = format!("SELECT aws_sagemaker.invoke_endpoint('e', NULL, {sum}) FROM t");
        assert!(guard::scan(&sql).expect("tokenizes").depth <= guard::MAX_DEPTH);
        match plan(frontend::QUERY, query(&sql), HeldCursors::new(), 64 << 20).await {
            Planned::Intercept(Intercept::Query(_)) => {}
            other => panic!("expected a streaming plan, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn hostile_statements_get_errors_not_crashes() {
        // 300,000 terms: far beyond the guard.
        let chain = vec!["1"; 300_000].join("+");
        let error = rejected(
            plan(
                frontend::QUERY,
                query(&format!(
                    "SELECT aws_comprehend.detect_sentiment('a', 'en'), {chain}"
                )),
                HeldCursors::new(),
                64 << 20,
            )
            .await,
        );
        assert_eq!(error.code, SqlState::StatementTooComplex);
        // Only mentioned in a comment: relayed without a parse.
        let planned = plan(
            frontend::QUERY,
            query(&format!("SELECT {chain} -- aws_comprehend")),
            HeldCursors::new(),
            64 << 20,
        )
        .await;
        assert!(matches!(planned, Planned::Relay), "{planned:?}");
        // An ML call followed by 200,000 semicolons.
        let sql = format!(
            "SELECT aws_comprehend.detect_sentiment('a', 'en'){}",
            ";".repeat(200_000)
        );
        match plan(frontend::QUERY, query(&sql), HeldCursors::new(), 64 << 20).await {
            Planned::Intercept(Intercept::Query(_)) => {}
            other => panic!("expected a streaming plan, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn texts_over_the_byte_limit_are_relayed_or_refused_without_tokenizing() {
        let dense = vec!["1"; 100_000].join(",");
        let call =
            format!("SELECT aws_comprehend.detect_sentiment('a', 'en') WHERE 1 IN ({dense})");
        let error =
            rejected(plan(frontend::QUERY, query(&call), HeldCursors::new(), 64 << 10).await);
        assert_eq!(error.code, SqlState::ProgramLimitExceeded);
        assert!(
            error.message.contains("max_ml_statement_bytes"),
            "{error:?}"
        );
        // Mentioned only in a literal: relayed as it is.
        let literal = format!(
            "INSERT INTO t VALUES ('aws_comprehend.detect_sentiment(x)', '{}')",
            "x".repeat(100_000)
        );
        let planned = plan(
            frontend::QUERY,
            query(&literal),
            HeldCursors::new(),
            64 << 10,
        )
        .await;
        assert!(matches!(planned, Planned::Relay), "{planned:?}");
        // Within the limit, the same statement is planned.
        let planned = plan(frontend::QUERY, query(&call), HeldCursors::new(), 1 << 20).await;
        assert!(
            matches!(planned, Planned::Intercept(Intercept::Query(_))),
            "{planned:?}"
        );
    }
}
