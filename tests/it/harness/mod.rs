//! Shared test harness: a throw-away PostgreSQL server started from the installed binaries (once
//! per test binary), pgenrich started in-process on port 0, TLS material, and a minimal raw
//! protocol client for malformed-input and pipelining tests.
//!
//! The server runs in a temp directory on a free loopback port with SCRAM authentication (plus
//! one role per other method), TLS enabled with a certificate made by the test; pgenrich reaches
//! it without TLS and relays on its pass-through loops unless [`upstream_tls_mode`] and
//! [`direct_relay`] say otherwise. A watchdog shell
//! stops it and removes the directory when the test process exits. On demand the harness also
//! starts a hot standby streaming from it ([`standby`]) and creates the differential suite's
//! reference database ([`reference_database`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use pgenrich::config::{Config, UpstreamTlsMode};
use pgenrich::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

mod redis;
pub use redis::{redis, Redis};

pub const DATABASE: &str = "pgenrich_test";
/// SCRAM-authenticated application role.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "alice-secret";
pub const SUPERUSER_PASSWORD: &str = "postgres-secret";

pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub tls: TlsFiles,
}

/// PEM files of a test CA and certificates it signed for 127.0.0.1 / localhost.
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// The shared PostgreSQL server, started on first use.
pub fn postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(start_postgres)
}

fn server_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    match candidates.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin. Install them \
             with `apt-get install -y postgresql postgresql-client` (or point PG_BIN at the \
             directory holding initdb and postgres)."
        ),
    }
}

/// Runs as this OS user when the tests run as root (initdb and postgres refuse root).
fn os_user() -> Option<(u32, u32)> {
    let euid = String::from_utf8(Command::new("id").arg("-u").output().ok()?.stdout).ok()?;
    if euid.trim() != "0" {
        return None;
    }
    let id = |flag: &str, name: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, name]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    for name in ["postgres", "nobody"] {
        if let (Some(uid), Some(gid)) = (id("-u", name), id("-g", name)) {
            return Some((uid, gid));
        }
    }
    panic!(
        "running as root, but neither a `postgres` nor a `nobody` user exists to run PostgreSQL"
    );
}

