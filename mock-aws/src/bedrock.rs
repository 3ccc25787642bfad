//! Amazon Bedrock Runtime `InvokeModel` (restJson1: `POST /model/{modelId}/invoke`, the body is
//! the model's raw input, `content-type` / `accept` say its type and the wanted output's type).
//!
//! The model id picks a deterministic model ([`answer`]): ids starting with a fault name answer
//! that model-level error, `echo…` returns its input, ids containing `embed` are a Titan-style
//! embedding model ([`embedding`]), and any other id describes the request it got. pgenrich's
//! tests compute expected results from these same functions (and, for the differential suite,
//! from SQL versions of them).

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Map, Value};

use crate::{error, reply, Fault, Reply, State};

/// Embedding size when the request gives no `dimensions`.
pub const DEFAULT_DIMENSIONS: usize = 4;
/// Largest `dimensions` the embedding model accepts.
pub const MAX_DIMENSIONS: usize = 1024;

/// What a model makes of a request that reached it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// HTTP 200 with the model's output.
    Output { content_type: String, body: Bytes },
    /// A model-level error, as Bedrock names it.
    Fault {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
}

/// Answers one `InvokeModel` request whose path label (still percent-encoded) is `label`. Only
/// requests that reach a model (a success or a model's fault) count in the stats; an undecodable
/// id or an input the embedding model refuses is turned away before, as SageMaker's mock does
/// with unparsable CSV.
pub(crate) fn invoke_model(
    state: &State,
    request_id: &str,
    label: &str,
    content_type: &str,
    accept: &str,
    body: &[u8],
) -> Reply {
    let invalid = |message: &str| {
        error(
            StatusCode::BAD_REQUEST,
            request_id,
            "ValidationException",
            message,
            Value::Null,
        )
    };
    let Some(model) = decode_label(label).filter(|id| !id.is_empty()) else {
        return invalid("The provided model identifier is invalid.");
    };
    let answer = match answer(&model, content_type, accept, body) {
        Ok(answer) => answer,
        Err(why) => return invalid(&why),
    };
    if let Ok(mut stats) = state.stats.lock() {
        stats.bedrock_calls += 1;
        stats.bedrock_models.push(model);
    }
    match answer {
        Answer::Output { content_type, body } => reply(
            StatusCode::OK,
            request_id,
            &[("content-type", &content_type)],
            body,
        ),
        Answer::Fault {
            status,
            code,
            message,
        } => error(status, request_id, code, &message, Value::Null),
    }
}

/// An injected fault in Bedrock's terms: it throttles with HTTP 429 (not the 400 of the other
/// two services), and its 5xx errors are `InternalServerException` / `ServiceUnavailableException`.
pub(crate) fn injected(fault: Fault) -> Option<(StatusCode, &'static str, &'static str)> {
    Some(match fault {
        Fault::None => return None,
        Fault::Throttle => (
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        Fault::Internal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            "injected failure",
        ),
        Fault::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "injected unavailability",
        ),
    })
}

