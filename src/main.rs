//! The `pgenrich` binary: command line → telemetry → configuration → server.

use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use pgenrich::config::{Cli, Config};
use pgenrich::server::Server;

/// glibc raises its mmap threshold each time a block it had mapped is freed; after the first
/// session ends, the relay's 128 KiB read buffers of later sessions come from the heap, where the
/// churn of sessions fragments them and RSS only grows (+29 % over a 10-minute soak after
/// warm-up). A fixed threshold keeps such buffers in mappings of their own, returned to the system
/// when their session ends (the same soak: flat). `MALLOC_MMAP_THRESHOLD_` still overrides it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // mallopt has no safe wrapper; it only sets an allocator parameter.
fn fix_mmap_threshold() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: called once at start-up, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_mmap_threshold() {}

fn main() -> ExitCode {
    fix_mmap_threshold();
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
