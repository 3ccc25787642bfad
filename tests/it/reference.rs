//! The reference database's SQL functions (`reference.sql`) against the Rust models of the mock
//! AWS server: the differential suite trusts native results only as far as these agree.
//!
//! Each check compares with `mock_aws::models` computed here, the way the mock computes it: for
//! `detect_sentiment` the model on the text, for `invoke_endpoint` the model on the fields of the
//! CSV record pgenrich writes for the inputs' text forms. The character classes the SQL hard-codes
//! are checked for every code point, so a toolchain with a newer Unicode fails here first.

use mock_aws::models;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{connect, postgres, reference_database, sqlstate, Proxy};

async fn reference() -> Client {
    connect(&postgres().direct_conninfo_to(reference_database())).await
}

/// Maximal runs of consecutive code points (surrogates skipped) for which `keep` holds.
fn ranges(from: u32, keep: impl Fn(char) -> bool) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for c in (from..=0x10FFFF)
        .filter_map(char::from_u32)
        .filter(|&c| keep(c))
    {
        match out.last_mut() {
            Some(last) if last.1 + 1 == c as u32 => last.1 = c as u32,
            _ => out.push((c as u32, c as u32)),
        }
    }
    out
}

/// Rust's alphanumeric non-ASCII code points as the SQL of `ml_reference.word_chars()`.
fn word_chars_sql() -> String {
    let escape = |cp: u32| match cp {
        0..=0xFFFF => format!("\\\\u{cp:04X}"),
        _ => format!("\\\\U{cp:08X}"),
    };
    let mut lines = vec![String::new()];
    for (lo, hi) in ranges(0x80, char::is_alphanumeric) {
        let item = match lo == hi {
            true => escape(lo),
            false => format!("{}-{}", escape(lo), escape(hi)),
        };
        if lines.last().is_some_and(|l| l.len() + item.len() > 92) {
            lines.push(String::new());
        }
        if let Some(line) = lines.last_mut() {
            line.push_str(&item);
        }
    }
    let lines: Vec<String> = lines.iter().map(|l| format!("        E'{l}'")).collect();
    lines.join(" ||\n")
}

/// Prints the body of `ml_reference.word_chars()` for the current toolchain, for reference.sql.
#[test]
#[ignore = "a generator, not a check"]
fn print_word_chars() {
    println!("{}", word_chars_sql());
}

/// The SQL lower-cases only ASCII letters, U+212A and U+0130: that is exact only if no other
/// character's lower case contains ASCII or changes whether it is alphanumeric.
#[test]
fn lower_case_changes_no_word_boundary_outside_the_special_characters() {
    for c in (0x80..=0x10FFFF).filter_map(char::from_u32) {
        let lower: Vec<char> = c.to_lowercase().collect();
        let same = lower.len() == 1
            && !lower[0].is_ascii()
            && lower[0].is_alphanumeric() == c.is_alphanumeric();
        assert!(
            same || c == '\u{130}' || c == '\u{212A}',
            "U+{:04X} lower-cases to {lower:?}: teach ml_reference.words about it",
            c as u32
        );
    }
    assert_eq!("\u{130}".to_lowercase(), "i\u{307}");
    assert!(!'\u{307}'.is_alphanumeric());
    assert_eq!("\u{212A}".to_lowercase(), "k");
}