fn run_as(cmd: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn chown(path: &Path, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
}

/// The upstream leg of in-process proxies: plain by default; `PGENRICH_TEST_UPSTREAM_TLS=prefer`
/// (a pass of the test script) runs the suite over TLS to the database.
pub fn upstream_tls_mode() -> UpstreamTlsMode {
    match std::env::var("PGENRICH_TEST_UPSTREAM_TLS").as_deref() {
        Err(_) | Ok("disable") => UpstreamTlsMode::Disable,
        Ok("prefer") => UpstreamTlsMode::Prefer,
        Ok(other) => panic!("PGENRICH_TEST_UPSTREAM_TLS={other}: expected disable or prefer"),
    }
}

/// Whether in-process proxies relay on the pass-through loops (the default) or, with
/// `PGENRICH_TEST_DIRECT_RELAY=false` (a pass of the test script), on the tokio runtime.
pub fn direct_relay() -> bool {
    match std::env::var("PGENRICH_TEST_DIRECT_RELAY").as_deref() {
        Err(_) | Ok("true") => true,
        Ok("false") => false,
        Ok(other) => panic!("PGENRICH_TEST_DIRECT_RELAY={other}: expected true or false"),
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn start_postgres() -> Postgres {
    let bin = server_bin_dir();
    let user = os_user();
    let dir = tempfile::Builder::new()
        .prefix("pgenrich-test-")
        .tempdir()
        .expect("temp dir")
        .keep();
    chown(&dir, user);
    let data = dir.join("data");
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, SUPERUSER_PASSWORD).expect("pwfile");
    chown(&pwfile, user);
    let status = run_as(&mut Command::new(bin.join("initdb")), user)
        .args([
            "-D",
            data.to_str().expect("utf8"),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
        ])
        .args(["--auth=scram-sha-256", "--auth-local=trust"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .output()
        .expect("run initdb");
    assert!(
        status.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );

    let tls = write_tls_files(&dir, &data, user);
    // Replication (for the hot standby) over the Unix socket only, as the superuser trusts there.
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         local replication postgres trust\n\
         host all trust_user 127.0.0.1/32 trust\n\
         host all md5_user 127.0.0.1/32 md5\n\
         host all password_user 127.0.0.1/32 password\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    )
    .expect("pg_hba");

    let port = spawn_postgres(&bin, user, &dir, &[]);
    let pg = Postgres {
        port,
        dir,
        bin,
        tls,
    };
    pg.wait_ready();
    pg.psql_super(&format!(
        "CREATE DATABASE {DATABASE};
         CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}';
         CREATE ROLE trust_user LOGIN;
         CREATE ROLE password_user LOGIN PASSWORD 'plain-secret';
         SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN PASSWORD 'md5-secret';
         GRANT ALL ON DATABASE {DATABASE} TO {USER}, trust_user, md5_user, password_user;
         ALTER DATABASE {DATABASE} OWNER TO {USER};
         \\c {DATABASE}
         GRANT CREATE ON SCHEMA public TO PUBLIC;"
    ));
    pg
}

/// Starts `postgres` on `dir/data` on a free port (socket in `dir`, log in `dir/postgres.log`)
/// with the settings every server of the harness shares, plus `extra` settings; a watchdog stops
/// it with this process. Returns the port.
// PostgreSQL and its watchdog outlive every test by design; the watchdog stops the server when
// this process exits, and init reaps both.
#[allow(clippy::zombie_processes)]
fn spawn_postgres(bin: &Path, user: Option<(u32, u32)>, dir: &Path, extra: &[&str]) -> u16 {
    let port = free_port();
    let log = std::fs::File::create(dir.join("postgres.log")).expect("log");
    let mut command = Command::new(bin.join("postgres"));
    run_as(&mut command, user)
        .args(["-D", dir.join("data").to_str().expect("utf8")])
        .args(["-p", &port.to_string(), "-k", dir.to_str().expect("utf8")])
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
        // A standby needs max_connections and max_wal_senders at least the primary's: the same.
        .args(["-c", "max_connections=200", "-c", "fsync=off"])
        .args(["-c", "shared_buffers=64MB", "-c", "max_wal_senders=4"]);
    for setting in extra {
        command.args(["-c", setting]);
    }
    let child = command
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start postgres");
    watchdog(child.id(), dir);
    port
}

/// Stops PostgreSQL (immediate shutdown) and removes its directory once this process is gone.
fn watchdog(postgres_pid: u32, dir: &Path) {
    watchdog_with(postgres_pid, "QUIT", dir);
}

/// Sends `signal` to `pid` and removes `dir` once this process is gone.
#[allow(clippy::zombie_processes)] // see spawn_postgres
fn watchdog_with(pid: u32, signal: &str, dir: &Path) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -{signal} {pid} 2>/dev/null; \
         for i in $(seq 50); do kill -0 {pid} 2>/dev/null || break; sleep 0.1; done; \
         rm -rf '{dir}'",
        me = std::process::id(),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start watchdog");
}

impl Postgres {
    fn wait_ready(&self) {
        for _ in 0..300 {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        panic!("PostgreSQL did not become ready; its log:\n{log}");
    }

    pub fn upstream(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs SQL as the superuser over the Unix socket (bypassing pgenrich).
    /// Statements are read as a script, so each runs in its own transaction.
    pub fn psql_super(&self, sql: &str) -> String {
        self.psql_super_in("postgres", sql)
    }

    /// [`Postgres::psql_super`] in database `database`.
    pub fn psql_super_in(&self, database: &str, sql: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(psql_path())
            .args([
                "-h",
                self.dir.to_str().expect("utf8"),
                "-p",
                &self.port.to_string(),
            ])
            .args([
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-X",
                "-q",
                "-A",
                "-t",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run psql");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(sql.as_bytes())
            .expect("write script");
        let out = child.wait_with_output().expect("psql output");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A connection string straight to PostgreSQL (no pgenrich).
    pub fn direct_conninfo(&self) -> String {
        self.direct_conninfo_to(DATABASE)
    }

    /// A connection string straight to PostgreSQL's database `database`, as [`USER`].
    pub fn direct_conninfo_to(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={database}",
            self.port
        )
    }
}

/// The differential suite's reference database.
pub const REFERENCE_DATABASE: &str = "pgenrich_reference";

/// Creates (once) [`REFERENCE_DATABASE`] on the shared server: owned by [`USER`], created like
/// [`DATABASE`] (UTF8, locale C, so text sorts the same in both), holding the SQL versions of the
/// ML functions from `reference.sql`. Returns its name.
pub fn reference_database() -> &'static str {
    static CREATED: OnceLock<()> = OnceLock::new();
    CREATED.get_or_init(|| {
        let pg = postgres();
        pg.psql_super(&format!(
            "CREATE DATABASE {REFERENCE_DATABASE} OWNER {USER} TEMPLATE template0 \
             ENCODING 'UTF8' LOCALE 'C'"
        ));
        pg.psql_super_in(REFERENCE_DATABASE, include_str!("../reference.sql"));
    });
    REFERENCE_DATABASE
}

/// A hot standby of the shared server: a second PostgreSQL streaming its WAL.
pub struct Standby {
    /// The standby itself (read-only); `psql_super`, `upstream` and the conninfo helpers work as
    /// on the primary.
    pub server: Postgres,
}

impl std::ops::Deref for Standby {
    type Target = Postgres;
    fn deref(&self) -> &Postgres {
        &self.server
    }
}

/// The shared hot standby of [`postgres`], started on first use.
pub fn standby() -> &'static Standby {
    static STANDBY: OnceLock<Standby> = OnceLock::new();
    STANDBY.get_or_init(start_standby)
}

/// pg_basebackup of the primary with `-R` (standby.signal and primary_conninfo over the primary's
/// Unix socket, where replication is trusted) and a replication slot, so the primary keeps the
/// WAL the standby has not received. pg_hba.conf, the TLS key pair and the roles come along, so
/// clients authenticate and negotiate TLS exactly as with the primary.
fn start_standby() -> Standby {
    let primary = postgres();
    let user = os_user();
    let dir = tempfile::Builder::new()
        .prefix("pgenrich-standby-")
        .tempdir()
        .expect("temp dir")
        .keep();
    chown(&dir, user);
    let data = dir.join("data");
    let out = run_as(&mut Command::new(primary.bin.join("pg_basebackup")), user)
        .args(["-h", primary.dir.to_str().expect("utf8")])
        .args(["-p", &primary.port.to_string(), "-U", "postgres"])
        .args(["-D", data.to_str().expect("utf8")])
        .args(["-R", "-X", "stream", "-C", "-S", "pgenrich_standby"])
        .args(["--checkpoint=fast", "--no-sync"])
        .output()
        .expect("run pg_basebackup");
    assert!(
        out.status.success(),
        "pg_basebackup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Feedback keeps the primary's vacuum from removing rows a standby query still reads, which
    // would otherwise cancel that query or hold up replay.
    let port = spawn_postgres(&primary.bin, user, &dir, &["hot_standby_feedback=on"]);
    let standby = Standby {
        server: Postgres {
            port,
            dir,
            bin: primary.bin.clone(),
            tls: TlsFiles {
                ca_cert: primary.tls.ca_cert.clone(),
                server_cert: primary.tls.server_cert.clone(),
                server_key: primary.tls.server_key.clone(),
            },
        },
    };
    standby.wait_ready();
    let recovering = standby.psql_super("SELECT pg_is_in_recovery()");
    assert_eq!(recovering.trim(), "t", "the standby is not in recovery");
    // A change made after the backup arrives by streaming, not in the backup itself.
    primary.psql_super(
        "CREATE TABLE IF NOT EXISTS pgenrich_standby_marker (started timestamptz);
         INSERT INTO pgenrich_standby_marker VALUES (now());",
    );
    standby.wait_for_replay();
    let marker = standby.psql_super("SELECT count(*) > 0 FROM pgenrich_standby_marker");
    assert_eq!(marker.trim(), "t", "the standby did not replay the marker");
    standby
}

impl Standby {
    /// Blocks until the standby has replayed everything the primary has flushed so far (every
    /// committed change), so that a query on the standby sees it.
    pub fn wait_for_replay(&self) {
        let target = postgres().psql_super("SELECT pg_current_wal_flush_lsn()");
        let target = target.trim();
        let check = format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn");
        for _ in 0..600 {
            if self.psql_super(&check).trim() == "t" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        panic!("the standby did not replay up to {target} within 30s; its log:\n{log}");
    }
}

/// psql from the client package (Debian: /usr/bin/psql) or the server bin directory.
pub fn psql_path() -> PathBuf {
    let in_bin = server_bin_dir().join("psql");
    if in_bin.exists() {
        return in_bin;
    }
    PathBuf::from("psql")
}

fn write_tls_files(dir: &Path, data: &Path, user: Option<(u32, u32)>) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pgenrich test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).expect("cert");

    let files = TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    std::fs::write(&files.ca_cert, ca_cert.pem()).expect("write");
    std::fs::write(&files.server_cert, cert.pem()).expect("write");
    std::fs::write(&files.server_key, key.serialize_pem()).expect("write");
    // PostgreSQL insists on a key readable only by its owner.
    for (name, pem) in [
        ("server.crt", cert.pem()),
        ("server.key", key.serialize_pem()),
    ] {
        let path = data.join(name);
        std::fs::write(&path, pem).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        chown(&path, user);
    }
    files
}

/// A pgenrich server running in-process on the current runtime, with its own mock AWS server.
pub struct Proxy {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    pub mock: mock_aws::MockAws,
    /// The admin listener, when `admin_listen` was set.
    pub admin: Option<SocketAddr>,
}

/// The real AWS SDK backends pointed at `url`, with pinned static credentials and region so
/// nothing probes the environment or IMDS.
pub async fn backends_for(config: &Config, url: &str) -> pgenrich::backends::Backends {
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_credential_types::Credentials;
    let mut inference = config.inference.clone();
    inference.aws_region = Some("us-east-1".into());
    inference.sagemaker_endpoint_url = Some(url.to_owned());
    inference.comprehend_endpoint_url = Some(url.to_owned());
    inference.bedrock_endpoint_url = Some(url.to_owned());
    let credentials = Credentials::new(
        "AKIDPGENRICHTEST",
        "pgenrich-test-secret",
        None,
        None,
        "pgenrich-tests",
    );
    pgenrich::backends::aws(
        &inference,
        Some(SharedCredentialsProvider::new(credentials)),
    )
    .await
}

impl Proxy {
    /// Starts pgenrich in front of the shared PostgreSQL with default settings.
    pub async fn start() -> Proxy {
        Self::start_with(|_| {}).await
    }

    /// Starts pgenrich with its AWS clients pointed at `url` (another AWS emulator).
    pub async fn start_with_backends(url: &str) -> Proxy {
        Self::start_inner(|_| {}, Some(url)).await
    }

    /// Starts pgenrich after `adjust` has changed its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Proxy {
        init_logs();
        Self::start_inner(adjust, None).await
    }

    /// Starts pgenrich configured by `adjust` with its AWS clients pointed at `url` (e.g.
    /// another proxy's mock, so that two sidecars call one service).
    pub async fn start_sharing(url: &str, adjust: impl FnOnce(&mut Config)) -> Proxy {
        init_logs();
        Self::start_inner(adjust, Some(url)).await
    }

    /// Starts pgenrich in front of the hot standby ([`standby`]), with its own mock AWS server.
    pub async fn start_on_standby() -> Proxy {
        init_logs();
        Self::start_at(&standby().upstream(), |_| {}, None).await
    }

    async fn start_inner(adjust: impl FnOnce(&mut Config), url: Option<&str>) -> Proxy {
        Self::start_at(&postgres().upstream(), adjust, url).await
    }

    async fn start_at(
        upstream: &str,
        adjust: impl FnOnce(&mut Config),
        url: Option<&str>,
    ) -> Proxy {
        let mut config =
            Config::new("127.0.0.1:0".parse().expect("addr"), upstream).expect("config");
        config.upstream_tls_mode = upstream_tls_mode();
        config.direct_relay = direct_relay();
        // Few retries, so fault tests stay quick.
        config.inference.max_attempts = 2;
        adjust(&mut config);
        let mock = mock_aws::MockAws::start().await.expect("mock AWS starts");
        let backends = backends_for(&config, url.unwrap_or(&mock.url())).await;
        let server = Server::bind_with(config, backends)
            .await
            .expect("pgenrich starts");
        let addr = server.local_addr();
        let admin = server.admin_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Proxy {
            addr,
            shutdown,
            task,
            mock,
            admin,
        }
    }

    pub fn conninfo(&self, user: &str, password: &str) -> String {
        let password = if password.is_empty() {
            String::new()
        } else {
            format!(" password={password}")
        };
        format!(
            "host=127.0.0.1 port={} user={user}{password} dbname={DATABASE}",
            self.addr.port()
        )
    }

    /// The libpq-style connection string a driver under test uses: the SCRAM role, no TLS.
    pub fn driver_conninfo(&self) -> String {
        format!("{} sslmode=disable", self.conninfo(USER, PASSWORD))
    }

    /// Connects as the SCRAM role and drives the connection in the background.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.conninfo(USER, PASSWORD)).await
    }
}

pub async fn connect(conninfo: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"));
    tokio::spawn(connection);
    client
}

/// The rows of a simple-protocol answer, every value as text.
pub fn text_rows(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The row count of a simple-protocol answer's CommandComplete (`INSERT 0 n`, `UPDATE n`, …).
pub fn command_count(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<u64> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    })
}

