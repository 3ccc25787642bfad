//! The `pgenrich` binary itself: configuration errors name their key, settings come from flags,
//! environment and file with that precedence, and SIGTERM drains and exits cleanly.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::harness::{connect, free_port, postgres, DATABASE, PASSWORD, USER};

fn pgenrich() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgenrich"));
    cmd.env_remove("RUST_LOG").kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("PGENRICH_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Points the binary's AWS SDK clients at `mock` with static test credentials.
fn with_mock_aws<'a>(cmd: &'a mut Command, mock: &mock_aws::MockAws) -> &'a mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "AKIDCLITEST")
        .env("AWS_SECRET_ACCESS_KEY", "cli-test-secret")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", mock.url())
        .env("AWS_ENDPOINT_URL_COMPREHEND", mock.url())
}

/// Starts the binary listening on `port` and relaying to `pg`, with `extra` flags.
fn serve(
    cmd: &mut Command,
    port: u16,
    pg: &crate::harness::Postgres,
    extra: &[&str],
) -> tokio::process::Child {
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--upstream")
        .arg(pg.upstream())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgenrich")
}

/// Connection string for the binary on `port`.
fn conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname={DATABASE}")
}

/// Connects once the binary accepts connections (it is given ten seconds).
async fn connect_when_ready(conninfo: &str) -> tokio_postgres::Client {
    for _ in 0..100 {
        if let Ok((c, conn)) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pgenrich binary does not accept connections on {conninfo}");
}

/// Sends SIGTERM and waits for the binary to exit.
async fn terminate(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("pgenrich exits after SIGTERM")
        .expect("wait")
}

/// A cancel request for `client`'s `pg_sleep(30)`, sent on a connection of its own, stops it
/// with 57014.
async fn assert_cancels(client: &tokio_postgres::Client) {
    let token = client.cancel_token();
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    };
    let (slept, cancelled) = tokio::join!(client.simple_query("SELECT pg_sleep(30)"), cancel);
    cancelled.expect("cancel request");
    let error = slept.expect_err("cancelled");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_stop_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "upstream = \"127.0.0.1:5432\"\ndrain_timeout = \"forever\"\n",
    )
    .expect("write");
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], vec![], "`upstream`"),
        (
            vec!["--upstream".into(), "no-port".into()],
            vec![],
            "`upstream`",
        ),
        (
            vec!["--upstream".into(), "h:1".into()],
            vec![("PGENRICH_MAX_CLIENT_CONNECTIONS", "lots")],
            "`max_client_connections`",
        ),
        (
            vec!["--config".into(), file.display().to_string()],
            vec![],
            "`drain_timeout`",
        ),
        (
            vec![
                "--upstream".into(),
                "h:1".into(),
                "--tls-cert-file".into(),
                "/nonexistent.pem".into(),
                "--tls-key-file".into(),
                "/nonexistent.key".into(),
            ],
            vec![],
            "`tls_cert_file`",
        ),
    ];
    for (args, env, key) in cases {
        let out = pgenrich()
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .await
            .expect("run pgenrich");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(key),
            "{args:?}: expected {key} in: {stderr}"
        );
    }
    let help = pgenrich().arg("--help").output().await.expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--upstream",
        "--config",
        "--upstream-tls-mode",
        "--drain-timeout",
        "PGENRICH_IDLE_TIMEOUT",
    ] {
        assert!(help.contains(flag), "--help documents {flag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_with_env_over_file_and_drains_on_sigterm() {
    let pg = postgres();
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let file = dir.path().join("pgenrich.toml");
    // The file names a wrong upstream; the environment overrides it, the flag sets the port.
    std::fs::write(
        &file,
        "upstream = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:1\"\nlog_format = \"json\"\n\
         worker_threads = 3\nenrich_threads = 1\nupstream_tls_mode = \"disable\"\n",
    )
    .expect("write");
    let mock = mock_aws::MockAws::start().await.expect("mock AWS");
    let mut cmd = pgenrich();
    let mut child = with_mock_aws(&mut cmd, &mock)
        .args([
            "--config",
            &file.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("PGENRICH_UPSTREAM", pg.upstream())
        .env("PGENRICH_RELAY_SCHED_BATCH", "false")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgenrich");
    let conninfo = conninfo(port);
    let client = connect_when_ready(&conninfo).await;
    let row = client.query_one("SELECT 1 + 1", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 2);
    // The AWS chain: credentials, region and service endpoints from the standard variables.
    let row = client
        .query_one(
            "SELECT aws_sagemaker.invoke_endpoint('m', NULL, 2, 3), \
             (aws_comprehend.detect_sentiment('great', 'en')).sentiment",
            &[],
        )
        .await
        .expect("ML through the binary");
    assert_eq!(row.get::<_, String>(0), "5");
    assert_eq!(row.get::<_, String>(1), "POSITIVE");
    let stats = mock.stats();
    assert_eq!(
        (
            stats.sagemaker_calls,
            stats.comprehend_calls,
            stats.unsigned
        ),
        (1, 1, 0)
    );
    let _ = connect(&pg.direct_conninfo()).await;
    // Plain sessions are relayed by the pass-through loops, one per relay thread.
    let pid = child.id().expect("pid");
    let before = threads(pid, "pgenrich-relay");
    assert_eq!(before.len(), 3, "three pass-through loops: {before:?}");
    // PGENRICH_RELAY_SCHED_BATCH=false leaves them under the default policy.
    assert_eq!(policies(pid, "pgenrich-relay"), vec![SCHED_OTHER; 3]);
    for _ in 0..200 {
        client.query_one("SELECT 1", &[]).await.expect("query");
    }
    let after = threads(pid, "pgenrich-relay");
    assert!(
        after.iter().sum::<u64>() > before.iter().sum::<u64>(),
        "the loops relayed the queries: {before:?} -> {after:?}"
    );

    // Concurrent sessions on the three runtime threads: each works, ML included, and each
    // cancel request (a connection of its own) reaches its session.
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(connect(&conninfo).await);
    }
    let answers = futures_util::future::join_all(others.iter().enumerate().map(|(i, c)| {
        let sql = format!("SELECT aws_sagemaker.invoke_endpoint('m', NULL, {i}, 1)");
        async move { c.query_one(sql.as_str(), &[]).await }
    }))
    .await;
    for (i, answer) in answers.into_iter().enumerate() {
        let value: String = answer.expect("ML in every session").get(0);
        assert_eq!(value, (i + 1).to_string());
    }
    for sleeper in &others {
        assert_cancels(sleeper).await;
    }
    drop(others);

    let exit = terminate(&mut child).await;
    assert!(exit.success(), "{exit:?}");
    // The idle session was closed with 57P01.
    let error = client.simple_query("SELECT 1").await.expect_err("closed");
    assert!(
        error.is_closed() || error.code().map(|c| c.code()) == Some("57P01"),
        "{error}"
    );
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .await
        .expect("read logs");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with('{') && l.contains("pgenrich stopped")),
        "JSON logs: {stderr}"
    );
    // Session log lines carry the session's span (the relay pump runs outside it).
    let ml_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ML statement"))
        .collect();
    assert_eq!(ml_lines.len(), 5, "one line per ML statement: {stderr}");
    for line in ml_lines {
        assert!(
            line.contains("\"session_id\"") && line.contains(&format!("\"user\":\"{USER}\"")),
            "session fields in {line}"
        );
    }
    assert!(!stderr.contains(PASSWORD), "no secrets in logs");
    assert!(
        !stderr.contains("cli-test-secret"),
        "no AWS secrets in logs"
    );
}

