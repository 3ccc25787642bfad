//! Frame parsing on arbitrary bytes: the relay's header walk, the bounds-checked readers of
//! client and server message bodies (statement text, ErrorResponse fields, the SASL offer
//! rewrite, the ML statement table's Parse/Bind/Describe/Execute/Close readers and those of
//! prepared DEALLOCATE/CLOSE commands, RowDescription and DataRow splitting), and the Bind and
//! Close rewrites of ML statements — checked against what the bytes say, and by round trips
//! through the encoders.
#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgenrich::enrich::budget::MemoryBudget;
use pgenrich::protocol::{self, header, split_cstr, BadLength, HEADER_LEN};
use pgenrich::session::deferred::{Deferred, Forget};
use pgenrich::session::kept::KeptBudgets;
use pgenrich::session::rows::{self, Layout};
use pgenrich::session::statements::{self, MlStatement, Prepared, Registry};
use pgenrich::sql::explain::ExplainTarget;
use pgenrich::sql::plan;

fuzz_target!(|data: &[u8]| {
    walk(data);
    let mut u = Unstructured::new(data);
    if let Ok(input) = Structured::arbitrary(&mut u) {
        input.check();
    }
});

/// Hops from frame to frame as the relay does, checking every complete message's body.
fn walk(mut rest: &[u8]) {
    loop {
        match header(rest) {
            None => {
                assert!(rest.len() < HEADER_LEN);
                return;
            }
            Some(Err(BadLength(len))) => {
                assert!(len < 4);
                assert_eq!(
                    len,
                    i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]])
                );
                return;
            }
            Some(Ok((kind, len))) => {
                assert_eq!(kind, rest[0]);
                assert!((4..=i32::MAX as usize).contains(&len));
                assert_eq!(
                    len,
                    u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize
                );
                let total = 1 + len;
                if total > rest.len() {
                    // The relay passes a partial message through; its body is checked as far as
                    // it has arrived.
                    body(kind, &rest[HEADER_LEN..]);
                    return;
                }
                let message = &rest[..total];
                body(kind, &message[HEADER_LEN..]);
                assert_eq!(
                    &protocol::message(kind, &message[HEADER_LEN..])[..],
                    message
                );
                rest = &rest[total..];
            }
        }
    }
}

/// The readers of prepared DEALLOCATE/CLOSE commands (`session::deferred`) on `body` as a
/// Bind, Parse, Close and Execute: a Bind from a remembered statement gives its portal the
/// command, which the first Execute of that portal takes, and nothing else does.
fn deferred(body: &[u8]) {
    let mut d = Deferred::default();
    let bind = split_cstr(body).and_then(|(portal, rest)| Some((portal, split_cstr(rest)?.0)));
    if let Some((_, statement)) = bind {
        let name = String::from_utf8_lossy(statement).into_owned();
        assert!(d.prepared(name, Forget::AllCursors));
    }
    d.on_bind(body);
    if let Some((portal, _)) = bind {
        let execute = [portal, b"\0"].concat();
        assert!(
            d.on_execute(&execute, 1),
            "the Bind's portal runs the command"
        );
        assert!(!d.on_execute(&execute, 2), "a second Execute runs nothing");
        assert_eq!(d.settled(1, true).as_deref(), Some(&Forget::AllCursors));
        assert_eq!(d.settled(2, true), None);
    }
    d.on_parse(body);
    d.on_close(body);
    if d.on_execute(body, 3) {
        assert_eq!(d.settled(3, false), None);
    }
}

