//! `aws_comprehend.detect_sentiment` in-process: the VADER lexicon model (`vader_sentiment`, its
//! lexicon compiled in), for development and demos without an AWS account.
//!
//! VADER scores a text with `pos`, `neg` and `neu` (the shares of positive, negative and neutral
//! words, summing to 1) and `compound` (the normalised sum of valences, in [-1, 1]). The mapping
//! to Comprehend's labels:
//!
//! | label    | when                                                    | confidence         |
//! |----------|---------------------------------------------------------|--------------------|
//! | MIXED    | `pos` ≥ 0.1 and `neg` ≥ 0.1 and \|`compound`\| < 0.5    | `pos + neg`        |
//! | POSITIVE | otherwise, `compound` ≥ 0.05                            | `(1 + compound)/2` |
//! | NEGATIVE | otherwise, `compound` ≤ −0.05                           | `(1 − compound)/2` |
//! | NEUTRAL  | otherwise                                               | `1 − \|compound\|` |
//!
//! so every confidence lies in [0, 1] and the label with the thresholds VADER's authors recommend
//! (±0.05) wins unless the text holds strong words of both kinds that largely cancel out. VADER
//! reads English only: another language code is refused as Comprehend refuses languages it does
//! not support.

use vader_sentiment::SentimentIntensityAnalyzer;

use super::{BoxFuture, Sentiment, SentimentBackend, SentimentLabel};
use crate::error::InferenceError;

/// Documents per call: no service limit, but batches bound the work of one blocking task.
pub const MAX_BATCH: usize = 1000;

/// The language codes VADER reads.
const LANGUAGES: &[&str] = &["en"];

#[derive(Debug, Default)]
pub struct VaderBackend;

/// One document's sentiment, mapped as the module documentation says.
pub fn analyze(text: &str) -> Sentiment {
    let analyzer = SentimentIntensityAnalyzer::new();
    let scores = analyzer.polarity_scores(text);
    let get = |key: &str| scores.get(key).copied().unwrap_or(0.0);
    map_scores(get("pos"), get("neg"), get("compound"))
}

fn map_scores(pos: f64, neg: f64, compound: f64) -> Sentiment {
    let (label, confidence) = if pos >= 0.1 && neg >= 0.1 && compound.abs() < 0.5 {
        (SentimentLabel::Mixed, pos + neg)
    } else if compound >= 0.05 {
        (SentimentLabel::Positive, (1.0 + compound) / 2.0)
    } else if compound <= -0.05 {
        (SentimentLabel::Negative, (1.0 - compound) / 2.0)
    } else {
        (SentimentLabel::Neutral, 1.0 - compound.abs())
    };
    Sentiment {
        label,
        confidence: confidence.clamp(0.0, 1.0) as f32,
    }
}

impl SentimentBackend for VaderBackend {
    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn detect<'a>(
        &'a self,
        language: &'a str,
        texts: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Sentiment>, InferenceError>> {
        Box::pin(async move {
            if !LANGUAGES.contains(&language) {
                return Err(InferenceError::UnsupportedLanguage {
                    message: format!(
                        "the local sentiment backend (VADER) reads English only (language \
                         code 'en'), not '{language}'"
                    ),
                    request_id: None,
                });
            }
            // Scoring is CPU work: off the I/O threads, and a panic in the model is an error.
            tokio::task::spawn_blocking(move || texts.iter().map(|t| analyze(t)).collect())
                .await
                .map_err(|e| InferenceError::Service {
                    code: "ModelError".into(),
                    message: format!("the local sentiment model failed: {e}"),
                    request_id: None,
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(text: &str) -> (SentimentLabel, f32) {
        let s = analyze(text);
        (s.label, s.confidence)
    }

    #[test]
    fn known_texts_get_the_expected_labels() {
        let cases = [
            (
                "I love this blender, it works great!",
                SentimentLabel::Positive,
            ),
            (
                "Terrible quality, it broke after a week. Awful.",
                SentimentLabel::Negative,
            ),
            ("The parcel arrived on Tuesday.", SentimentLabel::Neutral),
            (
                "The sound is great but the battery is awful.",
                SentimentLabel::Mixed,
            ),
            ("", SentimentLabel::Neutral),
        ];
        for (text, expected) in cases {
            let (got, confidence) = label(text);
            assert_eq!(got, expected, "{text:?}");
            assert!(
                (0.0..=1.0).contains(&confidence),
                "{text:?}: confidence {confidence}"
            );
        }
    }

    #[test]
    fn stronger_wording_gives_higher_confidence() {
        let (_, mild) = label("The food was good.");
        let (_, strong) = label("The food was absolutely amazing, best meal ever!!!");
        assert!(strong > mild, "{strong} <= {mild}");
    }

    #[test]
    fn the_mapping_keeps_confidences_in_range_at_the_edges() {
        for (pos, neg, compound) in [
            (1.0, 0.0, 1.0),
            (0.0, 1.0, -1.0),
            (0.0, 0.0, 0.0),
            (0.6, 0.6, 0.0),
            (0.5, 0.1, 0.049),
        ] {
            let s = map_scores(pos, neg, compound);
            assert!((0.0..=1.0).contains(&s.confidence), "{s:?}");
        }
        assert_eq!(map_scores(0.0, 0.0, 0.0).confidence, 1.0);
        assert_eq!(map_scores(1.0, 0.0, 1.0).confidence, 1.0);
    }

    #[test]
    fn unusual_text_does_not_panic() {
        for text in [
            "😀😀😀",
            "!!!???",
            "café naïve 東京",
            "\n\t ",
            "NOT GOOD AT ALL",
            "but",
            "kind of",
        ] {
            let s = analyze(text);
            assert!((0.0..=1.0).contains(&s.confidence), "{text:?}: {s:?}");
        }
    }

    #[tokio::test]
    async fn batches_keep_order_and_other_languages_are_refused() {
        let backend = VaderBackend;
        let texts = vec![
            "I hate it, worst purchase ever.".to_owned(),
            "Wonderful, I love it!".to_owned(),
            "It is a chair.".to_owned(),
        ];
        let out = backend
            .detect("en", texts)
            .await
            .expect("valid in this test");
        let labels: Vec<_> = out.iter().map(|s| s.label).collect();
        assert_eq!(
            labels,
            [
                SentimentLabel::Negative,
                SentimentLabel::Positive,
                SentimentLabel::Neutral
            ]
        );
        let error = backend
            .detect("de", vec!["Gut".into()])
            .await
            .expect_err("German is refused");
        assert!(matches!(error, InferenceError::UnsupportedLanguage { .. }));
        assert!(error.to_string().contains("'de'"), "{error}");
    }
}
