//! `ml_raw_client [OPTIONS] HOST:PORT SQL`: runs SQL over the raw PostgreSQL wire protocol (plain
//! TCP, no TLS, trust authentication only: the StartupMessage must be answered AuthenticationOk),
//! reading the result at a pace the caller controls, and prints one line
//! `rows=… bytes=… null_last=… mismatched=… first_row_s=… total_s=… rows_per_s=… tag=…`
//! (null_last: rows whose last column is NULL; mismatched: rows whose first and last columns
//! differ, counted only with `--check-equal`; tag: the CommandComplete tag, spaces as `_`).
//! Used by `benches/e2e_memory.sh`; exits 1 with the error on stderr when a session fails.
//!
//! Options:
//! - `--extended`: Parse/Bind/Execute(max rows)/Sync with unnamed statement and portal instead of
//!   a simple Query message; `--max-rows N` sets Execute's row limit (default 2147483647, i.e.
//!   effectively unlimited; a PortalSuspended answer counts as an error).
//! - `--stall-after-bytes B --stall-secs S`: once B bytes of the answer have been read, stop
//!   reading for S seconds, then read the rest; the line then also has
//!   `stall_start=… stall_end=…` (Unix time in seconds).
//! - `--sessions N`: run the statement on N connections at once (one task each); rows, bytes and
//!   the counts are summed, total_s is the wall time of all, and `sessions_ok=…` is added.
//! - `--user U`, `--database D` (default `postgres` for both).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone)]
struct Options {
    addr: String,
    sql: String,
    user: String,
    database: String,
    extended: bool,
    max_rows: i32,
    stall_after_bytes: Option<u64>,
    stall_secs: f64,
    sessions: usize,
    check_equal: bool,
}

#[derive(Default)]
struct Outcome {
    rows: u64,
    bytes: u64,
    null_last: u64,
    mismatched: u64,
    first_row: Option<Duration>,
    tag: String,
    stall: Option<(f64, f64)>,
}

fn usage() -> ! {
    eprintln!(
        "usage: ml_raw_client [--extended] [--max-rows N] [--stall-after-bytes B --stall-secs S] \
         [--sessions N] [--check-equal] [--user U] [--database D] HOST:PORT SQL"
    );
    std::process::exit(2);
}

fn parse_args() -> Options {
    let mut opts = Options {
        addr: String::new(),
        sql: String::new(),
        user: "postgres".into(),
        database: "postgres".into(),
        extended: false,
        max_rows: i32::MAX,
        stall_after_bytes: None,
        stall_secs: 0.0,
        sessions: 1,
        check_equal: false,
    };
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match arg.as_str() {
            "--extended" => opts.extended = true,
            "--check-equal" => opts.check_equal = true,
            "--max-rows" => opts.max_rows = value("--max-rows").parse().unwrap_or_else(|_| usage()),
            "--stall-after-bytes" => {
                opts.stall_after_bytes = Some(value(&arg).parse().unwrap_or_else(|_| usage()))
            }
            "--stall-secs" => opts.stall_secs = value(&arg).parse().unwrap_or_else(|_| usage()),
            "--sessions" => opts.sessions = value(&arg).parse().unwrap_or_else(|_| usage()),
            "--user" => opts.user = value(&arg),
            "--database" => opts.database = value(&arg),
            s if s.starts_with("--") => usage(),
            _ => positional.push(arg),
        }
    }
    let [addr, sql] = <[String; 2]>::try_from(positional).unwrap_or_else(|_| usage());
    if opts.sessions == 0 {
        usage();
    }
    opts.addr = addr;
    opts.sql = sql;
    opts
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let opts = parse_args();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(opts.sessions);
    for _ in 0..opts.sessions {
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move { run(&opts, start).await }));
    }
    let mut total = Outcome::default();
    let (mut ok, mut errors) = (0usize, Vec::new());
    for task in tasks {
        match task.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(o) => {
                ok += 1;
                total.rows += o.rows;
                total.bytes += o.bytes;
                total.null_last += o.null_last;
                total.mismatched += o.mismatched;
                total.first_row = match (total.first_row, o.first_row) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if total.tag.is_empty() {
                    total.tag = o.tag;
                }
                total.stall = total.stall.or(o.stall);
            }
            Err(e) => errors.push(e),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let first_row_s = total.first_row.map_or(f64::NAN, |d| d.as_secs_f64());
    let mut line = format!(
        "rows={} bytes={} null_last={} mismatched={} first_row_s={first_row_s:.4} total_s={elapsed:.4} rows_per_s={:.0} tag={}",
        total.rows,
        total.bytes,
        total.null_last,
        total.mismatched,
        total.rows as f64 / elapsed,
        if total.tag.is_empty() { "NA".into() } else { total.tag.replace(' ', "_") },
    );
    if opts.sessions > 1 {
        line.push_str(&format!(" sessions_ok={ok}"));
    }
    if let Some((a, b)) = total.stall {
        line.push_str(&format!(" stall_start={a:.3} stall_end={b:.3}"));
    }
    println!("{line}");
    if !errors.is_empty() {
        for e in errors.iter().take(5) {
            eprintln!("error: {e}");
        }
        if errors.len() > 5 {
            eprintln!("error: … and {} more failed session(s)", errors.len() - 5);
        }
        std::process::exit(1);
    }
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    bytes: u64,
}

