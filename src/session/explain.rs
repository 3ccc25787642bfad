//! Answering `EXPLAIN [ANALYZE] <ML statement>` with pgenrich's plan, as rows of one `QUERY PLAN`
//! column like PostgreSQL's: the statements pgenrich sends upstream, each with PostgreSQL's own
//! EXPLAIN, and the ML calls with their batch sizes. With ANALYZE the statement runs (its result
//! rows are discarded, as PostgreSQL does) and the plan adds base rows, service calls, duplicate
//! inputs saved, time in inference, and PostgreSQL's EXPLAIN ANALYZE of the residual.
//!
//! EXPLAIN describes what one of the two execution modes would do, so it is the one mode that
//! sits above them: it uses the residual mode's base-statement phases, and neither execution mode
//! knows about it. Entry points as for the other modes: [`run`] (simple protocol),
//! [`handle_parse`] and [`run_execute`] (extended protocol).

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use crate::enrich::{CallStats, Executor};
use crate::error::{SessionError, SqlState};
use crate::protocol::{frontend, ErrorMessage};
use crate::session::conversation::requests::{flushed, named, parse_body};
use crate::session::conversation::transaction::Failure;
use crate::session::conversation::{canceled, Conversation, Outcome};
use crate::session::kept::Kept;
use crate::session::residual::{describe_base, fetch_and_score, residual_parameters};
use crate::session::rows::{message, split_row};
use crate::session::scoring::{call_error, infer, Results};
use crate::session::statements::{plan_description, MlPortal, MlStatement, Prepared};
use crate::sql::explain::ExplainTarget;
use crate::sql::plan::{Call, MlFunction, StreamingPlan};
use crate::sql::residual::ResidualPlan;

/// The statement EXPLAINs run under upstream.
const EXPLAIN_STATEMENT: &str = "pgenrich.explain";

/// What a prepared EXPLAIN of an ML statement is upstream ([`handle_parse`]): never bound there.
const PLACEHOLDER: &str = "SELECT /* pgenrich: EXPLAIN of an ML statement, answered by pgenrich */";

/// Answers an EXPLAIN of an ML statement (simple protocol), up to ReadyForQuery.
pub async fn run(
    conv: &mut Conversation<'_>,
    analyze: bool,
    target: ExplainTarget,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let Some(wrap) = conv.begin_snapshot(!analyze).await? else {
        return conv.ready(b"I", outcome).await;
    };
    let failure = match plan_lines(conv, analyze, &target, &mut outcome).await? {
        Ok(lines) => {
            conv.to_client(message(b'T', &plan_description(0)));
            send_lines(conv, &lines);
            conv.to_client(message(b'C', b"EXPLAIN\0"));
            None
        }
        Err(failure) => Some(failure),
    };
    let failed = conv.report(failure, wrap).await?;
    conv.finish_query(wrap, failed || discards(analyze, &target), outcome)
        .await
}

/// Whether pgenrich's own transaction around an EXPLAIN is rolled back: EXPLAIN ANALYZE of a
/// SELECT leaves nothing of its run (sequence calls included); that of an INSERT, UPDATE, DELETE
/// or CREATE TABLE AS keeps what it wrote, as natively.
fn discards(analyze: bool, target: &ExplainTarget) -> bool {
    analyze && !matches!(target, ExplainTarget::Residual(plan) if plan.modifies.is_some())
}

