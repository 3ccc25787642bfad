//! Running a two-phase ML statement ([`ResidualPlan`]) for a simple-protocol Query, on the
//! client's own upstream session:
//!
//! 1. outside a transaction block, `BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY` (hidden
//!    from the client), so both phases see one snapshot; inside one, the client's transaction;
//! 2. the base statement is described, the carried columns' type names looked up, and its rows
//!    fetched (ML arguments as text, carried values in binary where the type allows, so nothing
//!    depends on output settings);
//! 3. the executor scores the arguments (batched, de-duplicated);
//! 4. the residual runs over the enriched rows, bound as one array parameter per column, and its
//!    RowDescription, rows and CommandComplete go to the client as PostgreSQL produced them;
//! 5. COMMIT (or ROLLBACK after an error) of the hidden transaction, then ReadyForQuery.
//!
//! Errors keep PostgreSQL's semantics: an upstream error is relayed as it came; an inference
//! error inside the client's transaction block makes the upstream fail a stand-in statement so
//! the block is aborted exactly as by a native error.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::enrich::CallStats;
use crate::error::{SessionError, SqlState};
use crate::protocol::{frontend, ErrorMessage};
use crate::session::conversation::requests::{execute_body, named, named_body, parse_body};
use crate::session::conversation::transaction::Failure;
use crate::session::conversation::{canceled, Conversation, Outcome};
use crate::session::rows::{message, split_row};
use crate::session::scoring::{call_error, infer, Memo, Results};
use crate::session::statements::{MlPortal, MlStatement, Shape};
use crate::sql::residual::{BlockPlan, CarriedType, Described, ResidualPlan, Write};

mod catalog;
mod chunked;
mod pipeline;
mod prepared;
mod snapshot;

use catalog::{array, only_row_functions, shape};
use chunked::{run_chunked, run_chunked_execute};
pub use prepared::{handle_parse, run_execute};
pub use snapshot::{end_snapshot, handle_bind};

/// The base statement's name on the upstream while pgenrich runs it.
const BASE_STATEMENT: &str = "pgenrich.base";

const TEXT_OID: u32 = 25;
const VARCHAR_OID: u32 = 1043;
const FLOAT4_OID: u32 = 700;

/// Runs `plan` for a simple-protocol Query: everything up to and including ReadyForQuery goes to
/// the client.
pub async fn run_query(
    conv: &mut Conversation<'_>,
    plan: ResidualPlan,
) -> Result<Outcome, SessionError> {
    let mut outcome = Outcome::default();
    let Some(wrap) = conv.begin_snapshot(!plan.writes()).await? else {
        return conv.ready(b"I", outcome).await;
    };
    if let Some(failure) = check_writable(conv, &plan).await? {
        let failed = conv.report(Some(failure), wrap).await?;
        return conv.finish_query(wrap, failed, outcome).await;
    }
    let streams = match &plan.row_local {
        Some(functions) => match only_row_functions(conv, functions, true).await? {
            Ok(streams) => streams,
            Err(body) => {
                conv.to_client(message(b'E', &body));
                return conv.finish_query(wrap, true, outcome).await;
            }
        },
        None => false,
    };
    let failure = if streams {
        run_chunked(conv, &plan, &mut outcome).await?
    } else {
        run_phases(conv, &plan, &mut outcome).await?
    };
    let failed = conv.report(failure, wrap).await?;
    conv.finish_query(wrap, failed, outcome).await
}

/// Runs `plan` as one statement of a multi-statement Query, inside the transaction the caller
/// holds open: its answer goes to the client but no ReadyForQuery; an inference error aborts the
/// transaction as a native error would. Whether it failed.
pub async fn run_statement(
    conv: &mut Conversation<'_>,
    plan: &ResidualPlan,
    outcome: &mut Outcome,
) -> Result<bool, SessionError> {
    let failure = match check_writable(conv, plan).await? {
        Some(failure) => Some(failure),
        None => run_phases(conv, plan, outcome).await?,
    };
    conv.report(failure, false).await
}