/// Every row of table `name` as text, ordered by its first column.
pub async fn table_rows(client: &tokio_postgres::Client, name: &str) -> Vec<Vec<Option<String>>> {
    text_result(client, &format!("SELECT * FROM {name} ORDER BY 1"))
        .await
        .1
}

/// Column names, then rows as text, of a simple-protocol query (which must succeed).
pub async fn text_result(
    client: &tokio_postgres::Client,
    sql: &str,
) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}: {:?}", e.as_db_error()));
    let names = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::RowDescription(columns) => {
                Some(columns.iter().map(|c| c.name().to_owned()).collect())
            }
            _ => None,
        })
        .unwrap_or_default();
    (names, text_rows(&messages))
}

/// A fresh table `name (id int PRIMARY KEY, body text)` of `n` reviews whose sentiment cycles
/// through good, fine and bad (each test has its own: they run concurrently).
pub async fn reviews_table(client: &tokio_postgres::Client, name: &str, n: usize) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; \
             CREATE TABLE {name} (id int PRIMARY KEY, body text); \
             INSERT INTO {name} SELECT g, CASE WHEN g % 3 = 0 THEN 'bad' WHEN g % 3 = 1 \
                 THEN 'good' ELSE 'fine' END || ' review ' || g FROM generate_series(1, {n}) g"
        ))
        .await
        .expect("table");
}