/// pgenrich's plan of `target` as lines; with `analyze` the statement runs and a line of what
/// happened ends the plan.
async fn plan_lines(
    conv: &mut Conversation<'_>,
    analyze: bool,
    target: &ExplainTarget,
    outcome: &mut Outcome,
) -> Result<Result<Vec<String>, Failure>, SessionError> {
    let started = Instant::now();
    let mut lines = Vec::new();
    let result = match target {
        ExplainTarget::Streaming(plan) => {
            streaming(conv, analyze, plan, &mut lines, outcome).await?
        }
        ExplainTarget::Residual(plan) => residual(conv, analyze, plan, &mut lines, outcome).await?,
    };
    if let Err(failure) = result {
        return Ok(Err(failure));
    }
    if analyze {
        lines.push(format!(
            "pgenrich execution: {} base rows, {} ML inputs, {} service calls, {} duplicate inputs saved, {:.3} ms in inference, {:.3} ms in all",
            outcome.base_rows,
            outcome.stats.rows,
            outcome.stats.calls,
            outcome.stats.duplicates_saved,
            outcome.inference.as_secs_f64() * 1000.0,
            started.elapsed().as_secs_f64() * 1000.0
        ));
    }
    Ok(Ok(lines))
}

/// Registers a client's Parse of an EXPLAIN of an ML statement (extended protocol): it is
/// answered by pgenrich at Execute. Upstream, a placeholder statement is prepared under
/// pgenrich's name for it, so that whatever ends a prepared statement there (Close, `DEALLOCATE`
/// under that name, `DEALLOCATE ALL`, `DISCARD ALL`) answers as it would natively, and a Parse
/// PostgreSQL refuses (an aborted transaction) gets its own error.
pub async fn handle_parse(
    conv: &mut Conversation<'_>,
    name: String,
    analyze: bool,
    target: ExplainTarget,
    kept: Option<Kept>,
) -> Result<(), SessionError> {
    let upstream_name = format!("pgenrich.explain.{name}");
    let mut requests = BytesMut::new();
    // Replace an earlier statement of the same client name (always so for the unnamed one).
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', &upstream_name)));
    requests.put_slice(&message(
        frontend::PARSE,
        &parse_body(&upstream_name, PLACEHOLDER, &[]),
    ));
    conv.send(flushed(requests.freeze())).await?;
    loop {
        let (kind, body) = conv.next().await?;
        match kind {
            b'3' => {}
            b'1' => {
                let prepared = Prepared::Explain {
                    analyze,
                    target: Arc::new(target),
                };
                let parameters = Bytes::from_static(&[0, 0]);
                let statement = MlStatement {
                    upstream_name,
                    parameters,
                    prepared,
                    kept,
                };
                break conv.parse_accepted(name, statement);
            }
            b'E' => break conv.parse_refused(&name, &body),
            _ => conv.to_client(message(kind, &body)),
        }
    }
    Ok(())
}

/// Answers a client's Execute of an EXPLAIN portal (extended protocol). The first Execute works
/// out the plan as [`run`] does — in the client's transaction block, or in pgenrich's snapshot
/// transaction after a Sync of its own when the session is idle and its pipeline holds nothing
/// of the client's yet (otherwise the EXPLAIN is refused) — and later Executes continue after a
/// row limit. Errors leave the upstream skipping to the client's Sync, as a native error would.
pub async fn run_execute(
    conv: &mut Conversation<'_>,
    (analyze, target): (bool, &ExplainTarget),
    portal: &str,
    bound: &MlPortal,
    max_rows: usize,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let (lines, sent) = match &bound.explained {
        Some((lines, sent)) => (Arc::clone(lines), *sent),
        None => match explain_in_pipeline(conv, analyze, target, &mut outcome).await? {
            Some(lines) => (Arc::new(lines), 0),
            None => {
                conv.flush().await?;
                return Ok(outcome);
            }
        },
    };
    let end = if max_rows > 0 {
        lines.len().min(sent + max_rows)
    } else {
        lines.len()
    };
    send_lines(conv, &lines[sent..end]);
    if end < lines.len() {
        conv.to_client(message(b's', &[]));
    } else {
        conv.to_client(message(b'C', b"EXPLAIN\0"));
    }
    // pgenrich's own round trips may have ended the portal's registration with its epoch.
    let mut bound = bound.clone();
    bound.epoch = conv.tracker().closings_forwarded();
    bound.explained = Some((lines, end));
    conv.registry().portals.insert(portal.to_owned(), bound);
    conv.flush().await?;
    Ok(outcome)
}