impl Conn {
    /// The next backend message: its type byte and body.
    async fn next(&mut self) -> Result<(u8, Bytes), String> {
        loop {
            if self.buf.len() >= 5 {
                let len =
                    u32::from_be_bytes(self.buf[1..5].try_into().expect("four bytes")) as usize;
                if len < 4 {
                    return Err(format!("bad message length {len}"));
                }
                if self.buf.len() > len {
                    let msg = self.buf.split_to(1 + len).freeze();
                    return Ok((msg[0], msg.slice(5..)));
                }
                self.buf.reserve(1 + len - self.buf.len());
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), String> {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        self.bytes += n as u64;
        Ok(())
    }
}

fn cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Appends a message of type `ty` whose body `body` writes.
fn message(out: &mut BytesMut, ty: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(ty);
    let at = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// "SEVERITY CODE message" from an ErrorResponse body.
fn error_text(mut body: Bytes) -> String {
    let (mut severity, mut code, mut msg) = (String::new(), String::new(), String::new());
    while body.has_remaining() {
        let field = body.get_u8();
        if field == 0 {
            break;
        }
        let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
        let value = String::from_utf8_lossy(&body[..end]).into_owned();
        body.advance((end + 1).min(body.len()));
        match field {
            b'S' => severity = value,
            b'C' => code = value,
            b'M' => msg = value,
            _ => {}
        }
    }
    format!("{severity} {code} {msg}")
}

/// (is the last column NULL, are the first and last columns equal) for a DataRow body.
fn inspect_row(mut body: Bytes) -> Result<(bool, bool), String> {
    if body.len() < 2 {
        return Err("short DataRow".into());
    }
    let n = body.get_u16() as usize;
    let (mut first, mut last): (Option<Bytes>, Option<Bytes>) = (None, None);
    for i in 0..n {
        if body.len() < 4 {
            return Err("short DataRow".into());
        }
        let len = body.get_i32();
        let value = if len < 0 {
            None
        } else {
            let len = len as usize;
            if body.len() < len {
                return Err("short DataRow".into());
            }
            Some(body.split_to(len))
        };
        if i == 0 {
            first = value.clone();
        }
        last = value;
    }
    Ok((n == 0 || last.is_none(), first == last))
}

async fn run(opts: &Options, start: Instant) -> Result<Outcome, String> {
    let stream = TcpStream::connect(&opts.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", opts.addr))?;
    stream.set_nodelay(true).ok();
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(64 * 1024),
        bytes: 0,
    };

    // Startup: protocol 3.0, trust authentication.
    let mut out = BytesMut::new();
    out.put_u32(0);
    out.put_u32(196_608);
    for (k, v) in [
        ("user", opts.user.as_str()),
        ("database", opts.database.as_str()),
        ("application_name", "ml_raw_client"),
    ] {
        cstr(&mut out, k);
        cstr(&mut out, v);
    }
    out.put_u8(0);
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    conn.stream
        .write_all(&out)
        .await
        .map_err(|e| format!("write: {e}"))?;
    loop {
        match conn.next().await? {
            (b'R', body) => {
                let kind = body
                    .get(..4)
                    .map(|b| u32::from_be_bytes(b.try_into().expect("four bytes")))
                    .ok_or("short authentication message")?;
                if kind != 0 {
                    return Err(format!(
                        "the server asked for authentication method {kind}; only trust is supported"
                    ));
                }
            }
            (b'E', body) => return Err(format!("startup: {}", error_text(body))),
            (b'Z', _) => break,
            _ => {} // ParameterStatus, BackendKeyData, NoticeResponse
        }
    }

    // The statement.
    let mut out = BytesMut::new();
    if opts.extended {
        message(&mut out, b'P', |b| {
            cstr(b, "");
            cstr(b, &opts.sql);
            b.put_i16(0);
        });
        message(&mut out, b'B', |b| {
            cstr(b, "");
            cstr(b, "");
            b.put_i16(0); // parameter formats
            b.put_i16(0); // parameters
            b.put_i16(0); // result formats: all text
        });
        message(&mut out, b'E', |b| {
            cstr(b, "");
            b.put_i32(opts.max_rows);
        });
        message(&mut out, b'S', |_| {});
    } else {
        message(&mut out, b'Q', |b| cstr(b, &opts.sql));
    }
    let bytes_before = conn.bytes;
    conn.stream
        .write_all(&out)
        .await
        .map_err(|e| format!("write: {e}"))?;

    let mut outcome = Outcome::default();
    let mut error = None;
    let mut stalled = opts.stall_after_bytes.is_none();
    loop {
        if !stalled && conn.bytes - bytes_before >= opts.stall_after_bytes.unwrap_or(0) {
            stalled = true;
            let from = unix_now();
            tokio::time::sleep(Duration::from_secs_f64(opts.stall_secs)).await;
            outcome.stall = Some((from, unix_now()));
        }
        match conn.next().await? {
            (b'D', body) => {
                outcome.first_row.get_or_insert_with(|| start.elapsed());
                outcome.rows += 1;
                let (null_last, equal) = inspect_row(body)?;
                outcome.null_last += null_last as u64;
                if opts.check_equal && !equal {
                    outcome.mismatched += 1;
                }
            }
            (b'C', body) => {
                let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                outcome.tag = String::from_utf8_lossy(&body[..end]).into_owned();
            }
            (b'E', body) => {
                error.get_or_insert_with(|| error_text(body));
            }
            (b's', _) => {
                error.get_or_insert_with(|| "PortalSuspended before the last row".to_owned());
            }
            (b'Z', _) => break,
            _ => {} // ParseComplete, BindComplete, RowDescription, NoData, notices, …
        }
    }
    outcome.bytes = conn.bytes - bytes_before;

    // Terminate.
    let mut out = BytesMut::new();
    message(&mut out, b'X', |_| {});
    conn.stream.write_all(&out).await.ok();
    match error {
        Some(e) => Err(format!("{e} (after {} rows)", outcome.rows)),
        None => Ok(outcome),
    }
}
