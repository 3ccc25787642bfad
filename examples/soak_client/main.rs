//! `soak_client`: many PostgreSQL sessions at once through pgenrich, in roles given by arguments,
//! for `benches/e2e_soak.sh`. Every session reconnects after its connection dies (a PostgreSQL
//! restart, a deliberate kill) and keeps going until `--duration` has passed.
//!
//! Roles:
//! - `--plain N`: pass-through sessions mixing simple and extended-protocol reads (checked), slow
//!   reads (`pg_sleep`), and transactions `BEGIN; INSERT …; COMMIT` — over the extended protocol
//!   or as one simple Query message — into `soak_rows`, each row with a key unique in the run. The
//!   ledger records each key's fate: committed (COMMIT acknowledged), aborted (COMMIT never sent)
//!   or in doubt (COMMIT sent, answer lost).
//! - `--ml N`: ML sessions running streaming `invoke_endpoint`, residual
//!   `WHERE invoke_endpoint(…)::float8 > k` and `detect_sentiment` statements over ranges of
//!   `soak_ml`, in both protocols, every row checked against the mock's models: each expected row
//!   exactly once with the right value.
//! - `--probe N`: untouched sessions running `SELECT 1` every `--probe-interval-ms`, recording
//!   each latency (never killed).
//!
//! `--kill-rate P` makes each plain or ML operation, with probability P, drop its connection at a
//! random point — mid-query, mid-transaction, mid-COMMIT, mid-result — and reconnect.
//!
//! Other modes: `--setup CONNSTR` creates the tables (straight to PostgreSQL); `--verify CONNSTR`
//! compares the ledger with `soak_rows` after the run (straight to PostgreSQL, not through the
//! proxy under test).
//!
//! Output: `key=value` lines on stdout (see [`stats::Stats::print`]); progress on stderr.

mod conn;
mod ml;
mod plain;
mod probe;
mod rng;
mod stats;
mod tables;

use std::sync::Arc;
use std::time::{Duration, Instant};

use stats::Stats;

const USAGE: &str = "usage: soak_client --setup CONNSTR [--ml-rows N]
       soak_client --conn CONNSTR [--plain N] [--ml N] [--probe N] [--duration SECS]
                   [--kill-rate P] [--seed N] [--plain-think-ms MS] [--ml-think-ms MS]
                   [--ml-rows N] [--ml-max-range N] [--probe-interval-ms MS] [--op-timeout SECS]
                   [--threads N] [--report-secs SECS] [--probe-out FILE] [--verify CONNSTR]";

/// What every session reads: the settings of the run and the shared counters.
pub struct Ctx {
    pub conn_str: String,
    pub stats: Stats,
    pub start: Instant,
    pub deadline: Instant,
    pub kill_rate: f64,
    pub seed: u64,
    pub plain_think: Duration,
    pub ml_think: Duration,
    pub ml_rows: i32,
    pub ml_max_range: i32,
    pub probe_interval: Duration,
    pub op_timeout: Duration,
    /// Errors without a SQLSTATE reported on stderr so far (they are few and worth a look).
    pub traced: std::sync::atomic::AtomicU64,
}

impl Ctx {
    /// Counts a failed operation's error class and, for classes without a SQLSTATE (`closed`,
    /// `io:…`, `timeout`, …), prints when and where it happened (the first 300), so that they
    /// can be matched with the restart and with pgenrich's log.
    pub fn error(&self, role: &str, op: &str, class: &str) {
        self.stats.inc(&format!("error.{role}.{class}"));
        let sqlstate = class.len() == 5 && class.bytes().all(|b| b.is_ascii_alphanumeric());
        if !sqlstate
            && self
                .traced
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                < 300
        {
            eprintln!(
                "[soak_client {:.3} s, unix {:.3}] {role} {op}: {class}",
                self.start.elapsed().as_secs_f64(),
                stats::unix_ms() as f64 / 1000.0
            );
        }
    }
}

struct Args {
    ctx: Ctx,
    setup: Option<String>,
    verify: Option<String>,
    plain: u32,
    ml: u32,
    probe: u32,
    threads: usize,
    report: Duration,
    probe_out: Option<String>,
}