/// Whether `part` lies within `whole`.
fn within(part: &[u8], whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

fn body(kind: u8, body: &[u8]) {
    let cstr = split_cstr(body);
    if let Some((text, tail)) = cstr {
        assert!(!text.contains(&0));
        assert_eq!(body[text.len()], 0);
        assert_eq!(text.len() + 1 + tail.len(), body.len());
    } else {
        assert!(!body.contains(&0));
    }

    let text = protocol::statement_text(kind, body);
    match kind {
        b'Q' => assert_eq!(text, cstr.map(|(t, _)| t)),
        b'P' => assert_eq!(
            text,
            cstr.and_then(|(_, tail)| split_cstr(tail)).map(|(t, _)| t)
        ),
        _ => assert_eq!(text, None),
    }

    let (code, message) = protocol::error_fields(body);
    for value in [code, message].into_iter().flatten() {
        assert!(within(value, body) && !value.contains(&0));
    }

    channel_binding(body);

    // The ML statement table's readers.
    let first = statements::first_name(body);
    assert_eq!(first.is_some(), cstr.is_some());
    if let Some((name, types)) = statements::parse_parts(body) {
        assert_eq!(Some(name), first);
        assert!(within(types, body));
    }
    if let Some((kind, name)) = statements::target(body) {
        assert_eq!(kind, body[0]);
        assert_eq!(Some(name), statements::first_name(&body[1..]));
    }
    if let Some((portal, rows)) = statements::execute_parts(body) {
        assert_eq!(Some(portal), first);
        let (name, tail) = cstr.expect("a portal name");
        let _ = name;
        let max = i32::from_be_bytes(tail[..4].try_into().expect("4 bytes"));
        assert_eq!(rows, max.max(0) as usize);
    }

    deferred(body);

    // Server bodies: RowDescription and DataRow.
    let fields = rows::split_fields(body);
    if let Some(count) = body.get(..2) {
        assert!(fields.len() <= u16::from_be_bytes([count[0], count[1]]) as usize);
        let mut at = 2;
        for field in &fields {
            assert_eq!(
                field.as_ptr() as usize,
                body[at..].as_ptr() as usize,
                "fields are consecutive"
            );
            assert!(field.contains(&0));
            assert!(field.len() <= field.iter().position(|&b| b == 0).unwrap_or(0) + 19);
            at += field.len();
        }
    } else {
        assert!(fields.is_empty());
    }
    let columns = rows::split_row(body);
    if let Some(count) = body.get(..2) {
        assert!(columns.len() <= u16::from_be_bytes([count[0], count[1]]) as usize);
    }
    for value in columns.iter().flatten() {
        assert!(within(value, body));
    }
    let layout = Layout::new(&fixtures().plan, body);
    assert_eq!(layout.base_columns, fields.len());
    assert_eq!(
        layout.columns.len(),
        fields.len().saturating_sub(fixtures().plan.arg_columns)
    );
    let _ = layout.base_formats(&[1, 0, 1]);
    let _ = layout.row_description(&[1]);
}

/// The AuthenticationSASL rewrite keeps every mechanism but SCRAM-SHA-256-PLUS, in order, and
/// builds a well-formed message; anything else passes unchanged (`None`).
fn channel_binding(body: &[u8]) {
    let Some(out) = protocol::without_channel_binding(body) else {
        return;
    };
    assert_eq!(&body[..4], &10u32.to_be_bytes());
    assert_eq!(header(&out), Some(Ok((b'R', out.len() - 1))));
    assert_eq!(&out[HEADER_LEN..HEADER_LEN + 4], &10u32.to_be_bytes());
    let offered = mechanisms(&body[4..]);
    assert!(offered.contains(&&b"SCRAM-SHA-256-PLUS"[..]));
    let kept: Vec<&[u8]> = offered
        .into_iter()
        .filter(|m| *m != b"SCRAM-SHA-256-PLUS")
        .collect();
    let mut expected = Vec::new();
    for mechanism in &kept {
        expected.extend_from_slice(mechanism);
        expected.push(0);
    }
    expected.push(0);
    assert_eq!(&out[HEADER_LEN + 4..], &expected[..]);
}

/// The mechanisms of a SASL offer, up to the empty name or the first unterminated one.
fn mechanisms(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((name, tail)) = split_cstr(rest) {
        if name.is_empty() {
            break;
        }
        out.push(name);
        rest = tail;
    }
    out
}

/// Prepared ML statements to rewrite Binds and Closes of, planned once.
struct Fixtures {
    plan: plan::StreamingPlan,
    streaming: Arc<MlStatement>,
    explain: Arc<MlStatement>,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let plan = plan::plan(
            "SELECT id, aws_comprehend.detect_sentiment(body, 'en') AS s, \
             (aws_comprehend.detect_sentiment(title, 'de')).confidence FROM reviews",
        )
        .expect("the fixture plans");
        // The base's RowDescription as PostgreSQL would send it: the argument columns, then the
        // client's columns with placeholders named pgenrich:N.
        let mut names: Vec<String> = (0..plan.arg_columns).map(|i| format!("a{i}")).collect();
        names.push("id".into());
        names.extend(
            (0..plan.placeholders.len()).map(|i| format!("{}{i}", plan::PLACEHOLDER_PREFIX)),
        );
        let description = row_description(&names);
        let layout = Arc::new(Layout::new(&plan, &description));
        assert_eq!(layout.columns.len(), 1 + plan.placeholders.len());
        let streaming = Arc::new(MlStatement {
            upstream_name: "pgenrich.s.s1".into(),
            parameters: Bytes::from_static(b"\0\0"),
            prepared: Prepared::Streaming {
                plan: Arc::new(plan.clone()),
                layout,
            },
            kept: None,
        });
        let explain = Arc::new(MlStatement {
            upstream_name: "pgenrich.s.x".into(),
            parameters: Bytes::from_static(b"\0\0"),
            prepared: Prepared::Explain {
                analyze: false,
                target: Arc::new(ExplainTarget::Streaming(plan.clone())),
            },
            kept: None,
        });
        Fixtures {
            plan,
            streaming,
            explain,
        }
    })
}