/// Decodes the `%XX` escapes the SDK puts in the model id label (`:` is sent as `%3A`, the `/` of
/// an ARN as `%2F`). `None` for a malformed escape or a result that is not UTF-8, which no SDK
/// sends.
pub fn decode_label(label: &str) -> Option<String> {
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            // `from_str_radix` would take a sign, which is no hex digit here.
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The model behind `model`'s answer to a request; `Err` is the message of a
/// `ValidationException` for an input the model refuses to take. Fault ids are matched first,
/// then `echo`, then `embed`, so `echo-embed` echoes and `model-error-embed` fails.
pub fn answer(
    model: &str,
    content_type: &str,
    accept: &str,
    body: &[u8],
) -> Result<Answer, String> {
    if let Some((status, code, message)) = model_fault(model) {
        return Ok(Answer::Fault {
            status,
            code,
            message,
        });
    }
    let (content_type, body) = if model.starts_with("echo") {
        (echo_content_type(accept), Bytes::copy_from_slice(body))
    } else if model.contains("embed") {
        ("application/json", Bytes::from(embed(content_type, body)?))
    } else {
        (
            "application/json",
            Bytes::from(describe(model, content_type, accept, body.len())),
        )
    };
    Ok(Answer::Output {
        content_type: content_type.to_owned(),
        body,
    })
}

/// The model-level error a fault id answers, in Bedrock's words.
fn model_fault(model: &str) -> Option<(StatusCode, &'static str, String)> {
    let (status, code, message) = if model.starts_with("model-error") {
        (
            StatusCode::FAILED_DEPENDENCY,
            "ModelErrorException",
            "The model returned an error: input rejected".to_owned(),
        )
    } else if model.starts_with("missing") {
        (
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.".to_owned(),
        )
    } else if model.starts_with("access-denied") {
        (
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            format!(
                "User: arn:aws:sts::123456789012:assumed-role/app/i-0abc is not authorized to \
                 perform: bedrock:InvokeModel on resource: \
                 arn:aws:bedrock:us-east-1::foundation-model/{model}"
            ),
        )
    } else if model.starts_with("validation") {
        (
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "Malformed input request: invalid model input".to_owned(),
        )
    } else if model.starts_with("timeout") {
        (
            StatusCode::REQUEST_TIMEOUT,
            "ModelTimeoutException",
            "Model invocation timed out".to_owned(),
        )
    } else if model.starts_with("not-ready") {
        (
            StatusCode::TOO_MANY_REQUESTS,
            "ModelNotReadyException",
            "Model is not ready".to_owned(),
        )
    } else {
        return None;
    };
    Some((status, code, message))
}

/// The echo model answers in the type asked for; the SDK sends no `accept` unless the caller gave
/// one, and `*/*` names no type, so both get JSON (what Bedrock's models answer by default).
pub fn echo_content_type(accept: &str) -> &str {
    if accept.is_empty() || accept == "*/*" {
        "application/json"
    } else {
        accept
    }
}

/// The embedding model's answer to a Titan-style request body
/// (`{"inputText": "...", "dimensions": n}`), or why it refuses it.
fn embed(content_type: &str, body: &[u8]) -> Result<String, String> {
    let malformed = |why: &str| {
        format!("Malformed input request: {why}, please reformat your input and try again.")
    };
    // Parameters such as `; charset=utf-8` do not change the type.
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(format!(
            "Malformed input request: content type '{content_type}' is not supported, use \
             application/json"
        ));
    }
    let request: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(request)) => request,
        Ok(_) => return Err(malformed("#: expected type: JSONObject")),
        Err(_) => return Err(malformed("the body is not valid JSON")),
    };
    let text = match request.get("inputText") {
        Some(Value::String(text)) => text,
        Some(_) => return Err(malformed("#/inputText: expected type: String")),
        None => return Err(malformed("#: required key [inputText] not found")),
    };
    // A JSON null counts as an absent key: callers building the body from nullable values write
    // one.
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(value) => match value.as_u64() {
            Some(n) if (1..=MAX_DIMENSIONS as u64).contains(&n) => n as usize,
            _ => {
                return Err(malformed(&format!(
                    "#/dimensions: {value} is not an integer in 1..={MAX_DIMENSIONS}"
                )))
            }
        },
    };
    // Sorted (serde_json's default map) and inserted (`preserve_order`) key orders agree here.
    let answer = json!({
        "embedding": embedding(text, dimensions),
        "inputTextTokenCount": text.split_whitespace().count(),
    });
    Ok(answer.to_string())
}

/// The embedding of `text`: for i in 0..dimensions, `((L + i * S) mod 1000) / 1000` where L is the
/// number of code points and S their sum — in SQL,
/// `((char_length(t) + i * sum(ascii(c))) % 1000)::float8 / 1000`. Reducing each term modulo 1000
/// first gives the same value as exact integer arithmetic and cannot overflow.
pub fn embedding(text: &str, dimensions: usize) -> Vec<f64> {
    let length = text.chars().count() as u64 % 1000;
    let sum = text
        .chars()
        .fold(0u64, |sum, c| (sum + u64::from(c)) % 1000);
    (0..dimensions as u64)
        .map(|i| ((length + (i % 1000) * sum) % 1000) as f64 / 1000.0)
        .collect()
}

/// The default model's answer: what it was sent, as
/// `{"model":…,"content_type":…,"accept":…,"input_bytes":n}` in exactly this key order (built by
/// hand, since serde_json's map would sort the keys).
pub fn describe(model: &str, content_type: &str, accept: &str, input_bytes: usize) -> String {
    let string = |s: &str| Value::from(s).to_string();
    format!(
        "{{\"model\":{},\"content_type\":{},\"accept\":{},\"input_bytes\":{input_bytes}}}",
        string(model),
        string(content_type),
        string(accept)
    )
}

#[cfg(test)]
mod tests;