/// Asserts PostgreSQL's error for `command` in a read-only transaction (25006).
pub fn assert_read_only(error: &tokio_postgres::Error, command: &str) {
    assert_eq!(sqlstate(error), "25006", "{error}");
    assert_eq!(
        error.as_db_error().map(|e| e.message()),
        Some(format!("cannot execute {command} in a read-only transaction").as_str())
    );
}

/// The SQLSTATE of a tokio-postgres error.
pub fn sqlstate(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {error}"))
}

/// A bare protocol client for sending exactly the bytes a test wants.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.expect("connect"),
        }
    }

    /// Connects and authenticates as `trust_user`, returning after the first ReadyForQuery.
    pub async fn startup(addr: SocketAddr) -> RawClient {
        Self::startup_as(addr, "pgenrich-tests").await
    }

    /// Like [`RawClient::startup`], with an application_name to find the session by.
    pub async fn startup_as(addr: SocketAddr, application_name: &str) -> RawClient {
        let mut client = Self::connect(addr).await;
        client
            .send_startup(&[
                ("user", "trust_user"),
                ("database", DATABASE),
                ("application_name", application_name),
            ])
            .await;
        loop {
            let (kind, body) = client.recv().await.expect("startup reply");
            assert_ne!(
                kind,
                b'E',
                "startup failed: {}",
                String::from_utf8_lossy(&body)
            );
            if kind == b'Z' {
                return client;
            }
        }
    }

    pub async fn send_startup(&mut self, params: &[(&str, &str)]) {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        self.stream.write_all(&packet).await.expect("send");
    }

    pub async fn send(&mut self, kind: u8, body: &[u8]) {
        self.stream
            .write_all(&message(kind, body))
            .await
            .expect("send");
    }

    /// The next message, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        let read = async {
            let mut head = [0u8; 5];
            self.stream.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len.checked_sub(4)?];
            self.stream.read_exact(&mut body).await.ok()?;
            Some((head[0], body))
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("no reply within 20s")
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn recv_until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((kind, body)) = self.recv().await {
            out.push((kind, body));
            if kind == b'Z' {
                break;
            }
        }
        out
    }
}

