//! Configuration: defaults, sources, precedence and validation.

use clap::Parser;

use super::*;

fn cli(args: &[&str]) -> Cli {
    let mut all = vec!["pgenrich"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).expect("valid command line")
}

#[test]
fn defaults_apply_and_upstream_is_required() {
    let config = Config::load(cli(&["--upstream", "db.example:5432"])).expect("config");
    assert_eq!(config.listen, "127.0.0.1:6432".parse().expect("addr"));
    assert_eq!(config.upstream_host, "db.example");
    assert_eq!(config.upstream_tls_mode, UpstreamTlsMode::Prefer);
    assert_eq!(config.max_client_connections, 1000);
    assert_eq!(config.handshake_timeout, Duration::from_secs(30));
    assert_eq!(
        config.keepalive,
        Some(Keepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 6
        })
    );
    assert_eq!(config.idle_timeout, None);
    assert_eq!(config.max_query_bytes, 64 << 20);
    assert_eq!(config.max_ml_statement_bytes, 256 << 10);
    assert_eq!(config.max_buffered_bytes, 256 << 20);
    let small = Config::load(cli(&[
        "--upstream",
        "db:1",
        "--max-buffered-bytes",
        "512KiB",
    ]))
    .expect_err("too small");
    assert!(small.to_string().contains("max_buffered_bytes"), "{small}");
    assert_eq!(
        (config.max_prepared_bytes, config.max_prepared_memory),
        (64 << 20, 512 << 20)
    );
    let below = Config::load(cli(&[
        "--upstream",
        "db:1",
        "--max-prepared-bytes",
        "8MiB",
        "--max-prepared-memory",
        "4MiB",
    ]))
    .expect_err("process budget below the session's");
    assert!(below.to_string().contains("max_prepared_memory"), "{below}");
    let missing = Config::resolve(Cli::default(), FileConfig::default()).expect_err("missing");
    assert!(missing.to_string().contains("`upstream`"), "{missing}");
}

#[test]
fn runtime_threads_follow_the_host_unless_set() {
    let auto = Config::load(cli(&["--upstream", "h:1"])).expect("config");
    assert_eq!((auto.worker_threads, auto.enrich_threads), (0, 0));
    assert_eq!(auto.relay_threads(1), 1);
    assert_eq!(auto.relay_threads(2), 1);
    assert_eq!(auto.relay_threads(8), 8);
    assert_eq!((auto.loop_threads(1), auto.loop_threads(2)), (1, 2));
    assert_eq!(auto.loop_threads(8), 8);
    assert_eq!(auto.ml_threads(2), 2);
    assert_eq!(auto.ml_threads(0), 1);
    let file: FileConfig =
        toml::from_str("upstream = \"h:1\"\nworker_threads = 3\nenrich_threads = \"5\"")
            .expect("toml");
    let set = Config::resolve(cli(&["--enrich-threads", "4"]), file).expect("config");
    assert_eq!((set.relay_threads(2), set.loop_threads(2)), (3, 3));
    assert_eq!(set.ml_threads(16), 4);
    let bad = Config::load(cli(&["--upstream", "h:1", "--enrich-threads", "many"]))
        .expect_err("not a number");
    assert!(bad.to_string().contains("`enrich_threads`"), "{bad}");
}

/// A boolean key that is on by default: off from the file, the flag wins over the file,
/// and a bad value names the key.
fn on_unless_turned_off(key: &str, field: fn(&Config) -> bool) {
    let flag = format!("--{}", key.replace('_', "-"));
    assert!(field(
        &Config::load(cli(&["--upstream", "h:1"])).expect("config")
    ));
    let file = || -> FileConfig {
        toml::from_str(&format!("upstream = \"h:1\"\n{key} = false")).expect("toml")
    };
    assert!(!field(
        &Config::resolve(Cli::default(), file()).expect("config")
    ));
    let cli_wins = Config::resolve(cli(&[&flag, "on"]), file()).expect("config");
    assert!(field(&cli_wins), "{flag} wins over the file");
    let bad = Config::load(cli(&["--upstream", "h:1", &flag, "maybe"])).expect_err("not a boolean");
    assert!(bad.to_string().contains(&format!("`{key}`")), "{bad}");
}

#[test]
fn direct_relay_is_on_unless_turned_off() {
    on_unless_turned_off("direct_relay", |c| c.direct_relay);
}

#[test]
fn relay_sched_batch_is_on_unless_turned_off() {
    on_unless_turned_off("relay_sched_batch", |c| c.relay_sched_batch);
}

#[test]
fn command_line_wins_over_file() {
    let file: FileConfig = toml::from_str(
        "upstream = \"file:1\"\nlisten = \"127.0.0.1:7000\"\nmax_query_bytes = \"2MiB\"\nidle_timeout = \"5m\"",
    )
    .expect("toml");
    let config = Config::resolve(cli(&["--upstream", "cli:2"]), file).expect("config");
    assert_eq!(config.upstream, "cli:2");
    assert_eq!(config.listen.port(), 7000);
    assert_eq!(config.max_query_bytes, 2 << 20);
    assert_eq!(config.idle_timeout, Some(Duration::from_secs(300)));
}

