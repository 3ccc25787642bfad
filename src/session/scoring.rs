//! Scoring the ML arguments of a chunk of base rows: each call's inputs read from the rows'
//! fields, sent through the executor via the statement's de-duplication memo, results in row
//! order. Shared by every ML mode (streaming, base + residual, EXPLAIN ANALYZE).

use std::sync::Arc;

use crate::backends::Sentiment;
use crate::enrich::budget::MemoryBudget;
use crate::enrich::{CallError, CallStats, Executor, InvokeInput, ModelInput, SentimentInput};
use crate::sql::plan::{Call, MlFunction};

fn text(value: Option<&[u8]>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(v).into_owned())
}

fn integer(value: Option<&[u8]>, what: &str) -> Result<Option<i64>, CallError> {
    match text(value) {
        None => Ok(None),
        Some(t) => t.trim().parse::<i64>().map(Some).map_err(|_| CallError {
            target: what.to_owned(),
            error: crate::error::InferenceError::InvalidArgument(format!(
                "max_rows_per_batch must be an integer, got {t:?}"
            )),
        }),
    }
}

/// The client's error for a failed call of a statement whose calls are `calls` (named after the
/// first, as the statement's function).
pub fn call_error(error: CallError, calls: &[Call]) -> crate::protocol::ErrorMessage {
    let function = calls
        .first()
        .map(|c| c.function.name())
        .unwrap_or("ML call");
    error.error.to_client(function, &error.target)
}

/// One ML call's results for a chunk.
pub enum Results {
    Sentiment(Vec<Option<Sentiment>>),
    Text(Vec<Option<String>>),
    Embedding(Vec<Option<Vec<f64>>>),
}

fn column<'a>(row: &[Option<&'a [u8]>], index: usize) -> Option<&'a [u8]> {
    row.get(index).copied().flatten()
}

/// Bytes of inputs remembered per statement for de-duplication (see [`crate::enrich::memo`]).
const MEMO_BUDGET: usize = 16 << 20;

/// One statement's memo of inputs already sent.
pub struct Memo {
    /// What the session's role may call: checked before any input is sent.
    grant: Arc<crate::access::Grant>,
    /// The statement's share of call slots and its row cap.
    claim: Arc<crate::enrich::share::Claim>,
    sentiment: crate::enrich::memo::Memo<SentimentInput, Sentiment, CallError>,
    text: crate::enrich::memo::Memo<InvokeInput, String, CallError>,
    model: crate::enrich::memo::Memo<ModelInput, String, CallError>,
}

impl Memo {
    /// An empty memo, charged to `budget`'s share for memos.
    pub fn new(
        budget: &Arc<MemoryBudget>,
        grant: &Arc<crate::access::Grant>,
        claim: Arc<crate::enrich::share::Claim>,
    ) -> Memo {
        let memos = budget.memos();
        Memo {
            grant: Arc::clone(grant),
            claim,
            sentiment: crate::enrich::memo::Memo::charged(MEMO_BUDGET / 3, Some(memos.charge())),
            text: crate::enrich::memo::Memo::charged(MEMO_BUDGET / 3, Some(memos.charge())),
            model: crate::enrich::memo::Memo::charged(MEMO_BUDGET / 3, Some(memos.charge())),
        }
    }
}

/// Refuses the chunk (42501) if the session's role may not call `function` on one of `targets`
/// (endpoint names or languages), before anything is sent.
fn permitted<'a>(
    grant: &crate::access::Grant,
    function: &str,
    targets: impl Iterator<Item = &'a str>,
) -> Result<(), CallError> {
    if matches!(grant, crate::access::Grant::All) {
        return Ok(());
    }
    let mut checked: Vec<&str> = Vec::new();
    for target in targets {
        if checked.contains(&target) {
            continue;
        }
        if !grant.allows(function, target) {
            return Err(CallError {
                target: target.to_owned(),
                error: crate::error::InferenceError::Denied {
                    function: function.to_owned(),
                    role: grant.role().unwrap_or_default().to_owned(),
                },
            });
        }
        checked.push(target);
    }
    Ok(())
}

fn abandoned(function: MlFunction) -> impl Fn() -> CallError {
    move || CallError {
        target: function.name().to_owned(),
        error: crate::error::InferenceError::InvalidArgument(
            "a concurrent call for the same input failed".into(),
        ),
    }
}