/// A statement that writes, in a READ ONLY transaction (or on a standby), would fail only after
/// every base row had been scored and billed: find out first. The failure, if it cannot run.
async fn check_writable(
    conv: &mut Conversation<'_>,
    plan: &ResidualPlan,
) -> Result<Option<Failure>, SessionError> {
    let Some(write) = &plan.modifies else {
        return Ok(None);
    };
    let (error, row) = conv.hidden_query_row(&read_only_check(write)).await?;
    if let Some(error) = error {
        conv.to_client(message(b'E', &error));
        return Ok(Some(Failure::Relayed));
    }
    Ok(read_only(write, row.as_deref()).map(Failure::Ours))
}

/// [`check_writable`] at the first Execute of a portal that writes, in the extended protocol
/// (the check runs as a statement of pgenrich's own, answered before the client's Sync).
/// Whether the Execute may go on; if not, the client has its error and the upstream skips to
/// Sync.
pub(super) async fn check_writable_execute(
    conv: &mut Conversation<'_>,
    plan: &ResidualPlan,
) -> Result<bool, SessionError> {
    const CHECK: &str = "pgenrich.read_only";
    let Some(write) = &plan.modifies else {
        return Ok(true);
    };
    let mut requests = BytesMut::new();
    requests.put_slice(&message(
        frontend::PARSE,
        &parse_body(CHECK, &read_only_check(write), &[]),
    ));
    let mut bind = named_body(CHECK);
    bind.extend_from_slice(&named_body(CHECK));
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    requests.put_slice(&message(frontend::BIND, &bind));
    requests.put_slice(&message(frontend::EXECUTE, &execute_body(CHECK, 0)));
    requests.put_slice(&message(frontend::CLOSE, &named(b'P', CHECK)));
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', CHECK)));
    requests.put_slice(&message(b'H', &[]));
    conv.send(requests.freeze()).await?;
    let (mut row, mut closed) = (None, 0);
    while closed < 2 {
        let (kind, body) = conv.next().await?;
        match kind {
            b'E' => {
                conv.to_client(message(b'E', &body));
                conv.mark_failed();
                return Ok(false);
            }
            b'D' => row = Some(body),
            b'3' => closed += 1,
            b'1' | b'2' | b'C' => {}
            _ => conv.to_client(message(kind, &body)),
        }
    }
    match read_only(write, row.as_deref()) {
        None => Ok(true),
        Some(error) => {
            conv.fail_execute(error).await?;
            Ok(false)
        }
    }
}

/// PostgreSQL's error for `write` if the check's row says the transaction is read-only.
fn read_only(write: &Write, row: Option<&[u8]>) -> Option<ErrorMessage> {
    row.is_some_and(|r| r.ends_with(b"t")).then(|| {
        ErrorMessage::error(
            SqlState::ReadOnlySqlTransaction,
            format!(
                "cannot execute {} in a read-only transaction",
                write.command.name()
            ),
        )
    })
}

/// A query whose one row is `t` if `write` cannot run in the current transaction because it is
/// READ ONLY (an INSERT into a temporary table can, as natively).
fn read_only_check(write: &Write) -> String {
    let mut sql = String::from("SELECT pg_catalog.current_setting('transaction_read_only') = 'on'");
    if let Some(table) = &write.table {
        let literal = table.replace('\\', "\\\\").replace('\'', "''");
        sql.push_str(&format!(
            " AND COALESCE((SELECT c.relpersistence <> 't' FROM pg_catalog.pg_class c \
             WHERE c.oid = pg_catalog.to_regclass(E'{literal}')), true)"
        ));
    }
    sql
}

async fn run_phases(
    conv: &mut Conversation<'_>,
    plan: &ResidualPlan,
    outcome: &mut Outcome,
) -> Result<Option<Failure>, SessionError> {
    let mut params = Vec::new();
    let mut described = Vec::with_capacity(plan.blocks.len());
    for block in &plan.blocks {
        match run_base(conv, block, outcome).await? {
            Ok((shape, block_params)) => {
                described.push(shape.described());
                params.extend(block_params);
            }
            Err(failure) => return Ok(Some(failure)),
        }
    }
    run_residual(conv, plan, &described, params, outcome).await
}

/// Describes, fetches and scores one block's base rows; its residual parameters.
async fn run_base(
    conv: &mut Conversation<'_>,
    plan: &BlockPlan,
    outcome: &mut Outcome,
) -> Result<Result<(Shape, Vec<Vec<u8>>), Failure>, SessionError> {
    let shape = match describe_base(conv, plan).await? {
        Ok(shape) => shape,
        Err(failure) => return Ok(Err(failure)),
    };
    let params = match fetch_and_score(conv, plan, &shape, outcome).await? {
        Ok(params) => params,
        Err(failure) => return Ok(Err(failure)),
    };
    Ok(Ok((shape, params)))
}