fn usage(problem: &str) -> ! {
    eprintln!("soak_client: {problem}\n{USAGE}");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        ctx: Ctx {
            conn_str: String::new(),
            stats: Stats::default(),
            start: Instant::now(),
            deadline: Instant::now(),
            kill_rate: 0.0,
            seed: 1,
            plain_think: Duration::from_millis(200),
            ml_think: Duration::from_millis(500),
            ml_rows: 100_000,
            ml_max_range: 2000,
            probe_interval: Duration::from_millis(10),
            op_timeout: Duration::from_secs(60),
            traced: Default::default(),
        },
        setup: None,
        verify: None,
        plain: 0,
        ml: 0,
        probe: 0,
        threads: 0,
        report: Duration::from_secs(10),
        probe_out: None,
    };
    let mut duration = 60.0f64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        fn num<T: std::str::FromStr>(flag: &str, value: &str) -> T {
            value
                .parse()
                .unwrap_or_else(|_| usage(&format!("invalid value for {flag}: '{value}'")))
        }
        let ms = |v: &str| Duration::from_millis(num(&flag, v));
        let c = &mut args.ctx;
        match flag.as_str() {
            "--conn" => c.conn_str = value,
            "--setup" => args.setup = Some(value),
            "--verify" => args.verify = Some(value),
            "--plain" => args.plain = num(&flag, &value),
            "--ml" => args.ml = num(&flag, &value),
            "--probe" => args.probe = num(&flag, &value),
            "--duration" => duration = num(&flag, &value),
            "--kill-rate" => c.kill_rate = num(&flag, &value),
            "--seed" => c.seed = num(&flag, &value),
            "--plain-think-ms" => c.plain_think = ms(&value),
            "--ml-think-ms" => c.ml_think = ms(&value),
            "--ml-rows" => c.ml_rows = num(&flag, &value),
            "--ml-max-range" => c.ml_max_range = num(&flag, &value),
            "--probe-interval-ms" => c.probe_interval = ms(&value),
            "--op-timeout" => c.op_timeout = Duration::from_secs(num(&flag, &value)),
            "--threads" => args.threads = num(&flag, &value),
            "--report-secs" => args.report = Duration::from_secs(num(&flag, &value)),
            "--probe-out" => args.probe_out = Some(value),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    let c = &mut args.ctx;
    if !(0.0..=1.0).contains(&c.kill_rate) {
        usage("--kill-rate must be between 0 and 1");
    }
    if c.ml_rows < 10 || c.ml_max_range < 1 || !duration.is_finite() || duration <= 0.0 {
        usage("--ml-rows must be >= 10, --ml-max-range and --duration > 0");
    }
    if args.setup.is_none() && c.conn_str.is_empty() {
        usage("--conn or --setup is required");
    }
    c.start = Instant::now();
    c.deadline = c.start + Duration::from_secs_f64(duration);
    args
}

fn main() {
    let args = parse_args();
    let mut runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if args.threads > 1 {
        runtime.worker_threads(args.threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .unwrap_or_else(|e| usage(&format!("tokio runtime: {e}")));
    let code = runtime.block_on(run(args));
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    if let Some(conn_str) = &args.setup {
        return match tables::setup(conn_str, args.ctx.ml_rows).await {
            Ok(()) => {
                println!("setup=ok");
                0
            }
            Err(e) => {
                eprintln!("soak_client: setup failed: {e}");
                1
            }
        };
    }
    let ctx = Arc::new(args.ctx);
    let mut tasks = Vec::new();
    for session in 0..args.plain {
        tasks.push(tokio::spawn(plain::run(Arc::clone(&ctx), session)));
    }
    for session in 0..args.ml {
        tasks.push(tokio::spawn(ml::run(Arc::clone(&ctx), session)));
    }
    for session in 0..args.probe {
        tasks.push(tokio::spawn(probe::run(Arc::clone(&ctx), session)));
    }
    let progress = tokio::spawn(progress(Arc::clone(&ctx), args.report));

    // Sessions stop starting operations at the deadline; one that is still busy an operation
    // timeout later is stuck, counted and abandoned.
    let give_up =
        tokio::time::Instant::from_std(ctx.deadline + ctx.op_timeout + Duration::from_secs(5));
    let mut stuck = 0u64;
    for mut task in tasks {
        if tokio::time::timeout_at(give_up, &mut task).await.is_err() {
            task.abort();
            stuck += 1;
        }
    }
    progress.abort();
    ctx.stats.add("sessions.stuck_at_end", stuck);
    ctx.stats
        .add("run.elapsed_ms", ctx.start.elapsed().as_millis() as u64);

    if let Some(path) = &args.probe_out {
        if let Err(e) = ctx.stats.write_probe_samples(path) {
            eprintln!("soak_client: writing {path}: {e}");
            return 1;
        }
    }
    let mut code = 0;
    if let Some(conn_str) = &args.verify {
        if let Err(e) = tables::verify(conn_str, &ctx.stats).await {
            eprintln!("soak_client: verify failed: {e}");
            code = 1;
        }
    }
    ctx.stats.print();
    code
}

async fn progress(ctx: Arc<Ctx>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        eprintln!(
            "[soak_client {:>4} s] {}",
            ctx.start.elapsed().as_secs(),
            ctx.stats.progress_line()
        );
    }
}