/// Every call's results for a chunk of base rows (`parsed`: their fields), in row order.
pub async fn infer(
    executor: &Executor,
    calls: &[Call],
    parsed: &[Vec<Option<&[u8]>>],
    memo: &Memo,
    stats: &mut CallStats,
) -> Result<Vec<Results>, CallError> {
    let mut results = Vec::with_capacity(calls.len());
    for call in calls {
        match call.function {
            MlFunction::DetectSentiment => {
                let inputs = parsed
                    .iter()
                    .map(|row| {
                        Ok(SentimentInput {
                            text: text(column(row, call.first_arg)),
                            language: text(column(row, call.first_arg + 1)),
                            max_rows_per_batch: if call.arg_count > 2 {
                                integer(column(row, call.first_arg + 2), "max_rows_per_batch")?
                            } else {
                                None
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, CallError>>()?;
                permitted(
                    &memo.grant,
                    crate::access::DETECT_SENTIMENT,
                    inputs.iter().filter_map(|i| i.language.as_deref()),
                )?;
                let stats = &mut *stats;
                let out = memo
                    .sentiment
                    .resolve(
                        inputs,
                        async |misses: &[SentimentInput]| {
                            executor.detect_sentiment(misses, &memo.claim, stats).await
                        },
                        abandoned(call.function),
                    )
                    .await?;
                results.push(Results::Sentiment(out));
            }
            MlFunction::InvokeEndpoint => {
                let inputs = parsed
                    .iter()
                    .map(|row| {
                        Ok(InvokeInput {
                            endpoint: text(column(row, call.first_arg)),
                            max_rows_per_batch: integer(
                                column(row, call.first_arg + 1),
                                "max_rows_per_batch",
                            )?,
                            fields: (2..call.arg_count)
                                .map(|i| text(column(row, call.first_arg + i)))
                                .collect(),
                        })
                    })
                    .collect::<Result<Vec<_>, CallError>>()?;
                permitted(
                    &memo.grant,
                    crate::access::INVOKE_ENDPOINT,
                    inputs.iter().filter_map(|i| i.endpoint.as_deref()),
                )?;
                let stats = &mut *stats;
                let out = memo
                    .text
                    .resolve(
                        inputs,
                        async |misses: &[InvokeInput]| {
                            executor.invoke_endpoint(misses, &memo.claim, stats).await
                        },
                        abandoned(call.function),
                    )
                    .await?;
                results.push(Results::Text(out));
            }
            MlFunction::InvokeModel | MlFunction::InvokeModelGetEmbeddings => {
                let embeddings = call.function == MlFunction::InvokeModelGetEmbeddings;
                let arg = |row: &[Option<&[u8]>], i: usize| text(column(row, call.first_arg + i));
                let inputs: Vec<ModelInput> = parsed
                    .iter()
                    .map(|row| ModelInput {
                        model_id: arg(row, 0),
                        content_type: arg(row, 1),
                        accept: if embeddings {
                            Some(crate::enrich::models::EMBEDDINGS_ACCEPT.into())
                        } else {
                            arg(row, 2)
                        },
                        body: arg(row, 3),
                    })
                    .collect();
                permitted(
                    &memo.grant,
                    call.function.name(),
                    inputs.iter().filter_map(|i| i.model_id.as_deref()),
                )?;
                let stats = &mut *stats;
                let out = memo
                    .model
                    .resolve(
                        inputs.clone(),
                        async |misses: &[ModelInput]| {
                            executor.invoke_model(misses, &memo.claim, stats).await
                        },
                        abandoned(call.function),
                    )
                    .await?;
                if !embeddings {
                    results.push(Results::Text(out));
                    continue;
                }
                // The array at each row's json_key of its model's response.
                let vectors = parsed
                    .iter()
                    .zip(out)
                    .zip(&inputs)
                    .map(|((row, response), input)| {
                        let (Some(response), Some(key)) = (response, arg(row, 2)) else {
                            return Ok(None);
                        };
                        crate::enrich::models::embedding(&response, &key)
                            .map(Some)
                            .map_err(|error| CallError {
                                target: input.model_id.clone().unwrap_or_default(),
                                error,
                            })
                    })
                    .collect::<Result<Vec<_>, CallError>>()?;
                results.push(Results::Embedding(vectors));
            }
        }
    }
    Ok(results)
}
