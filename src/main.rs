//! The `pgenrich` binary: command line → telemetry → configuration → server.

use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use pgenrich::config::{Cli, Config};
use pgenrich::server::Server;

fn main() -> ExitCode {
    let config = match Config::load(Cli::parse()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("pgenrich: {error}");
            return ExitCode::from(2);
        }
    };
    pgenrich::telemetry::init(config.log_format);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Sessions are relayed on one runtime; ML work (service calls, enriching rows) runs on
    // another, so that it neither waits behind the relay nor holds it up.
    let relay = match config.relay_threads(cpus) {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let ml = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.ml_threads(cpus))
        .thread_name("pgenrich-ml")
        .enable_all()
        .build();
    let (relay, ml) = match (relay, ml) {
        (Ok(relay), Ok(ml)) => (relay, ml),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("pgenrich: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let ml_handle = ml.handle().clone();
    let code = relay.block_on(async move {
        let server = match Server::bind(config, Some(ml_handle)).await {
            Ok(server) => server,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                eprintln!("pgenrich: {error}");
                return ExitCode::from(2);
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        server.run(shutdown).await;
        ExitCode::SUCCESS
    });
    // Every session has ended; ML work still running belonged to them.
    ml.shutdown_background();
    code
}

/// The first SIGTERM or SIGINT starts a graceful drain; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: draining (send again to exit now)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(1);
}