#[test]
fn invalid_values_name_their_key() {
    let cases: [(&[&str], &str); 9] = [
        (
            &["--upstream", "h:1", "--admin-listen", "localhost"],
            "`admin_listen`",
        ),
        (
            &["--upstream", "h:1", "--admin-listen", "127.0.0.1:6432"],
            "`admin_listen`",
        ),
        (&["--upstream", "nohostport"], "`upstream`"),
        (&["--upstream", "h:1", "--listen", "nowhere"], "`listen`"),
        (
            &["--upstream", "h:1", "--upstream-tls-mode", "maybe"],
            "`upstream_tls_mode`",
        ),
        (
            &["--upstream", "h:1", "--handshake-timeout", "soon"],
            "`handshake_timeout`",
        ),
        (
            &["--upstream", "h:1", "--max-client-connections", "0"],
            "`max_client_connections`",
        ),
        (
            &["--upstream", "h:1", "--tls-cert-file", "c.pem"],
            "`tls_key_file`",
        ),
        (
            &["--upstream", "h:1", "--log-format", "xml"],
            "`log_format`",
        ),
    ];
    for (args, key) in cases {
        let error = Config::load(cli(args)).expect_err("invalid");
        assert!(error.to_string().contains(key), "{args:?}: {error}");
    }
}

#[test]
fn the_example_file_is_valid_and_shows_the_defaults() {
    let file: FileConfig =
        toml::from_str(include_str!("../../config/pgenrich.example.toml")).expect("example parses");
    let from_file = Config::resolve(Cli::default(), file).expect("example is valid");
    let defaults = Config::load(cli(&["--upstream", &from_file.upstream])).expect("defaults");
    assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
}

#[test]
fn local_backends_from_file_flag_or_environment_syntax() {
    let file: FileConfig = toml::from_str(
        "upstream = \"db:5432\"\ncomprehend_backend = \"local\"\n\
         [endpoints.fraud]\nbackend = \"onnx\"\nmodel = \"m/fraud.onnx\"\noutput = \"label\"\n\
         [endpoints.remote]\nbackend = \"sagemaker\"\n",
    )
    .expect("toml");
    let config = Config::resolve(Cli::default(), file).expect("config");
    assert_eq!(
        config.inference.comprehend_backend,
        SentimentBackendKind::Local
    );
    assert_eq!(
        config.inference.endpoints.keys().collect::<Vec<_>>(),
        ["fraud"]
    );
    assert_eq!(
        config.inference.endpoints["fraud"],
        LocalEndpoint {
            model: PathBuf::from("m/fraud.onnx"),
            output: Some("label".into())
        }
    );
    // The flag (or PGENRICH_ENDPOINTS) replaces the file's tables.
    let flag = cli(&[
        "--upstream",
        "db:1",
        "--endpoints",
        "a=onnx:x.onnx, b=sagemaker ,c=onnx:/abs/c.onnx",
    ]);
    let config = Config::resolve(flag, FileConfig::default()).expect("config");
    assert_eq!(
        config.inference.endpoints.keys().collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert_eq!(
        config.inference.endpoints["c"].model,
        PathBuf::from("/abs/c.onnx")
    );
    for bad in ["a=onnx", "a=tflite:x", "=onnx:x", "plain"] {
        let error =
            Config::load(cli(&["--upstream", "h:1", "--endpoints", bad])).expect_err("invalid");
        assert!(error.to_string().contains("`endpoints`"), "{bad}: {error}");
    }
    let error = Config::load(cli(&["--upstream", "h:1", "--comprehend-backend", "gcp"]))
        .expect_err("invalid");
    assert!(
        error.to_string().contains("`comprehend_backend`"),
        "{error}"
    );
    let file: FileConfig =
        toml::from_str("upstream = \"db:1\"\n[endpoints.x]\nbackend = \"onnx\"\n").expect("toml");
    let error = Config::resolve(Cli::default(), file).expect_err("no model");
    assert!(error.to_string().contains("needs `model`"), "{error}");
}

#[test]
fn model_paths_in_a_file_are_relative_to_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "upstream = \"db:1\"\n[endpoints.f]\nbackend = \"onnx\"\nmodel = \"../models/f.onnx\"\n",
    )
    .expect("write");
    let config = Config::load(cli(&["--config", path.to_str().expect("utf8")])).expect("config");
    assert_eq!(
        config.inference.endpoints["f"].model,
        dir.path().join("../models/f.onnx")
    );
}

#[test]
fn unknown_file_keys_are_rejected() {
    let error = toml::from_str::<FileConfig>("lisen = \"x\"").expect_err("typo");
    assert!(error.to_string().contains("lisen"), "{error}");
}

