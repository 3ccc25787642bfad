-- Reference implementations of pgenrich's ML functions as real SQL functions, for the
-- differential test suite: a query run natively against a database holding these functions must
-- return exactly what the same query returns through pgenrich (against a database without them)
-- with the mock AWS server (`mock-aws`) behind it. Each function reproduces
-- `mock_aws::models` bit for bit and pgenrich's argument handling (NULLs, CSV encoding, errors);
-- tests/it/reference.rs proves it against the Rust models, including an exhaustive check of the
-- Unicode character classes.
--
-- Load with psql (ON_ERROR_STOP) into a UTF8 database, as a superuser or the database owner. The
-- script is idempotent. Helpers live in schema `ml_reference`, so that `aws_comprehend` and
-- `aws_sagemaker` hold only Aurora's names.
--
-- LOCALE. Nothing here depends on the database's collation or ctype. The Rust model lower-cases
-- with `str::to_lowercase` and splits words on `!char::is_alphanumeric()` (Unicode); PostgreSQL's
-- `lower()` and regex classes such as [[:alnum:]] follow the database's ctype instead (the test
-- cluster is initdb --no-locale, i.e. C: ASCII only; libc C.UTF-8 or ICU would follow their own
-- Unicode versions, and none matches Rust's exactly). So the word split uses an explicit
-- bracket expression of code-point ranges generated from Rust's `char::is_alphanumeric`
-- (`ml_reference.word_chars()`, Unicode 17.0 as of Rust 1.95), and lower-casing is reduced to
-- what can change a match: the lexicon is ASCII, so only ASCII letters and the two non-ASCII
-- characters whose Rust lower case contains ASCII matter — U+212A KELVIN SIGN ('k') and U+0130
-- 'İ' ('i' followed by U+0307, which is not alphanumeric and so splits the word). Every other
-- character keeps its class when lower-cased (checked for all of Unicode by
-- tests/it/reference.rs), and a word holding any non-ASCII character cannot be a lexicon word.
-- Explicit ranges in a case-sensitive regex compare code points, whatever the locale. The
-- reference database is nevertheless created like the test database (UTF8, locale C), so that
-- ORDER BY on text sorts the same on both sides of the differential suite.
--
-- NULLS AND ERRORS, as pgenrich (src/enrich/mod.rs) handles them:
-- * detect_sentiment: NULL or empty text, or a NULL language, gives a record of two NULLs
--   (printed `(,)`), as a function with OUT parameters that sets neither returns. Otherwise: max_rows_per_batch < 1 -> 22023, text over 5,000 UTF-8 bytes
--   -> 22001 (pgenrich's default comprehend_truncate = false), a language Comprehend does not
--   support -> 22023. A NULL max_rows_per_batch means the default batch size.
-- * invoke_endpoint: a NULL endpoint name -> 22023 and max_rows_per_batch < 1 -> 22023, for every
--   row (not NULL: pgenrich calls the endpoint for every row). NULL inputs are empty CSV fields,
--   exactly like empty strings. The mock's fault endpoints are mirrored: names starting with
--   `echo` return the record's fields re-encoded as CSV; `model-error`, `short` and `bad-csv`
--   fail with 38000.
-- Messages differ from pgenrich's; SQLSTATEs agree.
--
-- VOLATILITY. The public functions are VOLATILE (PostgreSQL's default, and what a function that
-- calls a remote service is): never pre-evaluated at plan time, so errors arise only for rows
-- actually evaluated, as with pgenrich, which calls the service only for rows the query yields.
--
-- HOW THE SUITE MUST CALL invoke_endpoint. SQL functions cannot take VARIADIC "any"; the stand-in
-- takes VARIADIC anycompatiblearray and turns each input into its type's *output* text (what
-- pgenrich sends: the column's text form), so:
-- * inputs all of one type (text, varchar, int, numeric, float8, boolean, timestamp, ...) call it
--   directly; NULL and untyped literals ('abc', NULL) take that type, or text when all are untyped;
-- * int2/int4/int8 and numeric may be mixed (common type numeric keeps their text); text,
--   varchar and char(n) may be mixed (char(n) keeps its padding, as pgenrich sends it);
-- * any other mix does not resolve (e.g. int with text: 42883), or resolves to a common type whose
--   text differs (a real or float8 among the inputs turns the others into floats:
--   9007199254740993 becomes 9.007199254740992e+15, real 0.1 next to a float8 becomes
--   0.10000000149011612): cast each non-text input to ::text in the query. The cast is then part
--   of the argument on both sides (pgenrich's base query computes it too), so both send the same
--   text — note that boolean::text is 'true' while a bare boolean input is sent as 't';
-- * an untyped literal next to a typed non-text input takes that type ('abc' next to an int
--   column fails with 22P02): write 'abc'::text and cast the other inputs to ::text;
-- * VARIADIC ARRAY[a, b] works like (a, b).
--
-- DIVERGENCES (keep out of the suite):
-- * 'ITEM_ERROR' in a text makes the mock fail that document only inside a batch of several
--   (BatchDetectSentiment), not alone (DetectSentiment): the outcome depends on pgenrich's
--   batching, so the reference treats it as ordinary text.
-- * pgenrich with comprehend_truncate = true scores the first 5,000 bytes instead of failing.
-- * Only SQLSTATEs of errors agree, not messages; with several failing rows, which row's error is
--   reported may differ.
-- * Inputs whose text form is not what pgenrich sends because of a type conversion the call
--   needs (see the call rules above).
-- Number parsing and formatting are exact, including 'inf', 'NaN', exponents ('1e5'), Unicode
-- white space around numbers, overflow to inf, underflow to 0 and ties in the sixth decimal; see
-- ml_reference.parse_f64 and ml_reference.format_f64.

CREATE SCHEMA IF NOT EXISTS ml_reference;
CREATE SCHEMA IF NOT EXISTS aws_comprehend;
CREATE SCHEMA IF NOT EXISTS aws_sagemaker;
CREATE SCHEMA IF NOT EXISTS aws_bedrock;
GRANT USAGE ON SCHEMA ml_reference, aws_comprehend, aws_sagemaker, aws_bedrock TO PUBLIC;

-- The lexicon and languages of mock_aws (models::POSITIVE_WORDS / NEGATIVE_WORDS, LANGUAGES).
CREATE OR REPLACE FUNCTION ml_reference.positive_words() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['good', 'great', 'love', 'excellent', 'happy', 'amazing', 'nice', 'best',
                 'fantastic', 'wonderful']
$$;

CREATE OR REPLACE FUNCTION ml_reference.negative_words() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['bad', 'terrible', 'hate', 'awful', 'poor', 'worst', 'horrible', 'broken', 'sad',
                 'disappointing']
$$;

CREATE OR REPLACE FUNCTION ml_reference.languages() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['en', 'es', 'fr', 'de', 'it', 'pt', 'ar', 'hi', 'ja', 'ko', 'zh', 'zh-TW']
$$;

-- Bracket-expression body of the non-ASCII code points for which Rust's char::is_alphanumeric()
-- holds (Alphabetic or Numeric: Nd, Nl, No), Unicode 17.0. Generated; regenerate with
-- `cargo test --test it reference::print_word_chars -- --ignored --nocapture` when the
-- toolchain's Unicode version changes (tests/it/reference.rs fails then).
CREATE OR REPLACE FUNCTION ml_reference.word_chars() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT
        E'\\u00AA\\u00B2-\\u00B3\\u00B5\\u00B9-\\u00BA\\u00BC-\\u00BE\\u00C0-\\u00D6\\u00D8-\\u00F6' ||
        E'\\u00F8-\\u02C1\\u02C6-\\u02D1\\u02E0-\\u02E4\\u02EC\\u02EE\\u0345\\u0363-\\u0374' ||
        E'\\u0376-\\u0377\\u037A-\\u037D\\u037F\\u0386\\u0388-\\u038A\\u038C\\u038E-\\u03A1' ||
        E'\\u03A3-\\u03F5\\u03F7-\\u0481\\u048A-\\u052F\\u0531-\\u0556\\u0559\\u0560-\\u0588' ||
        E'\\u05B0-\\u05BD\\u05BF\\u05C1-\\u05C2\\u05C4-\\u05C5\\u05C7\\u05D0-\\u05EA\\u05EF-\\u05F2' ||
        E'\\u0610-\\u061A\\u0620-\\u0657\\u0659-\\u0669\\u066E-\\u06D3\\u06D5-\\u06DC\\u06E1-\\u06E8' ||
        E'\\u06ED-\\u06FC\\u06FF\\u0710-\\u073F\\u074D-\\u07B1\\u07C0-\\u07EA\\u07F4-\\u07F5\\u07FA' ||
        E'\\u0800-\\u0817\\u081A-\\u082C\\u0840-\\u0858\\u0860-\\u086A\\u0870-\\u0887\\u0889-\\u088F' ||
        E'\\u0897\\u08A0-\\u08C9\\u08D4-\\u08DF\\u08E3-\\u08E9\\u08F0-\\u093B\\u093D-\\u094C' ||
        E'\\u094E-\\u0950\\u0955-\\u0963\\u0966-\\u096F\\u0971-\\u0983\\u0985-\\u098C\\u098F-\\u0990' ||
        E'\\u0993-\\u09A8\\u09AA-\\u09B0\\u09B2\\u09B6-\\u09B9\\u09BD-\\u09C4\\u09C7-\\u09C8' ||
        E'\\u09CB-\\u09CC\\u09CE\\u09D7\\u09DC-\\u09DD\\u09DF-\\u09E3\\u09E6-\\u09F1\\u09F4-\\u09F9' ||
        E'\\u09FC\\u0A01-\\u0A03\\u0A05-\\u0A0A\\u0A0F-\\u0A10\\u0A13-\\u0A28\\u0A2A-\\u0A30' ||
        E'\\u0A32-\\u0A33\\u0A35-\\u0A36\\u0A38-\\u0A39\\u0A3E-\\u0A42\\u0A47-\\u0A48\\u0A4B-\\u0A4C' ||
        E'\\u0A51\\u0A59-\\u0A5C\\u0A5E\\u0A66-\\u0A75\\u0A81-\\u0A83\\u0A85-\\u0A8D\\u0A8F-\\u0A91' ||
        E'\\u0A93-\\u0AA8\\u0AAA-\\u0AB0\\u0AB2-\\u0AB3\\u0AB5-\\u0AB9\\u0ABD-\\u0AC5\\u0AC7-\\u0AC9' ||
        E'\\u0ACB-\\u0ACC\\u0AD0\\u0AE0-\\u0AE3\\u0AE6-\\u0AEF\\u0AF9-\\u0AFC\\u0B01-\\u0B03' ||
        E'\\u0B05-\\u0B0C\\u0B0F-\\u0B10\\u0B13-\\u0B28\\u0B2A-\\u0B30\\u0B32-\\u0B33\\u0B35-\\u0B39' ||
        E'\\u0B3D-\\u0B44\\u0B47-\\u0B48\\u0B4B-\\u0B4C\\u0B56-\\u0B57\\u0B5C-\\u0B5D\\u0B5F-\\u0B63' ||
        E'\\u0B66-\\u0B6F\\u0B71-\\u0B77\\u0B82-\\u0B83\\u0B85-\\u0B8A\\u0B8E-\\u0B90\\u0B92-\\u0B95' ||
        E'\\u0B99-\\u0B9A\\u0B9C\\u0B9E-\\u0B9F\\u0BA3-\\u0BA4\\u0BA8-\\u0BAA\\u0BAE-\\u0BB9' ||
        E'\\u0BBE-\\u0BC2\\u0BC6-\\u0BC8\\u0BCA-\\u0BCC\\u0BD0\\u0BD7\\u0BE6-\\u0BF2\\u0C00-\\u0C0C' ||
        E'\\u0C0E-\\u0C10\\u0C12-\\u0C28\\u0C2A-\\u0C39\\u0C3D-\\u0C44\\u0C46-\\u0C48\\u0C4A-\\u0C4C' ||
        E'\\u0C55-\\u0C56\\u0C58-\\u0C5A\\u0C5C-\\u0C5D\\u0C60-\\u0C63\\u0C66-\\u0C6F\\u0C78-\\u0C7E' ||
        E'\\u0C80-\\u0C83\\u0C85-\\u0C8C\\u0C8E-\\u0C90\\u0C92-\\u0CA8\\u0CAA-\\u0CB3\\u0CB5-\\u0CB9' ||
        E'\\u0CBD-\\u0CC4\\u0CC6-\\u0CC8\\u0CCA-\\u0CCC\\u0CD5-\\u0CD6\\u0CDC-\\u0CDE\\u0CE0-\\u0CE3' ||
        E'\\u0CE6-\\u0CEF\\u0CF1-\\u0CF3\\u0D00-\\u0D0C\\u0D0E-\\u0D10\\u0D12-\\u0D3A\\u0D3D-\\u0D44' ||
        E'\\u0D46-\\u0D48\\u0D4A-\\u0D4C\\u0D4E\\u0D54-\\u0D63\\u0D66-\\u0D78\\u0D7A-\\u0D7F' ||
        E'\\u0D81-\\u0D83\\u0D85-\\u0D96\\u0D9A-\\u0DB1\\u0DB3-\\u0DBB\\u0DBD\\u0DC0-\\u0DC6' ||
        E'\\u0DCF-\\u0DD4\\u0DD6\\u0DD8-\\u0DDF\\u0DE6-\\u0DEF\\u0DF2-\\u0DF3\\u0E01-\\u0E3A' ||
        E'\\u0E40-\\u0E46\\u0E4D\\u0E50-\\u0E59\\u0E81-\\u0E82\\u0E84\\u0E86-\\u0E8A\\u0E8C-\\u0EA3' ||
        E'\\u0EA5\\u0EA7-\\u0EB9\\u0EBB-\\u0EBD\\u0EC0-\\u0EC4\\u0EC6\\u0ECD\\u0ED0-\\u0ED9' ||
        E'\\u0EDC-\\u0EDF\\u0F00\\u0F20-\\u0F33\\u0F40-\\u0F47\\u0F49-\\u0F6C\\u0F71-\\u0F83' ||
        E'\\u0F88-\\u0F97\\u0F99-\\u0FBC\\u1000-\\u1036\\u1038\\u103B-\\u1049\\u1050-\\u109D' ||
        E'\\u10A0-\\u10C5\\u10C7\\u10CD\\u10D0-\\u10FA\\u10FC-\\u1248\\u124A-\\u124D\\u1250-\\u1256' ||
        E'\\u1258\\u125A-\\u125D\\u1260-\\u1288\\u128A-\\u128D\\u1290-\\u12B0\\u12B2-\\u12B5' ||
        E'\\u12B8-\\u12BE\\u12C0\\u12C2-\\u12C5\\u12C8-\\u12D6\\u12D8-\\u1310\\u1312-\\u1315' ||
        E'\\u1318-\\u135A\\u1369-\\u137C\\u1380-\\u138F\\u13A0-\\u13F5\\u13F8-\\u13FD\\u1401-\\u166C' ||
        E'\\u166F-\\u167F\\u1681-\\u169A\\u16A0-\\u16EA\\u16EE-\\u16F8\\u1700-\\u1713\\u171F-\\u1733' ||
        E'\\u1740-\\u1753\\u1760-\\u176C\\u176E-\\u1770\\u1772-\\u1773\\u1780-\\u17B3\\u17B6-\\u17C8' ||
        E'\\u17D7\\u17DC\\u17E0-\\u17E9\\u17F0-\\u17F9\\u1810-\\u1819\\u1820-\\u1878\\u1880-\\u18AA' ||
        E'\\u18B0-\\u18F5\\u1900-\\u191E\\u1920-\\u192B\\u1930-\\u1938\\u1946-\\u196D\\u1970-\\u1974' ||
        E'\\u1980-\\u19AB\\u19B0-\\u19C9\\u19D0-\\u19DA\\u1A00-\\u1A1B\\u1A20-\\u1A5E\\u1A61-\\u1A74' ||
        E'\\u1A80-\\u1A89\\u1A90-\\u1A99\\u1AA7\\u1ABF-\\u1AC0\\u1ACC-\\u1ACE\\u1B00-\\u1B33' ||
        E'\\u1B35-\\u1B43\\u1B45-\\u1B4C\\u1B50-\\u1B59\\u1B80-\\u1BA9\\u1BAC-\\u1BE5\\u1BE7-\\u1BF1' ||
        E'\\u1C00-\\u1C36\\u1C40-\\u1C49\\u1C4D-\\u1C7D\\u1C80-\\u1C8A\\u1C90-\\u1CBA\\u1CBD-\\u1CBF' ||
        E'\\u1CE9-\\u1CEC\\u1CEE-\\u1CF3\\u1CF5-\\u1CF6\\u1CFA\\u1D00-\\u1DBF\\u1DD3-\\u1DF4' ||
        E'\\u1E00-\\u1F15\\u1F18-\\u1F1D\\u1F20-\\u1F45\\u1F48-\\u1F4D\\u1F50-\\u1F57\\u1F59\\u1F5B' ||
        E'\\u1F5D\\u1F5F-\\u1F7D\\u1F80-\\u1FB4\\u1FB6-\\u1FBC\\u1FBE\\u1FC2-\\u1FC4\\u1FC6-\\u1FCC' ||
        E'\\u1FD0-\\u1FD3\\u1FD6-\\u1FDB\\u1FE0-\\u1FEC\\u1FF2-\\u1FF4\\u1FF6-\\u1FFC\\u2070-\\u2071' ||
        E'\\u2074-\\u2079\\u207F-\\u2089\\u2090-\\u209C\\u2102\\u2107\\u210A-\\u2113\\u2115' ||
        E'\\u2119-\\u211D\\u2124\\u2126\\u2128\\u212A-\\u212D\\u212F-\\u2139\\u213C-\\u213F' ||
        E'\\u2145-\\u2149\\u214E\\u2150-\\u2189\\u2460-\\u249B\\u24B6-\\u24FF\\u2776-\\u2793' ||
        E'\\u2C00-\\u2CE4\\u2CEB-\\u2CEE\\u2CF2-\\u2CF3\\u2CFD\\u2D00-\\u2D25\\u2D27\\u2D2D' ||
        E'\\u2D30-\\u2D67\\u2D6F\\u2D80-\\u2D96\\u2DA0-\\u2DA6\\u2DA8-\\u2DAE\\u2DB0-\\u2DB6' ||
        E'\\u2DB8-\\u2DBE\\u2DC0-\\u2DC6\\u2DC8-\\u2DCE\\u2DD0-\\u2DD6\\u2DD8-\\u2DDE\\u2DE0-\\u2DFF' ||
        E'\\u2E2F\\u3005-\\u3007\\u3021-\\u3029\\u3031-\\u3035\\u3038-\\u303C\\u3041-\\u3096' ||
        E'\\u309D-\\u309F\\u30A1-\\u30FA\\u30FC-\\u30FF\\u3105-\\u312F\\u3131-\\u318E\\u3192-\\u3195' ||
        E'\\u31A0-\\u31BF\\u31F0-\\u31FF\\u3220-\\u3229\\u3248-\\u324F\\u3251-\\u325F\\u3280-\\u3289' ||
        E'\\u32B1-\\u32BF\\u3400-\\u4DBF\\u4E00-\\uA48C\\uA4D0-\\uA4FD\\uA500-\\uA60C\\uA610-\\uA62B' ||
        E'\\uA640-\\uA66E\\uA674-\\uA67B\\uA67F-\\uA6EF\\uA717-\\uA71F\\uA722-\\uA788\\uA78B-\\uA7DC' ||
        E'\\uA7F1-\\uA805\\uA807-\\uA827\\uA830-\\uA835\\uA840-\\uA873\\uA880-\\uA8C3\\uA8C5' ||
        E'\\uA8D0-\\uA8D9\\uA8F2-\\uA8F7\\uA8FB\\uA8FD-\\uA92A\\uA930-\\uA952\\uA960-\\uA97C' ||
        E'\\uA980-\\uA9B2\\uA9B4-\\uA9BF\\uA9CF-\\uA9D9\\uA9E0-\\uA9FE\\uAA00-\\uAA36\\uAA40-\\uAA4D' ||
        E'\\uAA50-\\uAA59\\uAA60-\\uAA76\\uAA7A-\\uAABE\\uAAC0\\uAAC2\\uAADB-\\uAADD\\uAAE0-\\uAAEF' ||
        E'\\uAAF2-\\uAAF5\\uAB01-\\uAB06\\uAB09-\\uAB0E\\uAB11-\\uAB16\\uAB20-\\uAB26\\uAB28-\\uAB2E' ||
        E'\\uAB30-\\uAB5A\\uAB5C-\\uAB69\\uAB70-\\uABEA\\uABF0-\\uABF9\\uAC00-\\uD7A3\\uD7B0-\\uD7C6' ||
        E'\\uD7CB-\\uD7FB\\uF900-\\uFA6D\\uFA70-\\uFAD9\\uFB00-\\uFB06\\uFB13-\\uFB17\\uFB1D-\\uFB28' ||
        E'\\uFB2A-\\uFB36\\uFB38-\\uFB3C\\uFB3E\\uFB40-\\uFB41\\uFB43-\\uFB44\\uFB46-\\uFBB1' ||
        E'\\uFBD3-\\uFD3D\\uFD50-\\uFD8F\\uFD92-\\uFDC7\\uFDF0-\\uFDFB\\uFE70-\\uFE74\\uFE76-\\uFEFC' ||
        E'\\uFF10-\\uFF19\\uFF21-\\uFF3A\\uFF41-\\uFF5A\\uFF66-\\uFFBE\\uFFC2-\\uFFC7\\uFFCA-\\uFFCF' ||
        E'\\uFFD2-\\uFFD7\\uFFDA-\\uFFDC\\U00010000-\\U0001000B\\U0001000D-\\U00010026' ||
        E'\\U00010028-\\U0001003A\\U0001003C-\\U0001003D\\U0001003F-\\U0001004D\\U00010050-\\U0001005D' ||
        E'\\U00010080-\\U000100FA\\U00010107-\\U00010133\\U00010140-\\U00010178\\U0001018A-\\U0001018B' ||
        E'\\U00010280-\\U0001029C\\U000102A0-\\U000102D0\\U000102E1-\\U000102FB\\U00010300-\\U00010323' ||
        E'\\U0001032D-\\U0001034A\\U00010350-\\U0001037A\\U00010380-\\U0001039D\\U000103A0-\\U000103C3' ||
        E'\\U000103C8-\\U000103CF\\U000103D1-\\U000103D5\\U00010400-\\U0001049D\\U000104A0-\\U000104A9' ||
        E'\\U000104B0-\\U000104D3\\U000104D8-\\U000104FB\\U00010500-\\U00010527\\U00010530-\\U00010563' ||
        E'\\U00010570-\\U0001057A\\U0001057C-\\U0001058A\\U0001058C-\\U00010592\\U00010594-\\U00010595' ||
        E'\\U00010597-\\U000105A1\\U000105A3-\\U000105B1\\U000105B3-\\U000105B9\\U000105BB-\\U000105BC' ||
        E'\\U000105C0-\\U000105F3\\U00010600-\\U00010736\\U00010740-\\U00010755\\U00010760-\\U00010767' ||
        E'\\U00010780-\\U00010785\\U00010787-\\U000107B0\\U000107B2-\\U000107BA\\U00010800-\\U00010805' ||
        E'\\U00010808\\U0001080A-\\U00010835\\U00010837-\\U00010838\\U0001083C\\U0001083F-\\U00010855' ||
        E'\\U00010858-\\U00010876\\U00010879-\\U0001089E\\U000108A7-\\U000108AF\\U000108E0-\\U000108F2' ||
        E'\\U000108F4-\\U000108F5\\U000108FB-\\U0001091B\\U00010920-\\U00010939\\U00010940-\\U00010959' ||
        E'\\U00010980-\\U000109B7\\U000109BC-\\U000109CF\\U000109D2-\\U00010A03\\U00010A05-\\U00010A06' ||
        E'\\U00010A0C-\\U00010A13\\U00010A15-\\U00010A17\\U00010A19-\\U00010A35\\U00010A40-\\U00010A48' ||
        E'\\U00010A60-\\U00010A7E\\U00010A80-\\U00010A9F\\U00010AC0-\\U00010AC7\\U00010AC9-\\U00010AE4' ||
        E'\\U00010AEB-\\U00010AEF\\U00010B00-\\U00010B35\\U00010B40-\\U00010B55\\U00010B58-\\U00010B72' ||
        E'\\U00010B78-\\U00010B91\\U00010BA9-\\U00010BAF\\U00010C00-\\U00010C48\\U00010C80-\\U00010CB2' ||
        E'\\U00010CC0-\\U00010CF2\\U00010CFA-\\U00010D27\\U00010D30-\\U00010D39\\U00010D40-\\U00010D65' ||
        E'\\U00010D69\\U00010D6F-\\U00010D85\\U00010E60-\\U00010E7E\\U00010E80-\\U00010EA9' ||
        E'\\U00010EAB-\\U00010EAC\\U00010EB0-\\U00010EB1\\U00010EC2-\\U00010EC7\\U00010EFA-\\U00010EFC' ||
        E'\\U00010F00-\\U00010F27\\U00010F30-\\U00010F45\\U00010F51-\\U00010F54\\U00010F70-\\U00010F81' ||
        E'\\U00010FB0-\\U00010FCB\\U00010FE0-\\U00010FF6\\U00011000-\\U00011045\\U00011052-\\U0001106F' ||
        E'\\U00011071-\\U00011075\\U00011080-\\U000110B8\\U000110C2\\U000110D0-\\U000110E8' ||
        E'\\U000110F0-\\U000110F9\\U00011100-\\U00011132\\U00011136-\\U0001113F\\U00011144-\\U00011147' ||
        E'\\U00011150-\\U00011172\\U00011176\\U00011180-\\U000111BF\\U000111C1-\\U000111C4' ||
        E'\\U000111CE-\\U000111DA\\U000111DC\\U000111E1-\\U000111F4\\U00011200-\\U00011211' ||
        E'\\U00011213-\\U00011234\\U00011237\\U0001123E-\\U00011241\\U00011280-\\U00011286\\U00011288' ||
        E'\\U0001128A-\\U0001128D\\U0001128F-\\U0001129D\\U0001129F-\\U000112A8\\U000112B0-\\U000112E8' ||
        E'\\U000112F0-\\U000112F9\\U00011300-\\U00011303\\U00011305-\\U0001130C\\U0001130F-\\U00011310' ||
        E'\\U00011313-\\U00011328\\U0001132A-\\U00011330\\U00011332-\\U00011333\\U00011335-\\U00011339' ||
        E'\\U0001133D-\\U00011344\\U00011347-\\U00011348\\U0001134B-\\U0001134C\\U00011350\\U00011357' ||
        E'\\U0001135D-\\U00011363\\U00011380-\\U00011389\\U0001138B\\U0001138E\\U00011390-\\U000113B5' ||
        E'\\U000113B7-\\U000113C0\\U000113C2\\U000113C5\\U000113C7-\\U000113CA\\U000113CC-\\U000113CD' ||
        E'\\U000113D1\\U000113D3\\U00011400-\\U00011441\\U00011443-\\U00011445\\U00011447-\\U0001144A' ||
        E'\\U00011450-\\U00011459\\U0001145F-\\U00011461\\U00011480-\\U000114C1\\U000114C4-\\U000114C5' ||
        E'\\U000114C7\\U000114D0-\\U000114D9\\U00011580-\\U000115B5\\U000115B8-\\U000115BE' ||
        E'\\U000115D8-\\U000115DD\\U00011600-\\U0001163E\\U00011640\\U00011644\\U00011650-\\U00011659' ||
        E'\\U00011680-\\U000116B5\\U000116B8\\U000116C0-\\U000116C9\\U000116D0-\\U000116E3' ||
        E'\\U00011700-\\U0001171A\\U0001171D-\\U0001172A\\U00011730-\\U0001173B\\U00011740-\\U00011746' ||
        E'\\U00011800-\\U00011838\\U000118A0-\\U000118F2\\U000118FF-\\U00011906\\U00011909' ||
        E'\\U0001190C-\\U00011913\\U00011915-\\U00011916\\U00011918-\\U00011935\\U00011937-\\U00011938' ||
        E'\\U0001193B-\\U0001193C\\U0001193F-\\U00011942\\U00011950-\\U00011959\\U000119A0-\\U000119A7' ||
        E'\\U000119AA-\\U000119D7\\U000119DA-\\U000119DF\\U000119E1\\U000119E3-\\U000119E4' ||
        E'\\U00011A00-\\U00011A32\\U00011A35-\\U00011A3E\\U00011A50-\\U00011A97\\U00011A9D' ||
        E'\\U00011AB0-\\U00011AF8\\U00011B60-\\U00011B67\\U00011BC0-\\U00011BE0\\U00011BF0-\\U00011BF9' ||
        E'\\U00011C00-\\U00011C08\\U00011C0A-\\U00011C36\\U00011C38-\\U00011C3E\\U00011C40' ||
        E'\\U00011C50-\\U00011C6C\\U00011C72-\\U00011C8F\\U00011C92-\\U00011CA7\\U00011CA9-\\U00011CB6' ||
        E'\\U00011D00-\\U00011D06\\U00011D08-\\U00011D09\\U00011D0B-\\U00011D36\\U00011D3A' ||
        E'\\U00011D3C-\\U00011D3D\\U00011D3F-\\U00011D41\\U00011D43\\U00011D46-\\U00011D47' ||
        E'\\U00011D50-\\U00011D59\\U00011D60-\\U00011D65\\U00011D67-\\U00011D68\\U00011D6A-\\U00011D8E' ||
        E'\\U00011D90-\\U00011D91\\U00011D93-\\U00011D96\\U00011D98\\U00011DA0-\\U00011DA9' ||
        E'\\U00011DB0-\\U00011DDB\\U00011DE0-\\U00011DE9\\U00011EE0-\\U00011EF6\\U00011F00-\\U00011F10' ||
        E'\\U00011F12-\\U00011F3A\\U00011F3E-\\U00011F40\\U00011F50-\\U00011F59\\U00011FB0' ||
        E'\\U00011FC0-\\U00011FD4\\U00012000-\\U00012399\\U00012400-\\U0001246E\\U00012480-\\U00012543' ||
        E'\\U00012F90-\\U00012FF0\\U00013000-\\U0001342F\\U00013441-\\U00013446\\U00013460-\\U000143FA' ||
        E'\\U00014400-\\U00014646\\U00016100-\\U0001612E\\U00016130-\\U00016139\\U00016800-\\U00016A38' ||
        E'\\U00016A40-\\U00016A5E\\U00016A60-\\U00016A69\\U00016A70-\\U00016ABE\\U00016AC0-\\U00016AC9' ||
        E'\\U00016AD0-\\U00016AED\\U00016B00-\\U00016B2F\\U00016B40-\\U00016B43\\U00016B50-\\U00016B59' ||
        E'\\U00016B5B-\\U00016B61\\U00016B63-\\U00016B77\\U00016B7D-\\U00016B8F\\U00016D40-\\U00016D6C' ||
        E'\\U00016D70-\\U00016D79\\U00016E40-\\U00016E96\\U00016EA0-\\U00016EB8\\U00016EBB-\\U00016ED3' ||
        E'\\U00016F00-\\U00016F4A\\U00016F4F-\\U00016F87\\U00016F8F-\\U00016F9F\\U00016FE0-\\U00016FE1' ||
        E'\\U00016FE3\\U00016FF0-\\U00016FF6\\U00017000-\\U00018CD5\\U00018CFF-\\U00018D1E' ||
        E'\\U00018D80-\\U00018DF2\\U0001AFF0-\\U0001AFF3\\U0001AFF5-\\U0001AFFB\\U0001AFFD-\\U0001AFFE' ||
        E'\\U0001B000-\\U0001B122\\U0001B132\\U0001B150-\\U0001B152\\U0001B155\\U0001B164-\\U0001B167' ||
        E'\\U0001B170-\\U0001B2FB\\U0001BC00-\\U0001BC6A\\U0001BC70-\\U0001BC7C\\U0001BC80-\\U0001BC88' ||
        E'\\U0001BC90-\\U0001BC99\\U0001BC9E\\U0001CCF0-\\U0001CCF9\\U0001D2C0-\\U0001D2D3' ||
        E'\\U0001D2E0-\\U0001D2F3\\U0001D360-\\U0001D378\\U0001D400-\\U0001D454\\U0001D456-\\U0001D49C' ||
        E'\\U0001D49E-\\U0001D49F\\U0001D4A2\\U0001D4A5-\\U0001D4A6\\U0001D4A9-\\U0001D4AC' ||
        E'\\U0001D4AE-\\U0001D4B9\\U0001D4BB\\U0001D4BD-\\U0001D4C3\\U0001D4C5-\\U0001D505' ||
        E'\\U0001D507-\\U0001D50A\\U0001D50D-\\U0001D514\\U0001D516-\\U0001D51C\\U0001D51E-\\U0001D539' ||
        E'\\U0001D53B-\\U0001D53E\\U0001D540-\\U0001D544\\U0001D546\\U0001D54A-\\U0001D550' ||
        E'\\U0001D552-\\U0001D6A5\\U0001D6A8-\\U0001D6C0\\U0001D6C2-\\U0001D6DA\\U0001D6DC-\\U0001D6FA' ||
        E'\\U0001D6FC-\\U0001D714\\U0001D716-\\U0001D734\\U0001D736-\\U0001D74E\\U0001D750-\\U0001D76E' ||
        E'\\U0001D770-\\U0001D788\\U0001D78A-\\U0001D7A8\\U0001D7AA-\\U0001D7C2\\U0001D7C4-\\U0001D7CB' ||
        E'\\U0001D7CE-\\U0001D7FF\\U0001DF00-\\U0001DF1E\\U0001DF25-\\U0001DF2A\\U0001E000-\\U0001E006' ||
        E'\\U0001E008-\\U0001E018\\U0001E01B-\\U0001E021\\U0001E023-\\U0001E024\\U0001E026-\\U0001E02A' ||
        E'\\U0001E030-\\U0001E06D\\U0001E08F\\U0001E100-\\U0001E12C\\U0001E137-\\U0001E13D' ||
        E'\\U0001E140-\\U0001E149\\U0001E14E\\U0001E290-\\U0001E2AD\\U0001E2C0-\\U0001E2EB' ||
        E'\\U0001E2F0-\\U0001E2F9\\U0001E4D0-\\U0001E4EB\\U0001E4F0-\\U0001E4F9\\U0001E5D0-\\U0001E5ED' ||
        E'\\U0001E5F0-\\U0001E5FA\\U0001E6C0-\\U0001E6DE\\U0001E6E0-\\U0001E6F5\\U0001E6FE-\\U0001E6FF' ||
        E'\\U0001E7E0-\\U0001E7E6\\U0001E7E8-\\U0001E7EB\\U0001E7ED-\\U0001E7EE\\U0001E7F0-\\U0001E7FE' ||
        E'\\U0001E800-\\U0001E8C4\\U0001E8C7-\\U0001E8CF\\U0001E900-\\U0001E943\\U0001E947\\U0001E94B' ||
        E'\\U0001E950-\\U0001E959\\U0001EC71-\\U0001ECAB\\U0001ECAD-\\U0001ECAF\\U0001ECB1-\\U0001ECB4' ||
        E'\\U0001ED01-\\U0001ED2D\\U0001ED2F-\\U0001ED3D\\U0001EE00-\\U0001EE03\\U0001EE05-\\U0001EE1F' ||
        E'\\U0001EE21-\\U0001EE22\\U0001EE24\\U0001EE27\\U0001EE29-\\U0001EE32\\U0001EE34-\\U0001EE37' ||
        E'\\U0001EE39\\U0001EE3B\\U0001EE42\\U0001EE47\\U0001EE49\\U0001EE4B\\U0001EE4D-\\U0001EE4F' ||
        E'\\U0001EE51-\\U0001EE52\\U0001EE54\\U0001EE57\\U0001EE59\\U0001EE5B\\U0001EE5D\\U0001EE5F' ||
        E'\\U0001EE61-\\U0001EE62\\U0001EE64\\U0001EE67-\\U0001EE6A\\U0001EE6C-\\U0001EE72' ||
        E'\\U0001EE74-\\U0001EE77\\U0001EE79-\\U0001EE7C\\U0001EE7E\\U0001EE80-\\U0001EE89' ||
        E'\\U0001EE8B-\\U0001EE9B\\U0001EEA1-\\U0001EEA3\\U0001EEA5-\\U0001EEA9\\U0001EEAB-\\U0001EEBB' ||
        E'\\U0001F100-\\U0001F10C\\U0001F130-\\U0001F149\\U0001F150-\\U0001F169\\U0001F170-\\U0001F189' ||
        E'\\U0001FBF0-\\U0001FBF9\\U00020000-\\U0002A6DF\\U0002A700-\\U0002B81D\\U0002B820-\\U0002CEAD' ||
        E'\\U0002CEB0-\\U0002EBE0\\U0002EBF0-\\U0002EE5D\\U0002F800-\\U0002FA1D\\U00030000-\\U0003134A' ||
        E'\\U00031350-\\U00033479'
$$;

-- The model's words of a text: lower-cased as far as the ASCII lexicon can tell (see LOCALE
-- above), split on runs of non-alphanumeric characters, empty words dropped.
CREATE OR REPLACE FUNCTION ml_reference.words(input text) RETURNS SETOF text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT word
      FROM regexp_split_to_table(
               translate(replace(replace(input, chr(304), 'i' || chr(775)), chr(8490), 'k'),
                         'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),
               '[^a-z0-9' || ml_reference.word_chars() || ']+') AS word
     WHERE word <> ''
$$;

-- mock_aws::models::sentiment(text): the label and its score, in float4 arithmetic like the
-- Rust f32 code (every operand is real, so no step widens to float8).
CREATE OR REPLACE FUNCTION ml_reference.sentiment(input text, OUT label varchar, OUT confidence real)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN p > n THEN 'POSITIVE' WHEN n > p THEN 'NEGATIVE'
                WHEN p > 0 THEN 'MIXED' ELSE 'NEUTRAL' END,
           CASE WHEN p > n THEN ((p - n)::real + 1::real) / ((p - n)::real + 2::real)
                WHEN n > p THEN ((n - p)::real + 1::real) / ((n - p)::real + 2::real)
                WHEN p > 0 THEN p::real / (p::real + 1::real)
                ELSE '0.9'::real END
      FROM (SELECT count(*) FILTER (WHERE word = ANY (ml_reference.positive_words())) AS p,
                   count(*) FILTER (WHERE word = ANY (ml_reference.negative_words())
                                      AND word <> ALL (ml_reference.positive_words())) AS n
              FROM ml_reference.words(input) AS word) AS counts
$$;

-- Whether pgenrich asks Comprehend about this row (false: the result is NULL); raises what
-- pgenrich raises for the row's arguments.
CREATE OR REPLACE FUNCTION ml_reference.sentiment_wanted(input_text text, language_code text,
                                                         max_rows_per_batch int)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF input_text IS NULL OR input_text = '' OR language_code IS NULL THEN
        RETURN false;
    END IF;
    IF max_rows_per_batch < 1 THEN
        RAISE EXCEPTION 'max_rows_per_batch must be positive, got %', max_rows_per_batch
            USING ERRCODE = '22023';
    END IF;
    IF octet_length(input_text) > 5000 THEN
        RAISE EXCEPTION 'document of % bytes is over Comprehend''s 5000-byte limit',
            octet_length(input_text) USING ERRCODE = '22001';
    END IF;
    IF language_code <> ALL (ml_reference.languages()) THEN
        RAISE EXCEPTION 'Language code ''%'' is not supported', language_code
            USING ERRCODE = '22023';
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION aws_comprehend.detect_sentiment(
    input_text varchar, language_code varchar, max_rows_per_batch int DEFAULT NULL,
    OUT sentiment varchar, OUT confidence real)
LANGUAGE sql VOLATILE AS $$
    SELECT s.label, s.confidence
      FROM (SELECT 1) AS one
      LEFT JOIN LATERAL (
          SELECT * FROM ml_reference.sentiment(input_text)
           WHERE ml_reference.sentiment_wanted(input_text, language_code, max_rows_per_batch)
      ) AS s ON true
$$;

-- base ^ exponent for exponent >= 0, exactly (numeric's ^ rounds large results).
CREATE OR REPLACE FUNCTION ml_reference.ipow(base numeric, exponent int) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    result numeric := 1;
BEGIN
    WHILE exponent > 0 LOOP
        IF exponent % 2 = 1 THEN
            result := result * base;
        END IF;
        base := base * base;
        exponent := exponent / 2;
    END LOOP;
    RETURN result;
END
$$;

-- The exact value of a finite float8 (float8::numeric keeps only 15 digits): the IEEE 754 bits
-- give m * 2^e, written as m * 5^-e * 10^e for negative e.
CREATE OR REPLACE FUNCTION ml_reference.f64_exact(x float8) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    bits bigint := ('x' || encode(float8send(x), 'hex'))::bit(64)::bigint;
    biased int := ((bits >> 52) & 2047)::int;
    mantissa bigint := bits & 4503599627370495;
    exponent int;
    value numeric;
BEGIN
    IF biased = 2047 THEN
        RAISE EXCEPTION 'f64_exact(%): not finite', x USING ERRCODE = '22003';
    END IF;
    IF biased = 0 THEN
        exponent := -1074;
    ELSE
        mantissa := mantissa + 4503599627370496;
        exponent := biased - 1075;
    END IF;
    WHILE mantissa <> 0 AND mantissa % 2 = 0 AND exponent < 0 LOOP
        mantissa := mantissa / 2;
        exponent := exponent + 1;
    END LOOP;
    IF exponent >= 0 THEN
        value := mantissa * ml_reference.ipow(2, exponent);
    ELSE
        value := mantissa * ml_reference.ipow(5, -exponent) * ('1e' || exponent)::numeric;
    END IF;
    RETURN CASE WHEN bits < 0 THEN -value ELSE value END;
END
$$;

-- Rust's str::trim(): strips characters with the White_Space property at both ends (PostgreSQL's
-- btrim strips spaces only). Generated from char::is_whitespace; checked by reference.rs.
CREATE OR REPLACE FUNCTION ml_reference.white_space() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT E'\\u0009-\\u000D\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F' ||
           E'\\u205F\\u3000'
$$;

CREATE OR REPLACE FUNCTION ml_reference.rust_trim(input text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT regexp_replace(input, '^[' || ml_reference.white_space() || ']+|['
                                 || ml_reference.white_space() || ']+$', '', 'g')
$$;

-- Rust's `field.trim().parse::<f64>()`, NULL where Rust gives Err. Grammar (any case):
-- [+-]? (inf | infinity | nan | (digits [. digits?] | . digits) (e [+-]? digits)?), ASCII digits;
-- correctly rounded, out-of-range values become ±inf or ±0 (float8in would raise 22003 instead,
-- so the two magnitudes where that can happen are decided exactly in numeric).
CREATE OR REPLACE FUNCTION ml_reference.parse_f64(field text) RETURNS float8
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    t text := ml_reference.rust_trim(field);
    negative boolean;
    body text;
    mantissa text;
    digits text;
    significant text;
    int_digits int;
    exp10 numeric;
    value numeric;
BEGIN
    IF t !~* '^[+-]?(inf|infinity|nan|([0-9]+[.]?[0-9]*|[.][0-9]+)(e[+-]?[0-9]+)?)$' THEN
        RETURN NULL;
    END IF;
    negative := left(t, 1) = '-';
    body := lower(ltrim(t, '+-'));
    IF body IN ('inf', 'infinity') THEN
        RETURN CASE WHEN negative THEN '-Infinity' ELSE 'Infinity' END::float8;
    ELSIF body = 'nan' THEN
        RETURN 'NaN'::float8;
    END IF;
    mantissa := split_part(body, 'e', 1);
    digits := replace(mantissa, '.', '');
    significant := ltrim(digits, '0');
    IF significant = '' THEN
        RETURN CASE WHEN negative THEN '-0' ELSE '0' END::float8;
    END IF;
    int_digits := CASE WHEN strpos(mantissa, '.') = 0 THEN length(mantissa)
                       ELSE strpos(mantissa, '.') - 1 END;
    -- |value| = 0.<significant> * 10^exp10, so 10^(exp10 - 1) <= |value| < 10^exp10.
    exp10 := int_digits - (length(digits) - length(significant))
             + coalesce(nullif(split_part(body, 'e', 2), '')::numeric, 0);
    IF exp10 >= 310 THEN
        RETURN CASE WHEN negative THEN '-Infinity' ELSE 'Infinity' END::float8;
    ELSIF exp10 <= -324 THEN
        RETURN CASE WHEN negative THEN '-0' ELSE '0' END::float8;
    ELSIF exp10 = 309 OR exp10 = -323 THEN
        value := ('0.' || significant || 'e' || exp10)::numeric;
        -- Round to nearest, ties to even: 2^1024 - 2^970 is the midpoint above the largest
        -- double (odd mantissa, so the tie goes to infinity); 2^-1075 the one below the smallest
        -- subnormal (the tie goes to zero).
        IF value >= ml_reference.ipow(2, 1024) - ml_reference.ipow(2, 970) THEN
            RETURN CASE WHEN negative THEN '-Infinity' ELSE 'Infinity' END::float8;
        ELSIF value <= ml_reference.ipow(5, 1075) * 1e-1075 THEN
            RETURN CASE WHEN negative THEN '-0' ELSE '0' END::float8;
        END IF;
    END IF;
    -- Both strtod (behind float8in) and Rust round correctly to nearest.
    RETURN t::float8;
END
$$;

-- IEEE addition as Rust does it: float8 + raises 22003 where a finite sum rounds to infinity.
CREATE OR REPLACE FUNCTION ml_reference.add_f64(a float8, b float8) RETURNS float8
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    sum numeric;
BEGIN
    IF a IN ('Infinity', '-Infinity', 'NaN') OR b IN ('Infinity', '-Infinity', 'NaN')
       OR (abs(a) < 2::float8 ^ 1022 AND abs(b) < 2::float8 ^ 1022) THEN
        RETURN a + b;
    END IF;
    sum := ml_reference.f64_exact(a) + ml_reference.f64_exact(b);
    IF abs(sum) >= ml_reference.ipow(2, 1024) - ml_reference.ipow(2, 970) THEN
        RETURN CASE WHEN sum < 0 THEN '-Infinity' ELSE 'Infinity' END::float8;
    END IF;
    RETURN a + b;
END
$$;

-- Rust's format!("{:.6}") of the sum (exact value rounded half to even; "inf", "-inf", "NaN"),
-- then the model's trimming of trailing zeros and the point, and "-0" as "0".
CREATE OR REPLACE FUNCTION ml_reference.format_f64(x float8) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    value numeric;
    kept numeric;
    rest numeric;
    out text;
BEGIN
    IF x = 'NaN' THEN
        RETURN 'NaN';
    ELSIF x = 'Infinity' THEN
        RETURN 'inf';
    ELSIF x = '-Infinity' THEN
        RETURN '-inf';
    END IF;
    value := ml_reference.f64_exact(x);
    kept := trunc(value, 6);
    rest := abs(value - kept);
    IF rest > 0.0000005 OR (rest = 0.0000005 AND abs(kept) * 1000000 % 2 = 1) THEN
        kept := kept + sign(value) * 0.000001;
    END IF;
    out := rtrim(rtrim(kept::text, '0'), '.');
    RETURN CASE WHEN out = '-0' THEN '0' ELSE out END;
END
$$;

-- mock_aws::models::score over a record's fields (NULL counts as the empty field it is sent as):
-- the sum of each field's number, or its length in characters when it is not one.
CREATE OR REPLACE FUNCTION ml_reference.score(fields text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    total float8 := '-0';
    field text;
BEGIN
    FOREACH field IN ARRAY coalesce(fields, '{}') LOOP
        field := coalesce(field, '');
        total := ml_reference.add_f64(total,
                                      coalesce(ml_reference.parse_f64(field), length(field)));
    END LOOP;
    RETURN ml_reference.format_f64(total);
END
$$;

-- One CSV field as mock_aws::models::csv_field (and pgenrich's csv::write_record) writes it.
CREATE OR REPLACE FUNCTION ml_reference.csv_field(value text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN value ~ '[,"\r\n]' THEN '"' || replace(value, '"', '""') || '"'
                ELSE value END
$$;

-- What the mock endpoint `endpoint_name` answers for one record, as pgenrich returns it.
CREATE OR REPLACE FUNCTION ml_reference.invoke(endpoint_name text, max_rows_per_batch int,
                                               fields text[])
RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF endpoint_name IS NULL THEN
        RAISE EXCEPTION 'endpoint name must not be NULL' USING ERRCODE = '22023';
    ELSIF max_rows_per_batch < 1 THEN
        RAISE EXCEPTION 'max_rows_per_batch must be positive, got %', max_rows_per_batch
            USING ERRCODE = '22023';
    ELSIF starts_with(endpoint_name, 'model-error') THEN
        RAISE EXCEPTION 'endpoint %: ModelError', endpoint_name USING ERRCODE = '38000';
    ELSIF starts_with(endpoint_name, 'short') OR starts_with(endpoint_name, 'bad-csv') THEN
        RAISE EXCEPTION 'endpoint %: malformed response', endpoint_name USING ERRCODE = '38000';
    ELSIF starts_with(endpoint_name, 'echo') THEN
        RETURN coalesce((SELECT string_agg(ml_reference.csv_field(coalesce(f, '')), ',' ORDER BY i)
                           FROM unnest(fields) WITH ORDINALITY AS u(f, i)), '');
    END IF;
    RETURN ml_reference.score(fields);
END
$$;

-- Each input becomes its type's output text (format's %s), which is what pgenrich sends; NULL
-- becomes '' (format's %s), the same empty CSV field.
CREATE OR REPLACE FUNCTION aws_sagemaker.invoke_endpoint(
    endpoint_name varchar, max_rows_per_batch int, VARIADIC model_input anycompatiblearray)
RETURNS varchar LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN ml_reference.invoke(
        endpoint_name, max_rows_per_batch,
        ARRAY(SELECT format('%s', x) FROM unnest(model_input) WITH ORDINALITY AS u(x, i)
               ORDER BY i));
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Bedrock (mock-aws/src/bedrock.rs). pgenrich sends a NULL model_input nowhere (NULL result),
-- refuses a NULL or empty model id or a NULL content type with 22023, and sends `*/*` for a NULL
-- accept type; the model's errors are 38000. Model ids starting with `echo` return the input;
-- ids containing `embed` are the Titan-style embedding model; any other id describes the request.
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION ml_reference.bedrock_checked(model_id text, content_type text)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF model_id IS NULL OR model_id = '' THEN
        RAISE EXCEPTION 'model_id must not be NULL' USING ERRCODE = '22023';
    ELSIF content_type IS NULL THEN
        RAISE EXCEPTION 'content_type must not be NULL' USING ERRCODE = '22023';
    ELSIF starts_with(model_id, 'model-error') OR starts_with(model_id, 'missing')
          OR starts_with(model_id, 'validation') OR starts_with(model_id, 'timeout')
          OR starts_with(model_id, 'not-ready') THEN
        RAISE EXCEPTION 'model %: error', model_id USING ERRCODE = '38000';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION aws_bedrock.invoke_model(
    model_id varchar, content_type text, accept_type text, model_input text)
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF model_input IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM ml_reference.bedrock_checked(model_id, content_type);
    IF starts_with(model_id, 'echo') THEN
        RETURN model_input;
    ELSIF strpos(model_id, 'embed') > 0 THEN
        RAISE EXCEPTION 'the reference does not print embedding bodies' USING ERRCODE = '0A000';
    END IF;
    RETURN format('{"model":%s,"content_type":%s,"accept":%s,"input_bytes":%s}',
                  to_json(model_id::text), to_json(content_type),
                  to_json(coalesce(accept_type, '*/*')), octet_length(model_input));
END
$$;

-- The mock's embedding: for i in 0..dimensions, ((L + i * S) mod 1000) / 1000 with L the code
-- points of inputText and S their sum.
CREATE OR REPLACE FUNCTION aws_bedrock.invoke_model_get_embeddings(
    model_id varchar, content_type text, json_key text, model_input text)
RETURNS float8[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    doc jsonb;
    input text;
    dimensions int;
    total bigint;
BEGIN
    IF model_input IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM ml_reference.bedrock_checked(model_id, content_type);
    IF json_key IS NULL THEN
        RETURN NULL;
    ELSIF strpos(model_id, 'embed') = 0 OR json_key <> 'embedding'
          OR split_part(lower(content_type), ';', 1) <> 'application/json' THEN
        RAISE EXCEPTION 'no array at json_key %', json_key USING ERRCODE = '38000';
    END IF;
    BEGIN
        doc := model_input::jsonb;
    EXCEPTION WHEN others THEN
        RAISE EXCEPTION 'malformed input' USING ERRCODE = '38000';
    END;
    IF jsonb_typeof(doc) <> 'object' OR jsonb_typeof(doc -> 'inputText') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'malformed input' USING ERRCODE = '38000';
    END IF;
    input := doc ->> 'inputText';
    dimensions := coalesce((doc ->> 'dimensions')::int, 4);
    total := coalesce((SELECT sum(ascii(c)) FROM regexp_split_to_table(input, '') AS c
                        WHERE c <> ''), 0);
    RETURN ARRAY(SELECT ((char_length(input) + i * total) % 1000)::float8 / 1000
                   FROM generate_series(0, dimensions - 1) AS i ORDER BY i);
END
$$;