/// Every code point: the SQL word characters are Rust's alphanumeric ones, the SQL white space
/// Rust's. One string of all code points in order, split by the SQL class, gives its ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn character_classes_match_rust_for_every_code_point() {
    let client = reference().await;
    let runs = |rows: Vec<tokio_postgres::Row>| -> Vec<(u32, u32)> {
        rows.iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i32>(1) as u32))
            .collect()
    };
    let words = client
        .query(
            "WITH s AS (SELECT string_agg(chr(cp), '' ORDER BY cp) AS s \
                          FROM generate_series(128, 1114111) AS cp \
                         WHERE cp NOT BETWEEN 55296 AND 57343) \
             SELECT ascii(w), ascii(right(w, 1)) \
               FROM s, regexp_split_to_table(s, '[^a-z0-9' || ml_reference.word_chars() || ']+') \
                       WITH ORDINALITY AS t(w, n) \
              WHERE w <> '' ORDER BY n",
            &[],
        )
        .await
        .expect("word characters");
    let expected = ranges(0x80, char::is_alphanumeric);
    assert!(
        runs(words) == expected,
        "ml_reference.word_chars() is not Rust's char::is_alphanumeric (Unicode {:?}); \
         replace its body in tests/it/reference.sql with the output of \
         `cargo test --test it reference::print_word_chars -- --ignored --nocapture`",
        std::char::UNICODE_VERSION
    );
    let space = client
        .query(
            "WITH s AS (SELECT string_agg(chr(cp), '' ORDER BY cp) AS s \
                          FROM generate_series(1, 1114111) AS cp \
                         WHERE cp NOT BETWEEN 55296 AND 57343) \
             SELECT ascii(m[1]), ascii(right(m[1], 1)) \
               FROM s, regexp_matches(s, '([' || ml_reference.white_space() || ']+)', 'g') \
                       WITH ORDINALITY AS t(m, n) \
              ORDER BY n",
            &[],
        )
        .await
        .expect("white space");
    assert_eq!(runs(space), ranges(1, char::is_whitespace));
    // ASCII: the SQL folds A-Z and keeps a-z0-9, Rust's alphanumerics there.
    let ascii: Vec<(u32, u32)> = ranges(0, char::is_alphanumeric)
        .into_iter()
        .take_while(|r| r.0 < 0x80)
        .collect();
    assert_eq!(ascii, [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lexicon_and_languages_are_the_mocks() {
    let client = reference().await;
    let row = client
        .query_one(
            "SELECT ml_reference.positive_words(), ml_reference.negative_words(), \
                    ml_reference.languages()",
            &[],
        )
        .await
        .expect("lists");
    assert_eq!(row.get::<_, Vec<String>>(0), models::POSITIVE_WORDS);
    assert_eq!(row.get::<_, Vec<String>>(1), models::NEGATIVE_WORDS);
    assert_eq!(row.get::<_, Vec<String>>(2), mock_aws::LANGUAGES);
}

/// ~100 texts: NULL, empty, counts of positive and negative words, case, punctuation, quotes,
/// commas, newlines, and Unicode next to lexicon words (where the word boundary decides).
fn sentiment_corpus() -> Vec<Option<String>> {
    let mut texts: Vec<Option<String>> = [
        "",
        "I love it, great product!",
        "terrible, awful, broken on arrival",
        "good but bad",
        "a table",
        "GOOD",
        "Good. GREAT! nice?",
        "gOoD bAd HaTe",
        "goodgood bad",
        "good_bad",
        "good-bad-worst",
        "don't hate, love",
        "say \"great\"\nthen\r\nleave, good",
        "'good','bad','sad'",
        "good\tgreat\u{b}bad\u{c}awful",
        "1 good 2 bad 3 sad",
        "good1 bad2",
        "100% excellent",
        "best best best best best best best",
        "worst worst worst worst worst worst worst worst worst",
        "wonderful fantastic amazing happy excellent poor horrible disappointing sad",
        "café good",
        "naïve love",
        "goodé",
        "égood",
        "Ünïcödé is great 👍",
        "GOOD👍",
        "👍good👎bad",
        "好good",
        "good好 bad",
        "很好 good 很差",
        "日本語のテキスト",
        "good٣",
        "good²",
        "good½",
        "goodⅫ",
        "good\u{301} bad",
        "good\u{345} bad",
        "NİCE",
        "İgood",
        "goodİ",
        "BRO\u{212A}EN",
        "ΣGOOD",
        "good\u{a0}bad\u{3000}sad",
        "ＧＯＯＤ",
        "good\u{200b}bad",
        "good\u{feff}",
        "ITEM_ERROR good",
        "  ",
        ",",
        "\n",
        "NULL",
    ]
    .iter()
    .map(|t| Some((*t).to_owned()))
    .collect();
    texts.push(None);
    // Every count of positive and negative words up to 4 each, in varied case and separators.
    for p in 0..5 {
        for n in 0..5 {
            let mut words = Vec::new();
            words.extend((0..p).map(|i| ["good", "Great", "LOVE", "nice!"][i % 4]));
            words.extend((0..n).map(|i| ["bad", "Awful", "HATE", "sad."][i % 4]));
            texts.push(Some(words.join(if (p + n) % 2 == 0 { " " } else { ", " })));
        }
    }
    // Long texts up to Comprehend's 5,000-byte limit.
    texts.push(Some("good ".repeat(1000)));
    texts.push(Some(format!("{}é", "bad ".repeat(1249))));
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_sentiment_equals_the_rust_model() {
    let client = reference().await;
    let statement = client
        .prepare(
            "SELECT s.sentiment, s.confidence, aws_comprehend.detect_sentiment($1, 'en') IS NULL \
               FROM aws_comprehend.detect_sentiment($1, 'en') AS s",
        )
        .await
        .expect("prepare");
    let corpus = sentiment_corpus();
    assert!(corpus.len() >= 75, "{} texts", corpus.len());
    let mut labels = std::collections::BTreeSet::new();
    for text in &corpus {
        let row = client
            .query_one(&statement, &[text])
            .await
            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let got: (Option<String>, Option<f32>, bool) = (row.get(0), row.get(1), row.get(2));
        let expected = match text.as_deref() {
            None | Some("") => (None, None, true),
            Some(t) => {
                let s = models::sentiment(t);
                labels.insert(s.label);
                (Some(s.label.to_owned()), Some(s.confidence()), false)
            }
        };
        // Bit-for-bit: float4 arithmetic in SQL, f32 in Rust.
        assert_eq!(
            (&got.0, got.1.map(f32::to_bits), got.2),
            (&expected.0, expected.1.map(f32::to_bits), expected.2),
            "{text:?}: got {got:?}, the model says {expected:?}"
        );
    }
    assert_eq!(labels.len(), 4, "the corpus covers every label: {labels:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_sentiment_nulls_and_errors_are_pgenrichs() {
    let client = reference().await;
    let one = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .map(|r| r.get::<_, Option<String>>(0))
        }
    };
    // NULL/empty text or NULL language: a record of two NULLs, before any argument check.
    for sql in [
        "SELECT aws_comprehend.detect_sentiment(NULL, 'en')::text",
        "SELECT aws_comprehend.detect_sentiment('', 'xx', 0)::text",
        "SELECT aws_comprehend.detect_sentiment('good', NULL, 0)::text",
    ] {
        assert_eq!(one(sql).await.expect(sql).as_deref(), Some("(,)"), "{sql}");
    }
    let sql = "SELECT (aws_comprehend.detect_sentiment(NULL, 'en')).sentiment::text";
    assert_eq!(one(sql).await.expect(sql), None, "{sql}");
    let row = client
        .query_one(
            "SELECT count(*), count(s.sentiment) FROM aws_comprehend.detect_sentiment(NULL, 'en') s",
            &[],
        )
        .await
        .expect("FROM form");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 0));
    for sql in [
        "SELECT aws_comprehend.detect_sentiment('good', 'en', NULL)::text",
        "SELECT aws_comprehend.detect_sentiment('good', 'en', 25)::text",
        "SELECT aws_comprehend.detect_sentiment('good'::text, 'zh-TW'::text)::text",
    ] {
        assert_eq!(
            one(sql).await.expect(sql).as_deref(),
            Some("(POSITIVE,0.6666667)"),
            "{sql}"
        );
    }
    for (sql, code) in [
        (
            "SELECT aws_comprehend.detect_sentiment('good', 'en', 0)::text",
            "22023",
        ),
        (
            "SELECT aws_comprehend.detect_sentiment('good', 'xx')::text",
            "22023",
        ),
        (
            "SELECT aws_comprehend.detect_sentiment('EN', 'EN')::text",
            "22023",
        ),
        (
            "SELECT aws_comprehend.detect_sentiment(repeat('a', 5001), 'en')::text",
            "22001",
        ),
        (
            "SELECT aws_comprehend.detect_sentiment(repeat('é', 2501), 'en')::text",
            "22001",
        ),
    ] {
        let error = one(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&error), code, "{sql}");
    }
}

