"""psycopg 3 through pgenrich: ML statements as server-side prepared statements.

Run by tests/it/psycopg.rs with a connection string; prints one JSON object with what it saw.
Fails (non-zero exit) on any unexpected error.
"""

import json
import sys

import psycopg


def main() -> None:
    conninfo = sys.argv[1]
    out = {}
    # prepare_threshold=0: every statement is prepared server-side (Parse/Bind/Execute).
    with psycopg.connect(conninfo, prepare_threshold=0, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT (aws_comprehend.detect_sentiment(%s, 'en')).sentiment, "
                "(aws_comprehend.detect_sentiment(%s, 'en')).confidence",
                ("I love it, great product", "terrible"),
            )
            out["fields"] = [list(row) for row in cur.fetchall()]
            out["columns"] = [d.name for d in cur.description]
            # The same statement again, with other parameters: executed as prepared.
            cur.execute(
                "SELECT (aws_comprehend.detect_sentiment(%s, 'en')).sentiment, "
                "(aws_comprehend.detect_sentiment(%s, 'en')).confidence",
                ("bad", "a table"),
            )
            out["again"] = [list(row) for row in cur.fetchall()]
            cur.execute(
                "SELECT g, aws_sagemaker.invoke_endpoint('m', %s, g, %s) FROM generate_series(1, %s) g ORDER BY g",
                (2, 0.5, 5),
            )
            out["invoke"] = [list(row) for row in cur.fetchall()]
            # Binary results.
            cur.execute(
                "SELECT aws_sagemaker.invoke_endpoint('m', NULL, %s), (aws_comprehend.detect_sentiment(%s, 'en')).confidence",
                (7, "good"),
                binary=True,
            )
            out["binary"] = list(cur.fetchone())
            try:
                cur.execute(
                    "SELECT aws_sagemaker.invoke_endpoint('m', NULL, aws_sagemaker.invoke_endpoint('m', NULL, %s))",
                    (1,),
                )
                out["refused"] = None
            except psycopg.errors.FeatureNotSupported as error:
                out["refused"] = error.sqlstate
            cur.execute("SELECT %s::int + 1", (41,))
            out["after"] = cur.fetchone()[0]
        # Inside a transaction: a failing model aborts it, like a native error.
        conn.autocommit = False
        with conn.cursor() as cur:
            try:
                cur.execute("SELECT aws_sagemaker.invoke_endpoint('model-error-x', NULL, %s)", (1,))
                out["model_error"] = None
            except psycopg.Error as error:
                out["model_error"] = error.sqlstate
            try:
                cur.execute("SELECT 1")
                out["aborted"] = None
            except psycopg.errors.InFailedSqlTransaction as error:
                out["aborted"] = error.sqlstate
        conn.rollback()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