fn row_description(names: &[String]) -> Vec<u8> {
    let mut out = (names.len() as u16).to_be_bytes().to_vec();
    for name in names {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(&[0; 6]);
        out.extend_from_slice(&25u32.to_be_bytes());
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
    }
    out
}

/// A name without NUL bytes.
#[derive(Debug)]
struct Name(String);

impl<'a> Arbitrary<'a> for Name {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let s: String = u.arbitrary()?;
        Ok(Name(s.replace('\0', "")))
    }
}

/// Messages built from parts, so that the readers are checked against what went in.
#[derive(Debug, Arbitrary)]
struct Structured {
    /// Which prepared statement the Bind names: 0 the streaming one, 1 the EXPLAIN, else none.
    statement: u8,
    portal: Name,
    parameter_formats: Vec<i16>,
    parameters: Vec<Option<Vec<u8>>>,
    result_formats: Vec<i16>,
    /// Bytes appended to the Bind: a well-formed Bind may be followed by anything.
    trailer: Vec<u8>,
    /// A raw Bind body to rewrite as it is.
    raw_bind: Vec<u8>,
    /// A raw Close body.
    raw_close: Vec<u8>,
    parse_name: Name,
    parse_text: Name,
    row: Vec<Option<Vec<u8>>>,
    error_message: Name,
    float: f32,
}

