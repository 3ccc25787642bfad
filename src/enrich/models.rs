//! Foundation models through the executor (`aws_bedrock.invoke_model`,
//! `aws_bedrock.invoke_model_get_embeddings`): Bedrock's InvokeModel has no batch API, so each
//! distinct input of a chunk is one call, the calls run concurrently under the same limits as
//! every other (the statement's share, the per-model limit — a model id is the "endpoint" of
//! `max_concurrent_calls_per_endpoint` and `fleet_max_calls_per_endpoint` — and the process's),
//! with the same retries, errors, metrics and cancel safety.

use std::sync::Arc;

use futures_util::stream::FuturesUnordered;

use super::{dedup, gather, share, CallError, CallStats, Executor};
use crate::error::InferenceError;

/// One row's input to a model: `model_input` goes as the request body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelInput {
    pub model_id: Option<String>,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    pub body: Option<String>,
}

/// The Accept of `invoke_model_get_embeddings`' calls (embedding models answer JSON).
pub const EMBEDDINGS_ACCEPT: &str = "application/json";

impl ModelInput {
    /// The model id, checked (a NULL id or content type cannot be sent).
    fn check(&self) -> Result<&str, InferenceError> {
        let model = self
            .model_id
            .as_deref()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| InferenceError::InvalidArgument("model_id must not be NULL".into()))?;
        if self.content_type.is_none() {
            return Err(InferenceError::InvalidArgument(
                "content_type must not be NULL".into(),
            ));
        }
        Ok(model)
    }
}

impl Executor {
    /// Each row's response body, in order: NULL for a NULL `model_input` (no call); a NULL
    /// model id or content type fails the chunk with `22023` before any call.
    pub(super) async fn invoke_model_calls(
        &self,
        inputs: &[ModelInput],
        claim: &Arc<share::Claim>,
        stats: &mut CallStats,
    ) -> Result<Vec<Option<String>>, CallError> {
        let mut members = Vec::new();
        for (row, input) in inputs.iter().enumerate() {
            if input.body.is_none() {
                continue;
            }
            input.check().map_err(|error| CallError {
                target: input.model_id.clone().unwrap_or_default(),
                error,
            })?;
            members.push(row);
        }
        stats.rows += inputs.len() as u64;
        let (unique, positions) = dedup(&members, |&row| &inputs[row]);
        stats.duplicates_saved += (members.len() - unique.len()) as u64;
        if let Some(&first) = unique.first() {
            claim
                .charge_rows(unique.len() as u64)
                .map_err(|error| CallError {
                    target: inputs[first].model_id.clone().unwrap_or_default(),
                    error,
                })?;
        }
        stats.calls += unique.len() as u64;
        let backend = &self.backends.models;
        let calls: FuturesUnordered<_> = unique
            .iter()
            .enumerate()
            .map(|(index, &row)| async move {
                let input = &inputs[row];
                let model = input.model_id.as_deref().unwrap_or_default();
                let fail = |error| CallError {
                    target: model.to_owned(),
                    error,
                };
                let _permits = self.permits(model, 1, claim).await.map_err(fail)?;
                let backend = Arc::clone(backend);
                let (owned, content_type, accept, body) = (
                    model.to_owned(),
                    input.content_type.clone().unwrap_or_default(),
                    input.accept.clone().unwrap_or_else(|| "*/*".into()),
                    input.body.clone().unwrap_or_default(),
                );
                let sent = body.len();
                let started = std::time::Instant::now();
                let answer = self
                    .call(async move {
                        backend
                            .invoke(&owned, &content_type, &accept, body)
                            .await
                            .map(|(text, _request_id)| text)
                    })
                    .await;
                let received = answer.as_ref().map_or(0, String::len);
                let answer = self.finished(
                    crate::metrics::InferenceCall {
                        function: "invoke_model",
                        target: model,
                        rows: 1,
                        bytes_sent: sent,
                        bytes_received: received,
                        elapsed: started.elapsed(),
                        error: None,
                    },
                    answer,
                );
                Ok::<_, CallError>((index, 0, vec![answer.map_err(fail)?]))
            })
            .collect();
        let member_rows = members.clone();
        gather(calls, vec![(&member_rows, positions)], inputs.len()).await
    }
}

/// The array of numbers at `json_key` of a model's JSON response (`invoke_model_get_embeddings`).
/// The key is a top-level member name; a response without an array of numbers there is the
/// model's error (`38000`), naming the key.
pub fn embedding(response: &str, json_key: &str) -> Result<Vec<f64>, InferenceError> {
    let malformed = |why: &str| InferenceError::Malformed {
        message: format!("the model's response has {why} at json_key \"{json_key}\""),
        request_id: None,
    };
    let value: serde_json::Value =
        serde_json::from_str(response).map_err(|_| malformed("no JSON object"))?;
    let array = value
        .get(json_key)
        .ok_or_else(|| malformed("no member"))?
        .as_array()
        .ok_or_else(|| malformed("no array"))?;
    array
        .iter()
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| malformed("an element that is not a number"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_read_at_their_key_and_anything_else_is_the_models_error() {
        assert_eq!(
            embedding(r#"{"embedding":[0.5,-1,2e-5],"n":3}"#, "embedding").expect("array"),
            vec![0.5, -1.0, 2e-5]
        );
        assert_eq!(
            embedding(r#"{"e":[]}"#, "e").expect("empty"),
            Vec::<f64>::new()
        );
        for (body, key) in [
            ("not json", "embedding"),
            (r#"{"embedding":[1]}"#, "vector"),
            (r#"{"embedding":"1,2"}"#, "embedding"),
            (r#"{"embedding":[1,"2"]}"#, "embedding"),
            (r#"{"embedding":[[1,2]]}"#, "embedding"),
            (r#"[1,2]"#, "embedding"),
        ] {
            let error = embedding(body, key).expect_err(body);
            assert_eq!(error.sqlstate().code(), "38000", "{body}");
            assert!(error.to_string().contains(key), "{error}");
        }
    }

    #[test]
    fn null_model_ids_and_content_types_are_refused() {
        let input = |model: Option<&str>, ct: Option<&str>| ModelInput {
            model_id: model.map(Into::into),
            content_type: ct.map(Into::into),
            accept: None,
            body: Some("{}".into()),
        };
        assert!(input(Some("m"), Some("application/json")).check().is_ok());
        for bad in [
            input(None, Some("a")),
            input(Some(""), Some("a")),
            input(Some("m"), None),
        ] {
            assert_eq!(bad.check().expect_err("refused").sqlstate().code(), "22023");
        }
    }
}