/// Prepares and describes one block's base statement (as `pgenrich.base`, until
/// [`fetch_and_score`] closes it) and looks up its value columns' types.
pub async fn describe_base(
    conv: &mut Conversation<'_>,
    plan: &BlockPlan,
) -> Result<Result<Shape, Failure>, SessionError> {
    // 1. Describe the base statement (closing one an earlier failure may have left behind:
    // prepared statements outlive transactions).
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', BASE_STATEMENT)));
    requests.put_slice(&message(
        frontend::PARSE,
        &parse_body(BASE_STATEMENT, &plan.base_sql, &[]),
    ));
    requests.put_slice(&message(frontend::DESCRIBE, &named(b'S', BASE_STATEMENT)));
    requests.put_slice(&message(frontend::SYNC, &[]));
    conv.send(requests.freeze()).await?;
    let mut description = None;
    let failed = conv
        .collect(|kind, body| match kind {
            b'1' | b't' | b'n' | b'3' => true,
            b'T' => {
                description = Some(body.clone());
                true
            }
            _ => false,
        })
        .await?;
    if failed {
        return Ok(Err(Failure::Relayed));
    }
    // 2. The value columns' type names and how they travel.
    let shape = match shape(conv, plan, description.as_deref(), true).await? {
        Ok(shape) => shape,
        Err(body) => {
            conv.to_client(message(b'E', &body));
            close_base(conv).await?;
            return Ok(Err(Failure::Relayed));
        }
    };

    Ok(Ok(shape))
}

/// Fetches the described base statement's rows and scores them: the block's residual parameters.
pub async fn fetch_and_score(
    conv: &mut Conversation<'_>,
    plan: &BlockPlan,
    shape: &Shape,
    outcome: &mut Outcome,
) -> Result<Result<Vec<Vec<u8>>, Failure>, SessionError> {
    // 3. Fetch the base rows.
    let mut bind = BytesMut::new();
    bind.put_u8(0); // unnamed portal
    bind.put_slice(BASE_STATEMENT.as_bytes());
    bind.put_u8(0);
    bind.put_u16(0); // parameter formats
    bind.put_u16(0); // parameters
    let formats = shape.base_formats();
    bind.put_u16(formats.len() as u16);
    for format in formats {
        bind.put_i16(format);
    }
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::BIND, &bind));
    requests.put_slice(&message(frontend::EXECUTE, b"\0\0\0\0\0"));
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', BASE_STATEMENT)));
    requests.put_slice(&message(frontend::SYNC, &[]));
    conv.send(requests.freeze()).await?;
    let rows = match conv.fetch_rows().await? {
        Ok(rows) => rows,
        Err(failure) => return Ok(Err(failure)),
    };

    // 4. Inference, stopped by a cancel request or the client hanging up.
    let memo = conv.new_memo();
    Ok(score_rows(conv, plan, shape, &rows, &memo, outcome)
        .await?
        .map_err(Failure::Ours))
}

/// Scores base rows (`memo`: the inputs scored so far); the residual's parameters for them, or
/// pgenrich's error for the client.
async fn score_rows(
    conv: &mut Conversation<'_>,
    plan: &BlockPlan,
    shape: &Shape,
    rows: &[Bytes],
    memo: &Memo,
    outcome: &mut Outcome,
) -> Result<Result<Vec<Vec<u8>>, ErrorMessage>, SessionError> {
    let parsed: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| split_row(r)).collect();
    outcome.base_rows += parsed.len() as u64;
    let started = std::time::Instant::now();
    let results = match score(conv, plan, &parsed, memo, outcome).await? {
        Ok(results) => results,
        Err(error) => return Ok(Err(error)),
    };
    outcome.inference += started.elapsed();
    Ok(Ok(residual_parameters(shape, &parsed, &results)))
}

