//! The deterministic models behind the mock endpoints. pgenrich's tests compute expected results
//! from these same functions (and, for the differential suite, from SQL versions of them).

/// Words that count towards a positive / negative sentiment.
pub const POSITIVE_WORDS: &[&str] = &[
    "good",
    "great",
    "love",
    "excellent",
    "happy",
    "amazing",
    "nice",
    "best",
    "fantastic",
    "wonderful",
];
pub const NEGATIVE_WORDS: &[&str] = &[
    "bad",
    "terrible",
    "hate",
    "awful",
    "poor",
    "worst",
    "horrible",
    "broken",
    "sad",
    "disappointing",
];

/// One sentiment result: the label and the four scores (Positive, Negative, Neutral, Mixed).
#[derive(Debug, Clone, PartialEq)]
pub struct Sentiment {
    pub label: &'static str,
    pub positive: f32,
    pub negative: f32,
    pub neutral: f32,
    pub mixed: f32,
}

impl Sentiment {
    /// The score of the chosen label (what Aurora returns as `confidence`).
    pub fn confidence(&self) -> f32 {
        match self.label {
            "POSITIVE" => self.positive,
            "NEGATIVE" => self.negative,
            "MIXED" => self.mixed,
            _ => self.neutral,
        }
    }
}

/// Counts positive and negative words (lower-cased, split on anything not alphanumeric):
/// more positive → POSITIVE with confidence (d+1)/(d+2) where d is the difference; more negative →
/// NEGATIVE likewise; equal and non-zero → MIXED with p/(p+1); none → NEUTRAL with 0.9. The other
/// three scores share the rest equally.
pub fn sentiment(text: &str) -> Sentiment {
    let lower = text.to_lowercase();
    let words = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty());
    let (mut p, mut n) = (0u32, 0u32);
    for word in words {
        if POSITIVE_WORDS.contains(&word) {
            p += 1;
        } else if NEGATIVE_WORDS.contains(&word) {
            n += 1;
        }
    }
    let (label, confidence) = if p > n {
        let d = (p - n) as f32;
        ("POSITIVE", (d + 1.0) / (d + 2.0))
    } else if n > p {
        let d = (n - p) as f32;
        ("NEGATIVE", (d + 1.0) / (d + 2.0))
    } else if p > 0 {
        ("MIXED", p as f32 / (p as f32 + 1.0))
    } else {
        ("NEUTRAL", 0.9)
    };
    let rest = (1.0 - confidence) / 3.0;
    let score = |l: &str| if l == label { confidence } else { rest };
    Sentiment {
        label,
        positive: score("POSITIVE"),
        negative: score("NEGATIVE"),
        neutral: score("NEUTRAL"),
        mixed: score("MIXED"),
    }
}

/// The default endpoint model: the sum over a record's fields of the field's numeric value, or its
/// length in characters when it is not a number (an empty field counts 0), printed with up to six
/// decimals and no trailing zeros.
pub fn score(fields: &[String]) -> String {
    let total: f64 = fields
        .iter()
        .map(|f| f.trim().parse::<f64>().unwrap_or(f.chars().count() as f64))
        .sum();
    let text = format!("{total:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// Splits a CSV body (RFC 4180) into records of fields.
pub fn parse_csv(body: &str) -> Result<Vec<Vec<String>>, String> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = body.chars().peekable();
    let mut quoted = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                other => field.push(other),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            ',' => {
                record.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                at_field_start = true;
            }
            other => {
                field.push(other);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

/// Writes one CSV field, quoting it when needed.
pub fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentiment_model_is_deterministic() {
        let s = sentiment("I love it, great product!");
        assert_eq!((s.label, s.confidence()), ("POSITIVE", 0.75));
        assert_eq!(sentiment("bad, awful, terrible").label, "NEGATIVE");
        assert_eq!(sentiment("good but bad").label, "MIXED");
        assert_eq!(sentiment("a table").confidence(), 0.9);
    }

    #[test]
    fn csv_round_trip_and_score() {
        let records = parse_csv("1,2.5,abc\n\"x,\"\"y\"\"\",,\n").expect("csv");
        assert_eq!(
            records,
            vec![vec!["1", "2.5", "abc"], vec!["x,\"y\"", "", ""]]
        );
        assert_eq!(score(&records[0]), "6.5");
        assert_eq!(score(&records[1]), "5");
        let mut out = String::new();
        csv_field(&mut out, "x,\"y\"");
        assert_eq!(out, "\"x,\"\"y\"\"\"");
    }
}
