//! `mock-aws [--listen ADDR] [--latency-ms N]`: runs the mock SageMaker Runtime / Comprehend
//! server until interrupted, for benchmarks and manual experiments.

use std::time::Duration;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:4566".to_owned();
    let mut latency_ms = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(value)) => listen = value,
            ("--latency-ms", Some(value)) => {
                latency_ms = value.parse().map_err(std::io::Error::other)?
            }
            _ => {
                eprintln!("usage: mock-aws [--listen ADDR:PORT] [--latency-ms N]");
                std::process::exit(2);
            }
        }
    }
    let mock = mock_aws::MockAws::start_on(listen.parse().map_err(std::io::Error::other)?).await?;
    mock.set_latency(Duration::from_millis(latency_ms));
    println!("mock-aws listening on {}", mock.url());
    tokio::signal::ctrl_c().await?;
    let stats = mock.stats();
    eprintln!(
        "mock-aws: {} InvokeEndpoint calls, {} Comprehend calls, peak concurrency {}",
        stats.sagemaker_calls, stats.comprehend_calls, stats.peak_concurrency
    );
    Ok(())
}