impl Structured {
    fn check(self) {
        let fx = fixtures();
        let mut registry = Registry::new(KeptBudgets {
            session: MemoryBudget::plain(1 << 30),
            process: MemoryBudget::plain(1 << 30),
        });
        registry
            .statements
            .insert("s1".into(), Arc::clone(&fx.streaming));
        registry
            .statements
            .insert("".into(), Arc::clone(&fx.explain));

        // A raw Bind and Close: rewritten or not, never a panic, always a well-formed message.
        for (rewritten, name) in [
            (registry.rewrite_bind(&self.raw_bind, 3, None), "Bind"),
            (
                registry
                    .rewrite_close(&self.raw_close)
                    .map(|(close, _)| close),
                "Close",
            ),
        ] {
            if let Some(out) = rewritten {
                assert_eq!(
                    header(&out).and_then(Result::ok).map(|(_, l)| l + 1),
                    Some(out.len()),
                    "{name}"
                );
            }
        }
        registry
            .statements
            .insert("s1".into(), Arc::clone(&fx.streaming));
        registry
            .statements
            .insert("".into(), Arc::clone(&fx.explain));

        // A well-formed Bind.
        let (name, ml) = match self.statement {
            0 => ("s1", Some(&fx.streaming)),
            1 => ("", Some(&fx.explain)),
            _ => ("plain", None),
        };
        let mut bind = self.portal.0.as_bytes().to_vec();
        bind.push(0);
        bind.extend_from_slice(name.as_bytes());
        bind.push(0);
        let params_start = bind.len();
        let formats =
            &self.parameter_formats[..self.parameter_formats.len().min(i16::MAX as usize)];
        bind.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            bind.extend_from_slice(&f.to_be_bytes());
        }
        let params = &self.parameters[..self.parameters.len().min(i16::MAX as usize)];
        bind.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                None => bind.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    bind.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    bind.extend_from_slice(v);
                }
            }
        }
        let params_section = bind[params_start..].to_vec();
        let codes = &self.result_formats[..self.result_formats.len().min(i16::MAX as usize)];
        bind.extend_from_slice(&(codes.len() as i16).to_be_bytes());
        for c in codes {
            bind.extend_from_slice(&c.to_be_bytes());
        }
        bind.extend_from_slice(&self.trailer);
        assert_eq!(
            registry
                .statement_of_bind(&bind)
                .map(|s| s.upstream_name.clone()),
            ml.map(|s| s.upstream_name.clone())
        );
        let rewritten = registry.rewrite_bind(&bind, 7, None);
        match ml {
            None => {
                assert!(rewritten.is_none());
                assert!(!registry.portals.contains_key(&self.portal.0));
            }
            Some(ml) => {
                let out = rewritten.expect("a well-formed Bind of an ML statement is rewritten");
                assert_eq!(header(&out), Some(Ok((b'B', out.len() - 1))));
                let body = &out[HEADER_LEN..];
                let (portal, rest) = split_cstr(body).expect("portal");
                assert_eq!(portal, self.portal.0.as_bytes());
                let (statement, rest) = split_cstr(rest).expect("statement");
                assert_eq!(statement, ml.upstream_name.as_bytes());
                assert_eq!(
                    &rest[..params_section.len()],
                    &params_section[..],
                    "parameters pass as they are"
                );
                let rest = &rest[params_section.len()..];
                let client = rows::expand_formats(codes, ml.columns());
                let base: Vec<i16> = match &ml.prepared {
                    Prepared::Streaming { layout, .. } => layout.base_formats(&client),
                    _ => Vec::new(),
                };
                let mut expected = (base.len() as u16).to_be_bytes().to_vec();
                for f in &base {
                    expected.extend_from_slice(&f.to_be_bytes());
                }
                assert_eq!(rest, &expected[..]);
                let portal = registry
                    .portals
                    .get(&self.portal.0)
                    .expect("the portal is remembered");
                assert_eq!(&portal.formats[..], &client[..]);
                assert_eq!(&portal.parameters[..], &params_section[..]);
                assert_eq!(portal.epoch, 7);
                assert!(ml.row_description(&client).is_some());
            }
        }
        registry.transaction_ended(8);
        assert!(
            registry.portals.is_empty(),
            "portals end with their transaction"
        );

        // Close of a statement: rewritten to the upstream name and forgotten.
        let mut close = b"S".to_vec();
        close.extend_from_slice(name.as_bytes());
        close.push(0);
        match (ml, registry.rewrite_close(&close)) {
            (Some(ml), Some((out, token))) => {
                let mut expected = b"S".to_vec();
                expected.extend_from_slice(ml.upstream_name.as_bytes());
                expected.push(0);
                assert_eq!(out, protocol::message(b'C', &expected));
                assert!(!registry.statements.contains_key(name));
                // Skipped by the upstream, the statement is the client's again; closed, gone.
                registry.settle_close(token, false);
                assert!(registry.statements.contains_key(name));
                let (_, token) = registry.rewrite_close(&close).expect("a second Close");
                registry.settle_close(token, true);
                assert!(!registry.statements.contains_key(name));
            }
            (Some(_), None) => panic!("a Close of an ML statement is rewritten"),
            (None, out) => assert_eq!(out, None),
        }

        // Parse: name and text back.
        let mut parse = self.parse_name.0.as_bytes().to_vec();
        parse.push(0);
        parse.extend_from_slice(self.parse_text.0.as_bytes());
        parse.push(0);
        parse.extend_from_slice(&[0, 1, 0, 0, 0, 23]);
        assert_eq!(
            protocol::statement_text(b'P', &parse),
            Some(self.parse_text.0.as_bytes())
        );
        let (name, types) = statements::parse_parts(&parse).expect("a Parse body");
        assert_eq!(name, self.parse_name.0);
        assert_eq!(types, &[0, 1, 0, 0, 0, 23]);

        // DataRow: the columns back.
        let row = &self.row[..self.row.len().min(u16::MAX as usize)];
        let mut body = (row.len() as u16).to_be_bytes().to_vec();
        for value in row {
            match value {
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v);
                }
            }
        }
        let split = rows::split_row(&body);
        assert_eq!(split.len(), row.len());
        for (got, want) in split.iter().zip(row) {
            assert_eq!(*got, want.as_deref());
        }

        // ErrorResponse: SQLSTATE and message back.
        let encoded = protocol::ErrorMessage::error(
            pgenrich::error::SqlState::FeatureNotSupported,
            self.error_message.0.clone(),
        )
        .with_hint("h")
        .encode();
        assert_eq!(header(&encoded), Some(Ok((b'E', encoded.len() - 1))));
        let (code, message) = protocol::error_fields(&encoded[HEADER_LEN..]);
        assert_eq!(code, Some(&b"0A000"[..]));
        assert_eq!(message, Some(self.error_message.0.as_bytes()));

        // real values print so that they read back exactly (PostgreSQL's shortest-exact form).
        let text = rows::float4_text(self.float);
        if self.float.is_nan() {
            assert_eq!(text, "NaN");
        } else {
            assert_eq!(text.parse::<f32>().ok(), Some(self.float), "{text}");
        }
    }
}