/// The plan's lines for [`run_execute`]; `None` when it failed (the client has the error and the
/// upstream skips to the client's Sync).
async fn explain_in_pipeline(
    conv: &mut Conversation<'_>,
    analyze: bool,
    target: &ExplainTarget,
    outcome: &mut Outcome,
) -> Result<Option<Vec<String>>, SessionError> {
    let refusal = match conv.status() {
        b'E' => Some(ErrorMessage::error(
            SqlState::InFailedSqlTransaction,
            "current transaction is aborted, commands ignored until end of transaction block",
        )),
        b'I' if !conv.tracker().can_resync() => Some(
            ErrorMessage::error(
                SqlState::FeatureNotSupported,
                "EXPLAIN of an ML statement must begin its pipeline in the extended query protocol",
            )
            .with_hint("Send Sync before the EXPLAIN, or run it as a simple query."),
        ),
        _ => None,
    };
    if let Some(error) = refusal {
        conv.fail_execute(error).await?;
        return Ok(None);
    }
    if conv.status() == b'I' {
        // The pipeline's implicit transaction holds only pgenrich's own work: end it, so that
        // the snapshot transaction can begin.
        conv.sync_upstream().await?;
    }
    let Some(wrap) = conv.begin_snapshot(!analyze).await? else {
        conv.fail_upstream(None).await?;
        conv.mark_failed();
        return Ok(None);
    };
    let (lines, failure) = match plan_lines(conv, analyze, target, outcome).await? {
        Ok(lines) => (Some(lines), None),
        Err(failure) => (None, Some(failure)),
    };
    let failed = conv.report(failure, wrap).await?;
    if wrap {
        conv.end_hidden(failed || discards(analyze, target)).await?;
    }
    match lines {
        Some(lines) if !failed => Ok(Some(lines)),
        _ => {
            // pgenrich's Syncs ended the upstream's skipping: a stand-in restores it.
            conv.fail_upstream(None).await?;
            conv.mark_failed();
            Ok(None)
        }
    }
}

/// One DataRow per line (text is the same bytes in both formats).
fn send_lines(conv: &mut Conversation<'_>, lines: &[String]) {
    for line in lines {
        let mut row = BytesMut::with_capacity(line.len() + 6);
        row.put_u16(1);
        row.put_i32(line.len() as i32);
        row.put_slice(line.as_bytes());
        conv.to_client(message(b'D', &row));
    }
}

/// The lines of PostgreSQL's EXPLAIN of `sql` (run with `params`, binary), indented.
async fn postgres_explain(
    conv: &mut Conversation<'_>,
    sql: &str,
    analyze: bool,
    params: &[Vec<u8>],
    lines: &mut Vec<String>,
) -> Result<Result<(), Failure>, SessionError> {
    let explain = format!("EXPLAIN {}{sql}", if analyze { "(ANALYZE) " } else { "" });
    let mut bind = BytesMut::new();
    bind.put_u8(0);
    bind.put_slice(EXPLAIN_STATEMENT.as_bytes());
    bind.put_u8(0);
    bind.put_u16(1);
    bind.put_i16(1);
    bind.put_u16(params.len() as u16);
    for param in params {
        bind.put_i32(param.len() as i32);
        bind.put_slice(param);
    }
    bind.put_u16(0);
    // A statement of pgenrich's own name: the client's unnamed statement stays as it is.
    // (closed first: a failed run leaves it prepared).
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', EXPLAIN_STATEMENT)));
    requests.put_slice(&message(
        frontend::PARSE,
        &parse_body(EXPLAIN_STATEMENT, &explain, &[]),
    ));
    requests.put_slice(&message(frontend::BIND, &bind));
    requests.put_slice(&message(frontend::EXECUTE, b"\0\0\0\0\0"));
    requests.put_slice(&message(frontend::SYNC, &[]));
    conv.send(requests.freeze()).await?;
    let rows = match conv.fetch_rows().await? {
        Ok(rows) => rows,
        Err(failure) => return Ok(Err(failure)),
    };
    for row in rows.iter() {
        if let Some(Some(line)) = split_row(row).first() {
            lines.push(format!("    {}", String::from_utf8_lossy(line)));
        }
    }
    Ok(Ok(()))
}

