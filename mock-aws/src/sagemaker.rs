//! SageMaker Runtime `InvokeEndpoint`: the deterministic models by endpoint name, CSV and JSON
//! bodies, and the faults injected by endpoint name.

use super::*;

pub(crate) fn invoke_endpoint(
    state: &State,
    request_id: &str,
    endpoint: &str,
    accept: &str,
    body: &[u8],
) -> Reply {
    let text = String::from_utf8_lossy(body);
    let records = match models::parse_csv(&text) {
        Ok(records) => records,
        Err(why) => {
            return error(
                StatusCode::BAD_REQUEST,
                request_id,
                "ValidationError",
                &why,
                Value::Null,
            )
        }
    };
    if let Ok(mut stats) = state.stats.lock() {
        stats.sagemaker_calls += 1;
        stats.sagemaker_batch_sizes.push(records.len());
    }
    if endpoint.starts_with("access-denied") {
        // As SageMaker words it: the caller's role ARN, the account and the endpoint's ARN.
        let message = format!(
            "User: arn:aws:sts::123456789012:assumed-role/pgenrich/i-0abc is not authorized to \
             perform: sagemaker:InvokeEndpoint on resource: \
             arn:aws:sagemaker:us-east-1:123456789012:endpoint/{endpoint} because no \
             identity-based policy allows the sagemaker:InvokeEndpoint action"
        );
        return error(
            StatusCode::BAD_REQUEST,
            request_id,
            "AccessDeniedException",
            &message,
            Value::Null,
        );
    }
    if endpoint.starts_with("model-error") {
        return error(
            StatusCode::FAILED_DEPENDENCY,
            request_id,
            "ModelError",
            "Received server error (500) from primary with message \"model crashed\"",
            json!({ "OriginalStatusCode": 500, "OriginalMessage": "model crashed" }),
        );
    }
    let mut out = String::new();
    let keep = if endpoint.starts_with("short") {
        records.len().saturating_sub(1)
    } else {
        records.len()
    };
    for record in records.iter().take(keep) {
        if endpoint.starts_with("echo") {
            for (i, field) in record.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                models::csv_field(&mut out, field);
            }
        } else if endpoint.starts_with("bad-csv") {
            out.push_str("\"unterminated");
        } else {
            out.push_str(&models::score(record));
        }
        out.push('\n');
    }
    let content_type = if accept.is_empty() {
        "text/csv"
    } else {
        accept
    };
    reply(
        StatusCode::OK,
        request_id,
        &[
            ("content-type", content_type),
            ("x-Amzn-Invoked-Production-Variant", "AllTraffic"),
        ],
        Bytes::from(out),
    )
}
