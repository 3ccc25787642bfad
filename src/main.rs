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
    let mut builder = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pgenrich: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::bind(config).await {
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
    })
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