/// One frontend message.
pub fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Parse, Bind (no parameters, text results), Execute for an unnamed statement.
pub fn parse_bind_execute(sql: &str) -> Vec<u8> {
    parse_bind_execute_rows(sql, 0)
}

/// [`parse_bind_execute`] with a row limit on the Execute (0: none).
pub fn parse_bind_execute_rows(sql: &str, max_rows: i32) -> Vec<u8> {
    let mut parse = cstr("");
    parse.extend(cstr(sql));
    parse.extend(0u16.to_be_bytes());
    let mut bind = cstr("");
    bind.extend(cstr(""));
    bind.extend([0u8; 6]);
    [
        message(b'P', &parse),
        message(b'B', &bind),
        execute("", max_rows),
    ]
    .concat()
}

/// An Execute of `portal` with a row limit (0: none).
pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut body = cstr(portal);
    body.extend(max_rows.to_be_bytes());
    message(b'E', &body)
}

/// The SQLSTATE field of an ErrorResponse body.
pub fn error_code(body: &[u8]) -> String {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if field == b'C' {
            return String::from_utf8_lossy(&tail[..end]).into_owned();
        }
        rest = &tail[(end + 1).min(tail.len())..];
    }
    String::new()
}

/// The message types of a reply, as a string (`"12DCZ"`), for compact assertions.
pub fn kinds(messages: &[(u8, Vec<u8>)]) -> String {
    messages.iter().map(|(k, _)| *k as char).collect()
}

