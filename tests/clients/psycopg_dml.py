"""psycopg 3 through pgenrich with autocommit off (psycopg's and SQLAlchemy's default): ML calls
in INSERT … SELECT, UPDATE, DELETE and CREATE TABLE AS with server-side parameters, committed
and rolled back.

Run by tests/it/modify.rs with a connection string; prints one JSON object with what it saw.
Fails (non-zero exit) on any unexpected error.
"""

import json
import sys

import psycopg

SENTIMENT = "(aws_comprehend.detect_sentiment(body, 'en')).sentiment"


def main() -> None:
    conninfo = sys.argv[1]
    out = {}
    with psycopg.connect(conninfo, autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS py_dml, py_dml_ctas")
            cur.execute("CREATE TABLE py_dml (id int PRIMARY KEY, body text, label text)")
            cur.execute(
                "INSERT INTO py_dml (id, body, label) "
                f"SELECT g, b, (aws_comprehend.detect_sentiment(b, 'en')).sentiment "
                "FROM generate_series(1, %s) g, LATERAL (SELECT %s || ' ' || g AS b) x",
                (6, "good"),
            )
            out["inserted"] = cur.rowcount
            cur.execute(
                f"UPDATE py_dml SET body = body || %s, label = lower({SENTIMENT}) "
                "WHERE id > %s RETURNING id",
                ("!", 3),
            )
            out["updated"] = sorted(row[0] for row in cur.fetchall())
            conn.commit()
            cur.execute(f"DELETE FROM py_dml WHERE {SENTIMENT} = %s", ("POSITIVE",))
            out["deleted"] = cur.rowcount
            conn.rollback()
            cur.execute("SELECT id, label FROM py_dml ORDER BY id")
            out["after_rollback"] = cur.fetchall()
            cur.execute(
                f"CREATE TABLE py_dml_ctas AS SELECT id, {SENTIMENT} AS s FROM py_dml "
                "WHERE id <= %s",
                (2,),
            )
            out["created"] = cur.rowcount
            # An inference error aborts the transaction, as a native error would.
            try:
                cur.execute(
                    "UPDATE py_dml SET label = aws_sagemaker.invoke_endpoint('model-error', NULL, id)"
                )
                out["error"] = None
            except psycopg.Error as error:
                out["error"] = error.sqlstate
            out["status_after_error"] = conn.info.transaction_status.name
            conn.rollback()
            cur.execute("SELECT to_regclass('py_dml_ctas') IS NULL")
            out["ctas_rolled_back"] = cur.fetchone()[0]
        conn.commit()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