/// The single-threaded runtime (`worker_threads = 1`) with `direct_relay` off relays everything
/// itself: plain and ML statements side by side, cancels, and drains on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_on_one_runtime_thread_serves_cancels_and_drains() {
    let pg = postgres();
    let port = free_port();
    let mock = mock_aws::MockAws::start().await.expect("mock AWS");
    let mut cmd = pgenrich();
    let mut child = serve(
        with_mock_aws(&mut cmd, &mock).env("PGENRICH_DIRECT_RELAY", "false"),
        port,
        pg,
        &["--worker-threads", "1"],
    );
    let conninfo = conninfo(port);
    let clients = [
        connect_when_ready(&conninfo).await,
        connect(&conninfo).await,
    ];
    let (a, b) = (&clients[0], &clients[1]);
    let (ml, plain) = tokio::join!(
        a.query_one(
            "SELECT aws_sagemaker.invoke_endpoint('m', NULL, 40, 2)",
            &[]
        ),
        b.query_one("SELECT count(*) FROM generate_series(1, 1000)", &[])
    );
    assert_eq!(ml.expect("ML").get::<_, String>(0), "42");
    assert_eq!(plain.expect("plain").get::<_, i64>(0), 1000);
    assert_cancels(b).await;
    let pid = child.id().expect("pid");
    assert_eq!(
        threads(pid, "pgenrich-relay"),
        Vec::<u64>::new(),
        "no loops"
    );
    drop(clients);
    let exit = terminate(&mut child).await;
    assert!(exit.success(), "{exit:?}");
}

