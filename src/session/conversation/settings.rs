//! Session settings pgenrich reads from the database: `SET pgenrich.<name> = …` is a custom
//! setting PostgreSQL keeps (with its transaction, `SET LOCAL` and `RESET` semantics), and
//! pgenrich asks for the current values at the start of each ML statement sent as a simple
//! Query, in one round trip. Extended-protocol statements run with the configured values.
//!
//! - `pgenrich.progress` (`on`/`off`, default off): a NOTICE every `pgenrich.progress_interval`
//!   seconds (default 5) while the statement runs: rows sent to inference, calls, elapsed time.
//! - `pgenrich.max_inference_rows`: a lower cap than `max_inference_rows` for the session (a
//!   higher one is ignored: the configured cap is the operator's).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Conversation;
use crate::error::SessionError;
use crate::protocol::notice;

/// The query reading every setting pgenrich knows (NULL when unset).
const READ_SETTINGS: &str = "SELECT current_setting('pgenrich.progress', true), \
     current_setting('pgenrich.progress_interval', true), \
     current_setting('pgenrich.max_inference_rows', true)";

/// The settings of the statement about to run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// Progress NOTICEs this often; None: none.
    pub progress: Option<Duration>,
    /// The session's own cap on rows sent to inference.
    pub max_inference_rows: Option<u64>,
}

/// Progress reporting of the running statement.
pub(super) struct Progress {
    pub(super) every: Duration,
    pub(super) started: Instant,
    pub(super) next: Instant,
    /// The statement's claims (rows sent) and call counters, as its memos are made.
    pub(super) claims: Vec<std::sync::Arc<crate::enrich::share::Claim>>,
}

impl Progress {
    pub(super) fn new(every: Duration) -> Progress {
        let now = Instant::now();
        Progress {
            every,
            started: now,
            next: now + every,
            claims: Vec::new(),
        }
    }

    /// The NOTICE for now.
    pub(super) fn notice(&mut self) -> Bytes {
        let rows: u64 = self.claims.iter().map(|c| c.rows_sent()).sum();
        let calls: u64 = self.claims.iter().map(|c| c.calls()).sum();
        self.next = Instant::now() + self.every;
        notice(
            "NOTICE",
            "00000",
            format!(
                "pgenrich: {rows} rows sent to inference in {calls} calls, {:.1} s",
                self.started.elapsed().as_secs_f64()
            ),
        )
    }
}

/// Parses the three values of [`READ_SETTINGS`]; what is not understood is reported back as a
/// WARNING text and ignored.
fn parse(values: &[Option<String>], warnings: &mut Vec<String>) -> Settings {
    let get = |i: usize| values.get(i).cloned().flatten().filter(|v| !v.is_empty());
    let mut settings = Settings::default();
    let interval = match get(1) {
        None => Duration::from_secs(5),
        Some(text) => match text.trim().parse::<f64>() {
            Ok(s) if (0.1..=86_400.0).contains(&s) => Duration::from_secs_f64(s),
            _ => {
                warnings.push(format!(
                    "pgenrich.progress_interval = \"{text}\" is not a number of seconds \
                     between 0.1 and 86400: using 5"
                ));
                Duration::from_secs(5)
            }
        },
    };
    if let Some(text) = get(0) {
        match text.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" => settings.progress = Some(interval),
            "off" | "false" | "no" | "0" => {}
            _ => warnings.push(format!(
                "pgenrich.progress = \"{text}\" is not on or off: progress stays off"
            )),
        }
    }
    if let Some(text) = get(2) {
        match text.trim().parse::<u64>() {
            Ok(n) if n > 0 => settings.max_inference_rows = Some(n),
            _ => warnings.push(format!(
                "pgenrich.max_inference_rows = \"{text}\" is not a positive integer: ignored"
            )),
        }
    }
    settings
}

impl Conversation<'_> {
    /// Reads the session's `pgenrich.*` settings (a simple Query of pgenrich's, its rows kept
    /// from the client) and applies them to the statement about to run. In a failed transaction
    /// block the read fails like the statement will: the configured values stay.
    pub async fn apply_session_settings(&mut self) -> Result<(), SessionError> {
        // An error (a failed transaction block) leaves no row: the configured values stay.
        let (_, row) = self.hidden_query_row(READ_SETTINGS).await?;
        let values: Vec<Option<String>> = row
            .map(|body| {
                crate::session::rows::split_row(&body)
                    .into_iter()
                    .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let mut warnings = Vec::new();
        let settings = parse(&values, &mut warnings);
        for warning in warnings {
            self.to_client(notice("WARNING", "22023", warning));
        }
        self.progress = settings.progress.map(Progress::new);
        self.row_cap = settings.max_inference_rows;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|s| s.map(str::to_owned)).collect()
    }

    #[test]
    fn settings_are_read_leniently_and_warned_about() {
        let mut warnings = Vec::new();
        assert_eq!(
            parse(&values(&[None, None, None]), &mut warnings),
            Settings::default()
        );
        let settings = parse(
            &values(&[Some("on"), Some("0.5"), Some("100")]),
            &mut warnings,
        );
        assert_eq!(settings.progress, Some(Duration::from_millis(500)));
        assert_eq!(settings.max_inference_rows, Some(100));
        assert!(warnings.is_empty());
        let settings = parse(
            &values(&[Some("maybe"), Some("0"), Some("-3")]),
            &mut warnings,
        );
        assert_eq!(settings, Settings::default());
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        // RESET leaves an empty string behind: unset.
        assert_eq!(
            parse(&values(&[Some(""), Some(""), Some("")]), &mut Vec::new()),
            Settings::default()
        );
    }
}
