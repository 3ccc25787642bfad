//! `aws_comprehend.detect_sentiment` on Amazon Comprehend: `BatchDetectSentiment`, at most 25
//! documents of at most 5,000 UTF-8 bytes per call (`DetectSentiment` for a single document).

use aws_sdk_comprehend::types::{LanguageCode, SentimentType};
use aws_sdk_comprehend::Client;

use super::{classify, BoxFuture, Sentiment, SentimentBackend, SentimentLabel};
use crate::error::InferenceError;

/// Documents per BatchDetectSentiment call (service limit).
pub const MAX_BATCH: usize = 25;
/// Bytes per document (service limit).
pub const MAX_DOCUMENT_BYTES: usize = 5000;

pub struct ComprehendBackend {
    client: Client,
}

impl ComprehendBackend {
    pub fn new(client: Client) -> ComprehendBackend {
        ComprehendBackend { client }
    }
}

impl SentimentBackend for ComprehendBackend {
    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn detect<'a>(
        &'a self,
        language: &'a str,
        texts: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Sentiment>, InferenceError>> {
        Box::pin(async move {
            if texts.len() == 1 {
                return self.detect_one(language, texts).await;
            }
            let count = texts.len();
            let output = self
                .client
                .batch_detect_sentiment()
                .language_code(LanguageCode::from(language))
                .set_text_list(Some(texts))
                .send()
                .await
                .map_err(classify)?;
            let request_id =
                aws_sdk_comprehend::operation::RequestId::request_id(&output).map(str::to_owned);
            if let Some(item) = output.error_list().first() {
                return Err(InferenceError::Item {
                    index: item.index().unwrap_or(-1),
                    code: item.error_code().unwrap_or("Unknown").to_owned(),
                    message: item.error_message().unwrap_or_default().to_owned(),
                    request_id,
                });
            }
            let mut results: Vec<Option<Sentiment>> = vec![None; count];
            for item in output.result_list() {
                let index = item.index().and_then(|i| usize::try_from(i).ok());
                let slot = index.and_then(|i| results.get_mut(i));
                let (Some(slot), Some(sentiment)) = (slot, item.sentiment()) else {
                    return Err(malformed(
                        "a result with a missing or invalid Index",
                        &request_id,
                    ));
                };
                let scores = item.sentiment_score();
                let (label, score) = match sentiment {
                    SentimentType::Positive => {
                        (SentimentLabel::Positive, scores.and_then(|s| s.positive()))
                    }
                    SentimentType::Negative => {
                        (SentimentLabel::Negative, scores.and_then(|s| s.negative()))
                    }
                    SentimentType::Neutral => {
                        (SentimentLabel::Neutral, scores.and_then(|s| s.neutral()))
                    }
                    SentimentType::Mixed => (SentimentLabel::Mixed, scores.and_then(|s| s.mixed())),
                    other => {
                        return Err(malformed(
                            &format!("unknown sentiment {}", other.as_str()),
                            &request_id,
                        ))
                    }
                };
                *slot = Some(Sentiment {
                    label,
                    confidence: score.unwrap_or(f32::NAN),
                });
            }
            results
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| malformed(&format!("fewer than {count} results"), &request_id))
        })
    }
}

impl ComprehendBackend {
    /// A batch of one goes out as `DetectSentiment` (same price, and the call emulators such as
    /// moto implement).
    async fn detect_one(
        &self,
        language: &str,
        mut texts: Vec<String>,
    ) -> Result<Vec<Sentiment>, InferenceError> {
        let text = texts.pop().unwrap_or_default();
        let output = self
            .client
            .detect_sentiment()
            .language_code(LanguageCode::from(language))
            .text(text)
            .send()
            .await
            .map_err(classify)?;
        let request_id =
            aws_sdk_comprehend::operation::RequestId::request_id(&output).map(str::to_owned);
        let scores = output.sentiment_score();
        let (label, score) = match output.sentiment() {
            Some(SentimentType::Positive) => {
                (SentimentLabel::Positive, scores.and_then(|s| s.positive()))
            }
            Some(SentimentType::Negative) => {
                (SentimentLabel::Negative, scores.and_then(|s| s.negative()))
            }
            Some(SentimentType::Neutral) => {
                (SentimentLabel::Neutral, scores.and_then(|s| s.neutral()))
            }
            Some(SentimentType::Mixed) => (SentimentLabel::Mixed, scores.and_then(|s| s.mixed())),
            _ => return Err(malformed("no or an unknown sentiment", &request_id)),
        };
        Ok(vec![Sentiment {
            label,
            confidence: score.unwrap_or(f32::NAN),
        }])
    }
}

fn malformed(what: &str, request_id: &Option<String>) -> InferenceError {
    InferenceError::Malformed {
        message: format!("BatchDetectSentiment returned {what}"),
        request_id: request_id.clone(),
    }
}