#[test]
fn tcp_keepalive_is_on_by_default_and_checked() {
    let config = Config::load(cli(&[
        "--upstream",
        "h:1",
        "--tcp-keepidle",
        "5s",
        "--tcp-keepcnt",
        "2",
    ]))
    .expect("valid");
    let keepalive = config.keepalive.expect("on");
    assert_eq!(keepalive.idle, Duration::from_secs(5));
    assert_eq!(keepalive.count, 2);
    let config =
        Config::load(cli(&["--upstream", "h:1", "--tcp-keepalive", "false"])).expect("valid");
    assert_eq!(config.keepalive, None);
    for (args, key) in [
        (["--tcp-keepidle", "0"], "`tcp_keepidle`"),
        (["--tcp-keepintvl", "500ms"], "`tcp_keepintvl`"),
        (["--tcp-keepcnt", "200"], "`tcp_keepcnt`"),
    ] {
        let mut all = vec!["--upstream", "h:1"];
        all.extend(args);
        let error = Config::load(cli(&all)).expect_err("invalid");
        assert!(error.to_string().contains(key), "{args:?}: {error}");
    }
}

#[test]
fn the_admin_listener_is_off_unless_set() {
    let config = Config::load(cli(&["--upstream", "h:1"])).expect("valid");
    assert_eq!(config.admin_listen, None);
    let config = Config::load(cli(&[
        "--upstream",
        "h:1",
        "--admin-listen",
        "0.0.0.0:9187",
    ]))
    .expect("valid");
    assert_eq!(
        config.admin_listen,
        Some("0.0.0.0:9187".parse().expect("addr"))
    );
}

#[test]
fn the_kubernetes_example_carries_a_valid_config() {
    let manifest = include_str!("../../config/kubernetes-sidecar.yaml");
    let start = manifest
        .find("pgenrich.toml: |\n")
        .expect("the ConfigMap's file")
        + "pgenrich.toml: |\n".len();
    let toml_text: String = manifest[start..]
        .lines()
        .take_while(|l| !l.starts_with("---"))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let file: FileConfig = toml::from_str(&toml_text).expect("the embedded config parses");
    // PGENRICH_REDIS_URL comes from the Secret.
    let secret = cli(&["--redis-url", "rediss://:token@cache.example:6379"]);
    let config = Config::resolve(secret, file).expect("and is valid");
    let fleet = config.inference.fleet.as_ref().expect("Redis used");
    assert!(fleet.cache);
    assert_eq!(fleet.max_calls_per_target, Some(24));
    assert_eq!(
        config.admin_listen,
        Some("0.0.0.0:9187".parse().expect("addr"))
    );
    assert!(config.access.is_configured());
    assert!(config
        .access
        .grant("orders_app")
        .allows(crate::access::INVOKE_ENDPOINT, "fraud-v3"));
}

#[test]
fn redis_keys_need_each_other_and_never_echo_the_url() {
    let off = Config::load(cli(&["--upstream", "h:1"])).expect("config");
    assert!(off.inference.fleet.is_none(), "off by default");
    let fleet = Config::load(cli(&[
        "--upstream",
        "h:1",
        "--redis-url",
        "rediss://user:s3cret@cache:6380/2",
        "--fleet-max-calls-per-endpoint",
        "24",
        "--inference-cache-ttl",
        "10m",
    ]))
    .expect("config")
    .inference
    .fleet
    .expect("fleet");
    assert_eq!(fleet.max_calls_per_target, Some(24));
    assert!(!fleet.cache);
    assert_eq!(fleet.key_prefix, "pgenrich:");
    assert_eq!(fleet.timeout, Duration::from_millis(250));
    assert_eq!(fleet.cache_ttl, Duration::from_secs(600));
    assert!(!format!("{fleet:?}").contains("s3cret"), "{fleet:?}");

    for (args, key) in [
        (
            &["--inference-cache-redis", "true"][..],
            "inference_cache_redis",
        ),
        (
            &["--fleet-max-calls-per-endpoint", "2"],
            "fleet_max_calls_per_endpoint",
        ),
        (&["--redis-url", "redis://h"], "redis_url"),
        (
            &[
                "--redis-url",
                "http://u:s3cret@h",
                "--inference-cache-redis",
                "true",
            ],
            "redis_url",
        ),
        (
            &[
                "--redis-url",
                "redis://u:s3cret@h:notaport",
                "--inference-cache-redis",
                "true",
            ],
            "redis_url",
        ),
        (
            &[
                "--redis-url",
                "redis://h",
                "--inference-cache-redis",
                "true",
                "--redis-timeout",
                "0s",
            ],
            "redis_timeout",
        ),
    ] {
        let mut all = vec!["--upstream", "h:1"];
        all.extend_from_slice(args);
        let error = Config::load(cli(&all)).expect_err("invalid");
        let text = error.to_string();
        assert!(text.contains(key), "{args:?}: {text}");
        assert!(!text.contains("s3cret"), "{args:?}: {text}");
    }
}