/// The time on CPU, in nanoseconds, of each of the process's threads named `name`.
fn threads(pid: u32, name: &str) -> Vec<u64> {
    tasks_named(pid, name)
        .iter()
        .map(|task| {
            let schedstat = std::fs::read_to_string(task.join("schedstat")).expect("schedstat");
            let on_cpu = schedstat
                .split_whitespace()
                .next()
                .expect("schedstat format");
            on_cpu.parse().expect("nanoseconds")
        })
        .collect()
}

/// Linux scheduling policies (`sched.h`).
const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// The scheduling policy of each of the process's threads named `name`.
fn policies(pid: u32, name: &str) -> Vec<u32> {
    tasks_named(pid, name)
        .iter()
        .map(|task| {
            let stat = std::fs::read_to_string(task.join("stat")).expect("stat");
            // Field 41 of proc_pid_stat(5); fields are counted from 3 after the command name.
            stat_fields(&stat)[41 - 3].parse().expect("policy")
        })
        .collect()
}

/// The `/proc` directories of the process's threads named `name`.
fn tasks_named(pid: u32, name: &str) -> Vec<std::path::PathBuf> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    tasks
        .map(|task| task.expect("task").path())
        .filter(|path| {
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            comm.trim_end() == name
        })
        .collect()
}

/// The fields of a `/proc/.../stat` line after the command name, which is in parentheses and
/// may hold spaces.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect()
}

/// The CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let fields = stat_fields(&stat);
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf CLK_TCK");
    let hz: u64 = String::from_utf8_lossy(&hz.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK");
    Duration::from_millis(ticks * 1000 / hz)
}

/// The idle timeout counts from the session's last turn to idle: a statement that runs longer
/// than the timeout leaves a usable session, and a session inside a transaction block (not
/// idle) is looked at once per timeout instead of the timer firing over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_counts_from_idle_and_does_not_spin() {
    // On the pass-through loop, without and with TLS to the database, and on the runtime.
    for (upstream_tls_mode, direct_relay) in [
        ("disable", "true"),
        ("prefer", "true"),
        ("disable", "false"),
    ] {
        idle_timeout_on(upstream_tls_mode, direct_relay).await;
    }
}

