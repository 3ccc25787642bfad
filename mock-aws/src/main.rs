//! `mock-aws [--listen ADDR] [--latency-ms N] [--latency-jitter-ms N] [--throttle-rate P]
//! [--error-rate P] [--seed N]`: runs the mock SageMaker Runtime / Comprehend / Bedrock Runtime
//! server until interrupted, for benchmarks and manual experiments. The fault flags stay on for
//! the whole run (see `mock_aws::faults`); on Ctrl-C it prints its counters, injected faults
//! included.

use std::time::Duration;

use mock_aws::Faults;

const USAGE: &str =
    "usage: mock-aws [--listen ADDR:PORT] [--latency-ms N] [--latency-jitter-ms N] \
                     [--throttle-rate P] [--error-rate P] [--seed N]\n  \
                     P: fraction of calls, 0..1 (throttle: ThrottlingException, HTTP 400, \
                     Bedrock 429; error: HTTP 500 or 503)\n  \
                     serves SageMaker Runtime InvokeEndpoint, Comprehend (Batch)DetectSentiment \
                     and Bedrock Runtime InvokeModel (model ids: *embed*, echo*, model-error*, \
                     missing*, access-denied*, validation*, timeout*, not-ready*, any other)";

fn usage(problem: &str) -> ! {
    eprintln!("mock-aws: {problem}\n{USAGE}");
    std::process::exit(2);
}

fn parse<T: std::str::FromStr>(flag: &str, value: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| usage(&format!("invalid value for {flag}: '{value}'")))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:4566".to_owned();
    let mut latency_ms = 0u64;
    let mut faults = Faults::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            usage(&format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--listen" => listen = value,
            "--latency-ms" => latency_ms = parse(&flag, &value),
            "--latency-jitter-ms" => {
                faults.jitter = Duration::from_millis(parse(&flag, &value));
            }
            "--throttle-rate" => faults.throttle_rate = parse(&flag, &value),
            "--error-rate" => faults.error_rate = parse(&flag, &value),
            "--seed" => faults.seed = parse(&flag, &value),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    let mock = mock_aws::MockAws::start_on(listen.parse().map_err(std::io::Error::other)?).await?;
    mock.set_latency(Duration::from_millis(latency_ms));
    if let Err(problem) = mock.set_faults(faults) {
        usage(&problem);
    }
    println!(
        "mock-aws listening on {} (latency {latency_ms} ms + 0..{} ms, throttle rate {}, error rate {}, seed {})",
        mock.url(),
        faults.jitter.as_millis(),
        faults.throttle_rate,
        faults.error_rate,
        faults.seed
    );
    tokio::signal::ctrl_c().await?;
    let stats = mock.stats();
    eprintln!(
        "mock-aws: {} InvokeEndpoint calls, {} Comprehend calls, {} InvokeModel calls, {} throttled, {} failed (5xx), peak concurrency {}",
        stats.sagemaker_calls,
        stats.comprehend_calls,
        stats.bedrock_calls,
        stats.throttled,
        stats.failed,
        stats.peak_concurrency
    );
    Ok(())
}
