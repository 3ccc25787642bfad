//! Comprehend `DetectSentiment` and `BatchDetectSentiment`: the deterministic sentiment model,
//! the service's language list, size limits and per-item errors.

use super::*;

fn sentiment_json(text: &str) -> Value {
    let s = models::sentiment(text);
    json!({
        "Sentiment": s.label,
        "SentimentScore": {
            "Positive": s.positive, "Negative": s.negative, "Neutral": s.neutral, "Mixed": s.mixed
        }
    })
}

pub(crate) fn comprehend(state: &State, request_id: &str, target: &str, body: &[u8]) -> Reply {
    let bad = |message: &str| {
        error(
            StatusCode::BAD_REQUEST,
            request_id,
            "InvalidRequestException",
            message,
            Value::Null,
        )
    };
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return bad("request body is not JSON");
    };
    let language = request["LanguageCode"].as_str().unwrap_or_default();
    let texts: Vec<String> = match target {
        "Comprehend_20171127.BatchDetectSentiment" => match request["TextList"].as_array() {
            Some(list) => list
                .iter()
                .map(|t| t.as_str().unwrap_or_default().to_owned())
                .collect(),
            None => return bad("TextList is required"),
        },
        "Comprehend_20171127.DetectSentiment" => match request["Text"].as_str() {
            Some(text) => vec![text.to_owned()],
            None => return bad("Text is required"),
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                request_id,
                "UnknownOperationException",
                target,
                Value::Null,
            )
        }
    };
    if let Ok(mut stats) = state.stats.lock() {
        stats.comprehend_calls += 1;
        stats.comprehend_batch_sizes.push(texts.len());
    }
    if !LANGUAGES.contains(&language) {
        return error(
            StatusCode::BAD_REQUEST,
            request_id,
            "UnsupportedLanguageException",
            &format!("Language code '{language}' is not supported"),
            Value::Null,
        );
    }
    if texts.len() > 25 {
        return error(
            StatusCode::BAD_REQUEST,
            request_id,
            "BatchSizeLimitExceededException",
            "at most 25 documents",
            Value::Null,
        );
    }
    if texts.iter().any(|t| t.len() > 5000 || t.is_empty()) {
        return error(
            StatusCode::BAD_REQUEST,
            request_id,
            "TextSizeLimitExceededException",
            "Input text size exceeds limit. Max length of request text allowed is 5000 bytes",
            Value::Null,
        );
    }
    let body = if target.ends_with(".DetectSentiment") {
        sentiment_json(&texts[0])
    } else {
        let (mut results, mut errors) = (Vec::new(), Vec::new());
        for (index, text) in texts.iter().enumerate() {
            if text.contains("ITEM_ERROR") {
                errors.push(json!({
                    "Index": index, "ErrorCode": "INTERNAL_SERVER_ERROR",
                    "ErrorMessage": "Internal server error for this document"
                }));
            } else {
                let mut result = sentiment_json(text);
                result["Index"] = json!(index);
                results.push(result);
            }
        }
        json!({ "ResultList": results, "ErrorList": errors })
    };
    reply(
        StatusCode::OK,
        request_id,
        &[("content-type", "application/x-amz-json-1.1")],
        Bytes::from(body.to_string()),
    )
}