/// The CSV record pgenrich writes for `fields` (its `csv::write_record`) as the mock parses it.
fn sent_record(fields: &[Option<String>]) -> Vec<String> {
    let mut csv = String::new();
    pgenrich::enrich::csv::write_record(&mut csv, fields.iter().map(|f| f.as_deref()));
    let mut records = models::parse_csv(&csv).expect("csv");
    assert_eq!(records.len(), 1, "{csv:?}");
    records.remove(0)
}

/// What the mock answers for `fields`: the score, and what an `echo` endpoint returns.
fn expected_invoke(fields: &[Option<String>]) -> (String, String) {
    let record = sent_record(fields);
    let mut echo = String::new();
    for (i, field) in record.iter().enumerate() {
        if i > 0 {
            echo.push(',');
        }
        models::csv_field(&mut echo, field);
    }
    (models::score(&record), echo)
}

/// ~100 records of text inputs: numbers in every form Rust parses (and near misses), white space,
/// text, empty and NULL fields, quotes, commas, newlines, and sums at the edges of f64.
fn invoke_corpus() -> Vec<Vec<Option<String>>> {
    let single = [
        "0",
        "1",
        "-1",
        "-0",
        "+5",
        "42",
        "007",
        "123456789012345678901234567890",
        "3.14159265358979323846264338327950288",
        "-2.718281828459045235360287",
        "0.1",
        "0.30000000000000004",
        "0.0000005",
        "0.0000015",
        "0.0078125",
        "-0.0078125",
        "0.0234375",
        "2.5e-6",
        "1e5",
        "1E-3",
        "5.e3",
        ".5",
        "+.5",
        "-.25e+2",
        "1e",
        ".",
        "e5",
        "1.2.3",
        "1_000",
        "0x10",
        "1,5",
        " 7 ",
        "\u{a0}8\u{3000}",
        "\t9\n",
        "\u{200b}9",
        "٣",
        "inf",
        "-Infinity",
        "INF",
        "infin",
        "NaN",
        "-nan",
        "1e308",
        "1.7976931348623157e308",
        "1.7976931348623158e308",
        "1.7976931348623159e308",
        "1e309",
        "-1e400",
        "1e99999999999999999999",
        "4.9e-324",
        "2.4703282292062328e-324",
        "2.4703282292062327e-324",
        "1e-400",
        "0.000000000000000000000000000000000000000000000000001",
        "abc",
        "",
        "  ",
        "café",
        "naïve",
        "👍👎",
        "日本語",
        "a,b",
        "say \"hi\"",
        "x\ny",
        "x\r\ny",
        "\"",
        "true",
        "t",
        "2024-02-29 12:34:56.789",
    ];
    let mut records: Vec<Vec<Option<String>>> =
        single.iter().map(|f| vec![Some((*f).to_owned())]).collect();
    records.push(vec![None]);
    records.push(vec![]);
    let many: &[&[Option<&str>]] = &[
        &[Some("1"), Some("2.5"), Some("abc")],
        &[Some("x,\"y\""), Some(""), None],
        &[None, None, None],
        &[Some("1e308"), Some("1e308")],
        &[Some("1e308"), Some("1e308"), Some("-1e308")],
        &[Some("-1e308"), Some("-1e308")],
        &[Some("1.7976931348623157e308"), Some("9.9792015476736e291")],
        &[Some("1.7976931348623157e308"), Some("9.9792015476735e291")],
        &[Some("inf"), Some("-inf")],
        &[Some("nan"), Some("1")],
        &[Some("0.1"), Some("0.2")],
        &[Some("0.1"), Some("0.2"), Some("-0.3")],
        &[Some("1e16"), Some("1"), Some("1")],
        &[Some("9007199254740993"), Some("0.0000005")],
        &[Some("-0.0000004"), Some("0")],
        &[Some("-5"), Some("hello")],
        &[Some("12"), Some("-12.000001")],
        &[Some("0.0000005"), Some("0.0000005"), Some("0.0000005")],
        &[Some("café, \"naïve\""), Some("line\nbreak"), Some("7")],
        &[Some("f"), Some("t"), Some("true"), Some("false")],
        &[Some("2024-01-01"), Some("12:00:00"), Some("1 day")],
        &[
            Some("1"),
            Some("2"),
            Some("3"),
            Some("4"),
            Some("5"),
            Some("6"),
        ],
    ];
    records.extend(
        many.iter()
            .map(|r| r.iter().map(|f| f.map(str::to_owned)).collect()),
    );
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_endpoint_equals_the_rust_model() {
    let client = reference().await;
    let statement = client
        .prepare(
            "SELECT aws_sagemaker.invoke_endpoint('model', 10, VARIADIC $1::text[]), \
                    aws_sagemaker.invoke_endpoint('echo-1', NULL, VARIADIC $1::text[])",
        )
        .await
        .expect("prepare");
    let corpus = invoke_corpus();
    assert!(corpus.len() >= 90, "{} records", corpus.len());
    let mut outputs = std::collections::BTreeSet::new();
    for fields in &corpus {
        let row = client
            .query_one(&statement, &[fields])
            .await
            .unwrap_or_else(|e| panic!("{fields:?}: {e}"));
        let got: (String, String) = (row.get(0), row.get(1));
        let expected = expected_invoke(fields);
        assert_eq!(got, expected, "{fields:?}");
        outputs.insert(got.0);
    }
    // The corpus reaches every kind of output: integers, decimals, zero, the non-finite ones.
    for kind in ["0", "inf", "-inf", "NaN", "6.5", "-25"] {
        assert!(outputs.contains(kind), "no record scores {kind}");
    }
}

/// Typed inputs go out in their output text (what pgenrich sends); each call form either sends
/// exactly that or fails to resolve, as reference.sql documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_endpoint_call_forms() {
    let client = reference().await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS reference_typed;
             CREATE TABLE reference_typed (id int, i int, b bigint, n numeric, f float8,
                 r real, flag boolean, ts timestamp, tz timestamptz, t text, v varchar, c char(4));
             INSERT INTO reference_typed VALUES
               (1, 1, 9007199254740993, 2.50, 0.1, 0.1, true, '2024-02-29 12:34:56.789',
                '2024-02-29 12:34:56+02', 'abc', 'a,b', 'x'),
               (2, -7, 0, -0.0000005, 1e300, 3.4e38, false, '1999-12-31 23:59:59',
                '2000-01-01 00:00:00+00', '', 'say \"hi\"', ''),
               (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
               (4, 0, -1, 1e-20, 'NaN', '-Infinity', true, 'infinity', '-infinity', '12',
                '3.5', '7')",
        )
        .await
        .expect("typed table");
    // Argument lists whose inputs reach the function as the text the query itself shows.
    for args in [
        "i",
        "b",
        "n",
        "f",
        "r",
        "flag",
        "ts",
        "tz",
        "t",
        "v",
        "c",
        "i, b, n",
        "n, i",
        "t, v",
        "c, t, v",
        "t, 'lit', NULL",
        "NULL",
        "'1.5', '2'",
        "1, 2.5",
        "i::text, t, flag::text, ts::text, f::text, c::text",
        "VARIADIC ARRAY[i, b]",
        "VARIADIC ARRAY[t, v]",
    ] {
        let sql = format!(
            "SELECT {args}, aws_sagemaker.invoke_endpoint('m', 2, {args}), \
                    aws_sagemaker.invoke_endpoint('echo', NULL, {args}) \
               FROM reference_typed ORDER BY id",
            args = args,
        );
        // `VARIADIC ARRAY[...]` is not a select-list item: show the elements instead.
        let sql = match args.strip_prefix("VARIADIC ARRAY[") {
            Some(inner) => sql.replacen(
                &format!("SELECT {args},"),
                &format!("SELECT {},", inner.trim_end_matches(']')),
                1,
            ),
            None => sql,
        };
        let messages = client
            .simple_query(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let mut seen = 0;
        for message in &messages {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            seen += 1;
            let inputs: Vec<Option<String>> = (0..row.len() - 2)
                .map(|i| row.get(i).map(str::to_owned))
                .collect();
            let got = (
                row.get(row.len() - 2).map(str::to_owned),
                row.get(row.len() - 1).map(str::to_owned),
            );
            let (score, echo) = expected_invoke(&inputs);
            assert_eq!(got, (Some(score), Some(echo)), "{args} with {inputs:?}");
        }
        assert_eq!(seen, 4, "{sql}");
    }
    // Mixes that do not resolve, as documented.
    for (args, code) in [
        ("i, t", "42883"),
        ("flag, t", "42883"),
        ("i, 'abc'", "22P02"),
    ] {
        let sql =
            format!("SELECT aws_sagemaker.invoke_endpoint('m', 2, {args}) FROM reference_typed");
        let error = client.simple_query(&sql).await.expect_err(&sql);
        assert_eq!(sqlstate(&error), code, "{sql}");
    }
    // Mixes with a float type resolve, changing the text of other inputs (documented).
    let row = client
        .query_one(
            "SELECT aws_sagemaker.invoke_endpoint('echo', 1, f, b), \
                    aws_sagemaker.invoke_endpoint('echo', 1, r, f) \
               FROM reference_typed WHERE id = 1",
            &[],
        )
        .await
        .expect("float mixes");
    assert_eq!(
        (row.get::<_, &str>(0), row.get::<_, &str>(1)),
        ("0.1,9.007199254740992e+15", "0.10000000149011612,0.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_endpoint_errors_are_pgenrichs() {
    let client = reference().await;
    for (sql, code) in [
        (
            "SELECT aws_sagemaker.invoke_endpoint(NULL, 1, 'a')",
            "22023",
        ),
        (
            "SELECT aws_sagemaker.invoke_endpoint(NULL, 1, NULL)",
            "22023",
        ),
        ("SELECT aws_sagemaker.invoke_endpoint('m', 0, 'a')", "22023"),
        ("SELECT aws_sagemaker.invoke_endpoint('m', -3, 1)", "22023"),
        (
            "SELECT aws_sagemaker.invoke_endpoint('model-error', 1, 1)",
            "38000",
        ),
        (
            "SELECT aws_sagemaker.invoke_endpoint('model-error-2', 1, 1)",
            "38000",
        ),
        (
            "SELECT aws_sagemaker.invoke_endpoint('short', 1, 1)",
            "38000",
        ),
        (
            "SELECT aws_sagemaker.invoke_endpoint('bad-csv', 1, 1)",
            "38000",
        ),
    ] {
        let error = client.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&error), code, "{sql}");
    }
    let row = client
        .query_one(
            "SELECT aws_sagemaker.invoke_endpoint('m', NULL, 1, 2), \
                    aws_sagemaker.invoke_endpoint('model', 1, NULL)",
            &[],
        )
        .await
        .expect("NULL batch size and NULL input");
    assert_eq!((row.get::<_, &str>(0), row.get::<_, &str>(1)), ("3", "0"));
}

use crate::harness::text_result as result;

/// The forms pgenrich supports today give the same names, types and values natively on the
/// reference database as through pgenrich (mock AWS) on the test database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_agrees_with_pgenrich_on_supported_forms() {
    let setup = "DROP TABLE IF EXISTS reference_check;
        CREATE TABLE reference_check (id int, body text, n numeric, i int, flag boolean, t text);";
    let native = reference().await;
    let plain = connect(&postgres().direct_conninfo()).await;
    let insert = "INSERT INTO reference_check VALUES ($1, $2, $3::text::numeric, $4, $5, $6)";
    for client in [&native, &plain] {
        client.batch_execute(setup).await.expect("table");
        let statement = client.prepare(insert).await.expect("prepare");
        // ITEM_ERROR fails a document only in a batch (see reference.sql): not comparable.
        let corpus = sentiment_corpus()
            .into_iter()
            .filter(|t| t.as_deref().is_none_or(|t| !t.contains("ITEM_ERROR")));
        for (id, body) in corpus.enumerate() {
            let id = id as i32;
            let n = ["1.5", "-0.0000005", "1e-7", "123456789.123456789"][id as usize % 4];
            let t = ["a,b", "", "say \"hi\"", "x\ny", "42"][id as usize % 5];
            let flag = (id % 3 != 0).then_some(id % 2 == 0);
            client
                .execute(&statement, &[&id, &body, &n, &(id - 50), &flag, &t])
                .await
                .expect("insert");
        }
    }
    let proxy = Proxy::start().await;
    let through = proxy.connect().await;
    for sql in [
        "SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM reference_check ORDER BY id",
        "SELECT (aws_comprehend.detect_sentiment(body, 'en', 5)).*, id FROM reference_check ORDER BY id",
        "SELECT r.id, s.sentiment, s.confidence AS c \
           FROM reference_check r, aws_comprehend.detect_sentiment(r.body, 'en') s ORDER BY r.id",
        "SELECT * FROM aws_comprehend.detect_sentiment('I love it', 'en')",
        "SELECT id, aws_sagemaker.invoke_endpoint('model', 7, n, i) AS score \
           FROM reference_check ORDER BY id",
        "SELECT id, aws_sagemaker.invoke_endpoint('echo', NULL, body, t, NULL) \
           FROM reference_check ORDER BY id",
        "SELECT id, aws_sagemaker.invoke_endpoint('echo', 3, flag), \
                aws_sagemaker.invoke_endpoint('m', 3, flag::text, i::text, t) \
           FROM reference_check ORDER BY id",
    ] {
        let (columns, rows) = result(&native, sql).await;
        assert!(rows.len() > 1 || sql.contains("'I love it'"), "{sql}");
        let (proxy_columns, proxy_rows) = result(&through, sql).await;
        assert_eq!(proxy_columns, columns, "{sql}");
        assert_eq!(proxy_rows.len(), rows.len(), "{sql}");
        for (got, expected) in proxy_rows.iter().zip(&rows) {
            assert_eq!(got, expected, "{sql}");
        }
        let types = |s: tokio_postgres::Statement| -> Vec<String> {
            s.columns().iter().map(|c| c.type_().name().to_owned()).collect()
        };
        let native_types = types(native.prepare(sql).await.expect("prepare natively"));
        let proxy_types = types(through.prepare(sql).await.expect("prepare through pgenrich"));
        assert_eq!(proxy_types, native_types, "{sql}");
    }
}
