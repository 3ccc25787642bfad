//! Criterion benches for the code every relayed message touches: the ML hook's decision, frame
//! header hopping over a result stream, and response accounting; and the time a planner thread
//! spends on ordinary ML statements and on hostile statement texts.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgenrich::protocol::header;
use pgenrich::session::tracker::Tracker;
use pgenrich::sql;

fn ml_hook(c: &mut Criterion) {
    let mut group = c.benchmark_group("ml_hook");
    let cases = [
        (
            "plain_select",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        ),
        (
            "plain_update",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        ),
        (
            "literal_lookalike",
            "SELECT 'aws_comprehend.detect_sentiment(x)' FROM pgbench_branches",
        ),
        (
            "ml_call",
            "SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM reviews WHERE id < 100",
        ),
    ];
    for (name, text) in cases {
        group.bench_function(name, |b| b.iter(|| sql::inspect(black_box(text))));
    }
    group.finish();
}

/// What planning an ordinary ML statement costs, as the relay asks for it: handed to a planner
/// thread, the guard, the hook, DECLARE and EXPLAIN detection, the plan, and the answer back.
fn ml_planning(c: &mut Criterion) {
    use pgenrich::session::relay::planner::{plan, Planned};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("ml_planning");
    let cases = [
        (
            "query_streaming",
            b'Q',
            "SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM reviews WHERE id < 100",
        ),
        (
            "query_residual",
            b'Q',
            "SELECT id FROM reviews ORDER BY (aws_comprehend.detect_sentiment(body, 'en')).confidence",
        ),
        (
            "parse_streaming",
            b'P',
            "SELECT aws_sagemaker.invoke_endpoint('score', NULL, $1::text, $2::int)",
        ),
    ];
    for (name, kind, text) in cases {
        let mut body = Vec::new();
        if kind == b'P' {
            body.push(0); // the unnamed statement
        }
        body.extend_from_slice(text.as_bytes());
        body.push(0);
        if kind == b'P' {
            body.extend_from_slice(&0u16.to_be_bytes()); // no parameter types
        }
        let body = bytes::Bytes::from(body);
        group.bench_function(name, |b| {
            b.iter(|| {
                let planned =
                    runtime.block_on(plan(kind, body.clone(), Default::default(), 1 << 18));
                assert!(matches!(planned, Planned::Intercept(_)), "{planned:?}");
            })
        });
    }
    group.finish();
}

/// What a planner thread does with hostile Query texts that mention an ML call, at two sizes
/// each: the guard, then (when it lets the text through) the split into statements and the
/// plan. Throughput is in bytes of text; the same bytes/s at both sizes means linear time.
fn hostile_texts(c: &mut Criterion) {
    let mut group = c.benchmark_group("hostile_texts");
    group.sample_size(10);
    const CALL: &str = "SELECT aws_comprehend.detect_sentiment('a', 'en')";
    type Shape = fn(usize) -> String;
    let shapes: [(&str, Shape); 5] = [
        ("semicolons", |n| format!("{CALL}{}", ";".repeat(n))),
        ("string_literals", |n| {
            format!("{CALL}, {}", vec!["'it''s;'"; n / 9].join(", "))
        }),
        ("comments", |n| {
            format!("{CALL} {}", "/* ; */ -- ;\n".repeat(n / 14))
        }),
        ("dollar_quotes", |n| {
            format!("{CALL}, {}", vec!["$q$;'$q$"; n / 10].join(", "))
        }),
        ("operator_chain", |n| {
            format!("{CALL}, {}", vec!["1"; n / 2].join("+"))
        }),
    ];
    for (name, shape) in shapes {
        for size in [100_000usize, 1_600_000] {
            let text = shape(size);
            group.throughput(Throughput::Bytes(text.len() as u64));
            group.bench_function(format!("{name}/{size}"), |b| {
                b.iter(|| {
                    if let Ok(true) = sql::guard::check(black_box(&text)) {
                        let _ = black_box(sql::plan::plan_query_message(&text));
                    }
                })
            });
        }
    }
    group.finish();
}

/// 1 MiB of DataRow messages of 100 bytes, as a large result arrives from the upstream.
fn data_rows() -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    while out.len() < (1 << 20) - 101 {
        out.push(b'D');
        out.extend_from_slice(&100u32.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&90u32.to_be_bytes());
        out.extend_from_slice(&[b'x'; 90]);
    }
    out
}

fn framing(c: &mut Criterion) {
    let rows = data_rows();
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Bytes(rows.len() as u64));
    group.bench_function("hop_data_rows_1MiB", |b| {
        b.iter(|| {
            let mut tracker = Tracker::default();
            let mut at = 0;
            let mut count = 0u32;
            while let Some(Ok((kind, len))) = header(&rows[at..]) {
                if !tracker.wants_body(kind) {
                    tracker.on_backend(kind, None);
                }
                at += 1 + len;
                count += 1;
            }
            black_box(count)
        })
    });
    group.finish();
}

fn accounting(c: &mut Criterion) {
    c.bench_function("tracker_extended_round_trip", |b| {
        b.iter(|| {
            let mut tracker = Tracker::default();
            for kind in [b'P', b'B', b'D', b'E', b'S'] {
                tracker.on_client(black_box(kind));
            }
            for kind in [b'1', b'2', b'T', b'D', b'C'] {
                tracker.on_backend(black_box(kind), None);
            }
            tracker.on_backend(b'Z', Some(b"I"));
            black_box(tracker.is_idle())
        })
    });
}

criterion_group!(
    benches,
    ml_hook,
    ml_planning,
    hostile_texts,
    framing,
    accounting
);
criterion_main!(benches);