impl RawClient {
    pub async fn stream_write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }
}

/// Logs of pgenrich during tests, when RUST_LOG is set.
pub fn init_logs() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
}

/// Runs the psycopg 3 client script `tests/clients/<script>` through pgenrich at `proxy` and
/// returns the JSON object it prints; fails with an install hint when psycopg is missing.
pub async fn run_psycopg_script(proxy: &Proxy, script: &str) -> serde_json::Value {
    run_psycopg_script_on(&proxy.driver_conninfo(), script).await
}

/// [`run_psycopg_script`] connecting with `conninfo` (pgenrich, or a database directly).
pub async fn run_psycopg_script_on(conninfo: &str, script: &str) -> serde_json::Value {
    run_python_client(conninfo, script, "psycopg", "'psycopg[binary]'").await
}

/// Runs the Python client script `tests/clients/<script>` with `conninfo` and returns the JSON
/// object it prints; fails with an install hint when its driver `module` (PyPI `package`) is
/// missing.
pub async fn run_python_client(
    conninfo: &str,
    script: &str,
    module: &str,
    package: &str,
) -> serde_json::Value {
    let installed = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "{module} is needed for this test: python3 -m pip install {package} (scripts/test.sh installs it)"
    );
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("python3")
        .args([&path, conninfo])
        .output()
        .await
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("JSON from the script")
}

/// Whether the upstream session of `application_name` is gone within `within`.
pub async fn session_gone_within(app: &str, within: Duration) -> bool {
    let direct = connect(&postgres().direct_conninfo()).await;
    let deadline = std::time::Instant::now() + within;
    loop {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n == 0 {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