async fn idle_timeout_on(upstream_tls_mode: &str, direct_relay: &str) {
    let pg = postgres();
    let port = free_port();
    let args = [
        "--idle-timeout",
        "300ms",
        "--upstream-tls-mode",
        upstream_tls_mode,
        "--direct-relay",
        direct_relay,
    ];
    let mut child = serve(&mut pgenrich(), port, pg, &args);
    let pid = child.id().expect("pid");
    let conninfo = conninfo(port);

    let client = connect_when_ready(&conninfo).await;
    // Automatic thread counts: one pass-through loop per CPU, small hosts included.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loops = if direct_relay == "true" { cpus } else { 0 };
    assert_eq!(
        threads(pid, "pgenrich-relay").len(),
        loops,
        "{upstream_tls_mode}/{direct_relay}: loops on {cpus} CPUs"
    );
    // They run under SCHED_BATCH by default.
    assert_eq!(
        policies(pid, "pgenrich-relay"),
        vec![SCHED_BATCH; loops],
        "{upstream_tls_mode}/{direct_relay}: scheduling policy of the loops"
    );
    client
        .simple_query("SELECT pg_sleep(0.8)")
        .await
        .expect("long statement");
    client
        .simple_query("SELECT 1")
        .await
        .expect("the session outlives a statement longer than idle_timeout");

    client.simple_query("BEGIN").await.expect("BEGIN");
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let used = cpu_time(pid) - before;
    assert!(
        used < Duration::from_millis(400),
        "{upstream_tls_mode}/{direct_relay}: pgenrich used {used:?} of CPU while one session sat in a \
         transaction block"
    );
    client
        .simple_query("COMMIT")
        .await
        .expect("not closed inside a block");

    tokio::time::sleep(Duration::from_millis(800)).await;
    let error = client
        .simple_query("SELECT 1")
        .await
        .expect_err("closed once idle longer than idle_timeout");
    assert!(
        client.is_closed(),
        "{upstream_tls_mode}/{direct_relay}: {error}"
    );
    let exit = terminate(&mut child).await;
    assert!(
        exit.success(),
        "{upstream_tls_mode}/{direct_relay}: {exit:?}"
    );
}

/// `rediss://`: the binary reaches Redis over TLS, verifying the server against the system's CA
/// roots (here `SSL_CERT_FILE`, the test CA), and its results land there; a server it cannot
/// verify is not used, and statements go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_shares_results_over_tls_to_redis() {
    use ::redis::AsyncCommands;
    let pg = postgres();
    let redis = crate::harness::redis();
    let mock = mock_aws::MockAws::start().await.expect("mock AWS");
    for (trusted, prefix) in [(true, "cli-tls-trusted:"), (false, "cli-tls-untrusted:")] {
        let port = free_port();
        let mut cmd = pgenrich();
        with_mock_aws(&mut cmd, &mock).env(
            "SSL_CERT_FILE",
            if trusted {
                pg.tls.ca_cert.clone()
            } else {
                std::path::PathBuf::from("/nonexistent")
            },
        );
        let url = format!("rediss://localhost:{}/0", redis.tls_port);
        let mut child = serve(
            &mut cmd,
            port,
            pg,
            &[
                "--redis-url",
                &url,
                "--inference-cache-redis",
                "true",
                "--redis-key-prefix",
                prefix,
            ],
        );
        let client = connect_when_ready(&conninfo(port)).await;
        let rows = client
            .simple_query(
                "SELECT aws_comprehend.detect_sentiment('tls ' || g, 'en') \
                 FROM generate_series(1, 5) g",
            )
            .await
            .expect("runs with or without Redis");
        assert_eq!(crate::harness::text_rows(&rows).len(), 5);
        let mut check = redis.connect().await;
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for _ in 0..50 {
            keys = check.keys(format!("{prefix}r:*")).await.expect("keys");
            if keys.len() == 5 || !trusted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !trusted {
            // Give a late write the time the trusted run needed at most.
            tokio::time::sleep(Duration::from_millis(500)).await;
            keys = check.keys(format!("{prefix}r:*")).await.expect("keys");
        }
        assert_eq!(
            keys.len(),
            if trusted { 5 } else { 0 },
            "trusted: {trusted}"
        );
        drop(client);
        assert!(terminate(&mut child).await.success());
    }
}