/// One line per ML call: the function, where its target and batch size come from.
fn describe_calls(executor: &Executor, calls: &[Call], args: &[String], lines: &mut Vec<String>) {
    for (k, call) in calls.iter().enumerate() {
        let arg = |i: usize| args.get(call.first_arg + i).cloned().unwrap_or_default();
        if matches!(
            call.function,
            MlFunction::InvokeModel | MlFunction::InvokeModelGetEmbeddings
        ) {
            lines.push(format!(
                "  ML call {}: {} (model {}, InvokeModel, one call per distinct input)",
                k + 1,
                call.function.name(),
                arg(0)
            ));
            continue;
        }
        let batch = if call.arg_count > 2 || call.function == MlFunction::InvokeEndpoint {
            let index = if call.function == MlFunction::InvokeEndpoint {
                1
            } else {
                2
            };
            arg(index)
        } else {
            "NULL".to_owned()
        };
        let default = match call.function {
            MlFunction::DetectSentiment => executor
                .default_batch_rows()
                .min(executor.sentiment_batch_limit()),
            _ => executor.default_batch_rows(),
        };
        let batch = if batch.eq_ignore_ascii_case("null") {
            format!("NULL (default: {default} rows per call)")
        } else {
            batch
        };
        let target = match call.function {
            MlFunction::DetectSentiment => format!(
                "language {}, BatchDetectSentiment of up to {} documents",
                arg(1),
                executor.sentiment_batch_limit()
            ),
            _ => format!("endpoint {}, text/csv", arg(0)),
        };
        lines.push(format!(
            "  ML call {}: {} ({target}); max_rows_per_batch: {batch}",
            k + 1,
            call.function.name()
        ));
    }
}

/// The argument expressions of the base statement, as SQL, in base column order.
fn argument_texts(base_sql: &str, count: usize) -> Vec<String> {
    use sqlparser::ast::{SelectItem, SetExpr, Statement};
    let parsed =
        sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, base_sql);
    let Ok([Statement::Query(query)]) = parsed.as_deref() else {
        return Vec::new();
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Vec::new();
    };
    select
        .projection
        .iter()
        .take(count)
        .map(|item| match item {
            SelectItem::ExprWithAlias { expr, .. } | SelectItem::UnnamedExpr(expr) => {
                expr.to_string()
            }
            other => other.to_string(),
        })
        .collect()
}

