// node-postgres (pg, pg-cursor) and postgres.js through pgenrich: ML statements that stream
// and that run base + residual, with parameters (extended protocol), a cursor read in pieces
// (portal with row limits), an INSERT … SELECT with ML calls in a transaction, and a model error
// that aborts a transaction.
//
// Run by tests/it/node.rs twice, through pgenrich and on the reference database (where the ML
// functions are native), with a libpq-style connection string; prints one JSON object with what
// it saw, which the test compares. Exits non-zero on any unexpected error.

import pg from "pg";
import Cursor from "pg-cursor";
import postgres from "postgres";

const params = Object.fromEntries(process.argv[2].split(" ").map((p) => p.split("=")));
const options = {
  host: params.host,
  port: Number(params.port),
  user: params.user,
  password: params.password,
  database: params.dbname,
};

const out = {};

// node-postgres.
const client = new pg.Client(options);
await client.connect();
const streaming = await client.query(
  "SELECT id, aws_comprehend.detect_sentiment(body, $1) AS s, " +
    "(aws_comprehend.detect_sentiment(body, $1)).confidence AS c, " +
    "aws_sagemaker.invoke_endpoint('score', NULL, id) AS score " +
    "FROM drv_n WHERE id <= $2 ORDER BY id",
  ["en", 10],
);
out.pg_streaming = streaming.rows;
out.pg_fields = streaming.fields.map((f) => [f.name, f.dataTypeID]);
out.pg_simple = (
  await client.query(
    "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM drv_n " +
      "WHERE id > 25 ORDER BY id",
  )
).rows;
out.pg_residual = (
  await client.query({
    name: "ranked",
    text:
      "SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, id)::int AS score FROM drv_n " +
      "WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = $1 " +
      "ORDER BY score DESC, id LIMIT 5",
    values: ["POSITIVE"],
  })
).rows;
await client.query("BEGIN");
const cursor = client.query(
  new Cursor(
    "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS label " +
      "FROM drv_n ORDER BY id",
  ),
);
const pieces = [];
for (;;) {
  const rows = await cursor.read(7);
  if (rows.length === 0) break;
  pieces.push(rows.length);
  out.pg_cursor_last = rows[rows.length - 1];
}
out.pg_cursor_pieces = pieces;
await cursor.close();
await client.query("DROP TABLE IF EXISTS drv_n_out");
await client.query("CREATE TABLE drv_n_out (id int, label text)");
const inserted = await client.query(
  "INSERT INTO drv_n_out SELECT id, (aws_comprehend.detect_sentiment(body, $1)).sentiment " +
    "FROM drv_n WHERE id <= $2 RETURNING id, label",
  ["en", 4],
);
out.pg_inserted = [inserted.rowCount, inserted.rows];
await client.query("COMMIT");
await client.query("BEGIN");
try {
  await client.query("SELECT aws_sagemaker.invoke_endpoint('model-error-x', NULL, 1)");
  out.pg_model_error = null;
} catch (error) {
  out.pg_model_error = error.code === "38000" || error.code === "42883" ? "failed" : error.code;
}
try {
  await client.query("SELECT 1");
  out.pg_aborted = null;
} catch (error) {
  out.pg_aborted = error.code;
}
await client.query("ROLLBACK");
await client.end();

// postgres.js (prepared statements, its own cursor).
const sql = postgres({ ...options, max: 1, onnotice: () => {} });
out.js_rows = await sql`
  SELECT id, (aws_comprehend.detect_sentiment(body, ${"en"})).sentiment AS label,
         aws_sagemaker.invoke_endpoint('score', NULL, id) AS score
  FROM drv_n WHERE id BETWEEN ${3} AND ${9} ORDER BY id`;
out.js_residual = await sql`
  SELECT count(*)::int AS n, (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS label
  FROM drv_n GROUP BY 2 ORDER BY 2`;
const batches = [];
await sql.begin(async (tx) => {
  await tx`
    SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, id) AS score
    FROM drv_n ORDER BY id`.cursor(8, (rows) => {
    batches.push(rows.length);
  });
});
out.js_cursor_batches = batches;
await sql.end();

console.log(JSON.stringify(out));