/// Runs the residual over every block's enriched rows, relaying its answer to the client.
async fn run_residual(
    conv: &mut Conversation<'_>,
    plan: &ResidualPlan,
    described: &[Described],
    params: Vec<Vec<u8>>,
    outcome: &mut Outcome,
) -> Result<Option<Failure>, SessionError> {
    // 5. The residual over the enriched rows.
    let residual = plan.residual_sql(described, 1);
    let mut bind = BytesMut::new();
    bind.put_u8(0);
    bind.put_u8(0);
    bind.put_u16(1);
    bind.put_i16(1); // every parameter in binary
    bind.put_u16(params.len() as u16);
    for param in &params {
        bind.put_i32(param.len() as i32);
        bind.put_slice(param);
    }
    bind.put_u16(0); // results in text, as the simple protocol has them
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::PARSE, &parse_body("", &residual, &[])));
    requests.put_slice(&message(frontend::BIND, &bind));
    requests.put_slice(&message(frontend::DESCRIBE, b"P\0"));
    requests.put_slice(&message(frontend::EXECUTE, b"\0\0\0\0\0"));
    requests.put_slice(&message(frontend::SYNC, &[]));
    conv.send(requests.freeze()).await?;
    let mut sent = 0u64;
    let failed = conv
        .collect(|kind, _| {
            if kind == b'D' {
                sent += 1;
            }
            // NoData: the Describe of a residual INSERT without RETURNING (a simple-protocol
            // client expects none).
            matches!(kind, b'1' | b'2' | b'n')
        })
        .await?;
    outcome.rows += sent;
    Ok(failed.then_some(Failure::Relayed))
}

/// Scores the base rows' ML arguments; a cancel request or a failed call gives the client's
/// error, the client hanging up ends the session.
async fn score(
    conv: &mut Conversation<'_>,
    plan: &BlockPlan,
    parsed: &[Vec<Option<&[u8]>>],
    memo: &Memo,
    outcome: &mut Outcome,
) -> Result<Result<Vec<Results>, ErrorMessage>, SessionError> {
    let mut stats = CallStats::default();
    let executor = Arc::clone(conv.executor());
    let inference = infer(&executor, &plan.calls, parsed, memo, &mut stats);
    let Some(results) = conv.guard(inference).await? else {
        return Ok(Err(canceled()));
    };
    outcome.add_calls(&stats);
    Ok(results.map_err(|error| call_error(error, &plan.calls)))
}

/// The residual's array parameters (binary): one per carried column, then each call's results.
pub fn residual_parameters(
    shape: &Shape,
    parsed: &[Vec<Option<&[u8]>>],
    results: &[Results],
) -> Vec<Vec<u8>> {
    let mut params: Vec<Vec<u8>> = Vec::new();
    for (j, &column) in shape.values.iter().enumerate() {
        let oid = if shape.types[j].as_text {
            TEXT_OID
        } else {
            shape.oids[j]
        };
        params.push(array(
            oid,
            parsed.iter().map(|row| row.get(column).copied().flatten()),
        ));
    }
    for result in results {
        match result {
            Results::Sentiment(values) => {
                params.push(array(
                    VARCHAR_OID,
                    values
                        .iter()
                        .map(|v| v.map(|s| s.label.as_str().as_bytes())),
                ));
                let confidences: Vec<Option<[u8; 4]>> = values
                    .iter()
                    .map(|v| v.map(|s| s.confidence.to_be_bytes()))
                    .collect();
                params.push(array(
                    FLOAT4_OID,
                    confidences.iter().map(|c| c.as_ref().map(|b| &b[..])),
                ));
            }
            Results::Text(values) => params.push(array(
                VARCHAR_OID,
                values.iter().map(|v| v.as_deref().map(str::as_bytes)),
            )),
            // Each row's array as its text literal (see ResidualPlan::residual_sql).
            Results::Embedding(values) => {
                let literals: Vec<Option<Vec<u8>>> = values
                    .iter()
                    .map(|v| {
                        v.as_deref()
                            .map(|v| crate::session::rows::float8_array(v, 0))
                    })
                    .collect();
                params.push(array(TEXT_OID, literals.iter().map(|l| l.as_deref())));
            }
        }
    }
    params
}

/// Closes the base statement after a failure between its Parse and its Execute.
async fn close_base(conv: &mut Conversation<'_>) -> Result<(), SessionError> {
    let mut requests = BytesMut::new();
    requests.put_slice(&message(frontend::CLOSE, &named(b'S', BASE_STATEMENT)));
    requests.put_slice(&message(frontend::SYNC, &[]));
    conv.send(requests.freeze()).await?;
    conv.collect(|kind, _| kind == b'3').await?;
    Ok(())
}
