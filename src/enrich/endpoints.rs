//! `aws_sagemaker.invoke_endpoint` through the executor: inputs grouped by endpoint and batch
//! size, identical records sent once, `text/csv` bodies within the payload limit, batches run
//! concurrently, each record's answer back at its rows.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::stream::FuturesUnordered;

use super::{csv, dedup, gather, share, CallError, CallStats, Executor, InvokeInput};
use crate::backends::sagemaker;
use crate::error::InferenceError;

impl Executor {
    pub(super) async fn invoke_endpoint_calls(
        &self,
        inputs: &[InvokeInput],
        claim: &Arc<share::Claim>,
        stats: &mut CallStats,
    ) -> Result<Vec<Option<String>>, CallError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let backend = &self.backends.endpoints;
        let mut groups: HashMap<(&str, usize), Vec<usize>> = HashMap::new();
        for (row, input) in inputs.iter().enumerate() {
            let Some(endpoint) = &input.endpoint else {
                return Err(CallError {
                    target: "NULL".into(),
                    error: InferenceError::InvalidArgument("endpoint name must not be NULL".into()),
                });
            };
            let rows = self
                .batch_rows(input.max_rows_per_batch, usize::MAX)
                .map_err(|error| CallError {
                    target: endpoint.clone(),
                    error,
                })?;
            groups
                .entry((endpoint.as_str(), rows))
                .or_default()
                .push(row);
        }
        stats.rows += inputs.len() as u64;
        // Plan every group's batches: unique records, CSV bodies within the payload limit.
        struct Batch<'a> {
            group: usize,
            endpoint: &'a str,
            body: String,
            records: usize,
        }
        let mut batches = Vec::new();
        let mut plans = Vec::new();
        for (group, ((endpoint, rows), members)) in groups.iter().enumerate() {
            let (unique, positions) = dedup(members, |&row| &inputs[row].fields);
            stats.duplicates_saved += (members.len() - unique.len()) as u64;
            let mut body = String::new();
            let mut records = 0;
            for &row in &unique {
                let mut record = String::new();
                csv::write_record(&mut record, inputs[row].fields.iter().map(|f| f.as_deref()));
                if record.len() > sagemaker::MAX_PAYLOAD_BYTES {
                    return Err(CallError {
                        target: endpoint.to_string(),
                        error: InferenceError::PayloadTooLarge {
                            bytes: record.len(),
                            limit: sagemaker::MAX_PAYLOAD_BYTES,
                        },
                    });
                }
                if records == *rows || body.len() + record.len() > sagemaker::MAX_PAYLOAD_BYTES {
                    batches.push(Batch {
                        group,
                        endpoint,
                        body: std::mem::take(&mut body),
                        records,
                    });
                    records = 0;
                }
                body.push_str(&record);
                records += 1;
            }
            if records > 0 {
                batches.push(Batch {
                    group,
                    endpoint,
                    body,
                    records,
                });
            }
            plans.push((members, positions));
        }
        let rows: usize = batches.iter().map(|b| b.records).sum();
        if let Some(batch) = batches.first() {
            claim.charge_rows(rows as u64).map_err(|error| CallError {
                target: batch.endpoint.to_owned(),
                error,
            })?;
        }
        stats.calls += batches.len() as u64;
        let calls: FuturesUnordered<_> = batches
            .into_iter()
            .enumerate()
            .map(|(index, batch)| async move {
                let fail = |error| CallError {
                    target: batch.endpoint.to_owned(),
                    error,
                };
                let _permits = self
                    .permits(batch.endpoint, batch.records, claim)
                    .await
                    .map_err(fail)?;
                let (backend, endpoint) = (Arc::clone(backend), batch.endpoint.to_owned());
                let (sent, expected) = (batch.body.len(), batch.records);
                let started = std::time::Instant::now();
                let answer = self
                    .call(async move { backend.invoke(&endpoint, batch.body).await })
                    .await;
                let received = answer.as_ref().map_or(0, |(body, _)| body.len());
                let records = answer.and_then(|(body, request_id)| {
                    let malformed = |message: String| InferenceError::Malformed {
                        message,
                        request_id: request_id.clone(),
                    };
                    let records = csv::split_records(&body).map_err(|why| malformed(why.into()))?;
                    if records.len() != expected {
                        return Err(malformed(format!(
                            "{} records returned for {expected} inputs",
                            records.len()
                        )));
                    }
                    Ok(records.into_iter().map(str::to_owned).collect::<Vec<_>>())
                });
                let records = self.finished(
                    crate::metrics::InferenceCall {
                        function: "invoke_endpoint",
                        target: batch.endpoint,
                        rows: expected,
                        bytes_sent: sent,
                        bytes_received: received,
                        elapsed: started.elapsed(),
                        error: None,
                    },
                    records,
                );
                let records = records.map_err(fail)?;
                Ok((index, batch.group, records))
            })
            .collect();
        gather(calls, plans, inputs.len()).await
    }
}