async fn streaming(
    conv: &mut Conversation<'_>,
    analyze: bool,
    plan: &StreamingPlan,
    lines: &mut Vec<String>,
    outcome: &mut Outcome,
) -> Result<Result<(), Failure>, SessionError> {
    lines.push(
        "pgenrich: streaming enrichment — the statement runs as below and its rows are scored in chunks as they arrive"
            .to_owned(),
    );
    lines.push(format!("  Base statement: {}", plan.base_sql));
    if let Err(failure) = postgres_explain(conv, &plan.base_sql, false, &[], lines).await? {
        return Ok(Err(failure));
    }
    describe_calls(
        conv.executor(),
        &plan.calls,
        &argument_texts(&plan.base_sql, plan.arg_columns),
        lines,
    );
    if !analyze {
        return Ok(Ok(()));
    }
    // Run it: every row, every call, results discarded.
    let mut requests = BytesMut::new();
    requests.put_slice(&message(
        frontend::PARSE,
        &parse_body("", &plan.base_sql, &[]),
    ));
    requests.put_slice(&message(frontend::BIND, &[0, 0, 0, 0, 0, 0, 0, 0]));
    requests.put_slice(&message(frontend::EXECUTE, b"\0\0\0\0\0"));
    requests.put_slice(&message(frontend::SYNC, &[]));
    conv.send(requests.freeze()).await?;
    let rows = match conv.fetch_rows().await? {
        Ok(rows) => rows,
        Err(failure) => return Ok(Err(failure)),
    };
    let parsed: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| split_row(r)).collect();
    outcome.base_rows += parsed.len() as u64;
    let started = Instant::now();
    let memo = conv.new_memo();
    let mut stats = CallStats::default();
    let executor = Arc::clone(conv.executor());
    let inference = infer(&executor, &plan.calls, &parsed, &memo, &mut stats);
    let Some(result) = conv.guard(inference).await? else {
        return Ok(Err(Failure::Ours(canceled())));
    };
    outcome.inference += started.elapsed();
    outcome.add_calls(&stats);
    match result {
        Ok(_) => Ok(Ok(())),
        Err(error) => Ok(Err(Failure::Ours(call_error(error, &plan.calls)))),
    }
}

async fn residual(
    conv: &mut Conversation<'_>,
    analyze: bool,
    plan: &ResidualPlan,
    lines: &mut Vec<String>,
    outcome: &mut Outcome,
) -> Result<Result<(), Failure>, SessionError> {
    lines.push(format!(
        "pgenrich: enrich, then finish in PostgreSQL — {} base relation(s) scored, then the residual statement over them",
        plan.blocks.len()
    ));
    let mut described = Vec::new();
    let mut params = Vec::new();
    for (b, block) in plan.blocks.iter().enumerate() {
        lines.push(format!("Phase 1, block {b}: base relation"));
        lines.push(format!("  Base statement: {}", block.base_sql));
        let shape = match describe_base(conv, block).await? {
            Ok(shape) => shape,
            Err(failure) => return Ok(Err(failure)),
        };
        if analyze {
            let block_params = match fetch_and_score(conv, block, &shape, outcome).await? {
                Ok(params) => params,
                Err(failure) => return Ok(Err(failure)),
            };
            params.extend(block_params);
        } else {
            close_described(conv).await?;
            let empty: Vec<Results> = block
                .calls
                .iter()
                .map(|c| match c.function {
                    MlFunction::DetectSentiment => Results::Sentiment(Vec::new()),
                    MlFunction::InvokeModelGetEmbeddings => Results::Embedding(Vec::new()),
                    MlFunction::InvokeEndpoint | MlFunction::InvokeModel => {
                        Results::Text(Vec::new())
                    }
                })
                .collect();
            params.extend(residual_parameters(&shape, &[], &empty));
        }
        if let Err(failure) = postgres_explain(conv, &block.base_sql, false, &[], lines).await? {
            return Ok(Err(failure));
        }
        describe_calls(
            conv.executor(),
            &block.calls,
            &argument_texts(&block.base_sql, block.arg_columns),
            lines,
        );
        described.push(shape.described());
    }
    let residual = plan.residual_sql(&described, 1);
    lines.push(format!(
        "Phase 2: residual statement over the enriched rows ({} array parameters)",
        params.len()
    ));
    lines.push(format!("  Residual statement: {residual}"));
    postgres_explain(conv, &residual, analyze, &params, lines).await
}

/// Closes the base statement [`describe_base`] left prepared (EXPLAIN without ANALYZE does not
/// fetch it).
async fn close_described(conv: &mut Conversation<'_>) -> Result<(), SessionError> {
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::CLOSE, b"Spgenrich.base\0"));
    requests.put_slice(&message(frontend::SYNC, &[]));
    conv.send(requests.freeze()).await?;
    conv.collect(|kind, _| kind == b'3').await?;
    Ok(())
}
