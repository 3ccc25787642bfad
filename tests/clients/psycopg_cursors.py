"""psycopg 3 named (server-side) cursors over ML statements, with autocommit off (psycopg's and
SQLAlchemy's default): DECLARE with server-side parameters, iteration in FETCH FORWARD batches,
scrolling (MOVE), binary results, a cursor scored whole at DECLARE (ML calls in WHERE and a
cast), a WITH HOLD cursor read after its transaction committed, and
SQLAlchemy's stream_results (a named cursor of SQLAlchemy's making) on psycopg.

Run by tests/it/cursors.rs twice, through pgenrich and on the reference database (where the ML
functions are native), with a connection string; prints one JSON object with what it saw, which
the test compares. Fails (non-zero exit) on any unexpected error.
"""

import json
import sys

import psycopg
from sqlalchemy import create_engine, text

SQL = (
    "SELECT id, (aws_comprehend.detect_sentiment(body, %s)).sentiment AS label, "
    "aws_sagemaker.invoke_endpoint('score', NULL, id) AS score "
    "FROM cur_py WHERE id > %s ORDER BY id"
)


def rows(cursor) -> list:
    return [list(row) for row in cursor]


def main() -> None:
    out = {}
    with psycopg.connect(sys.argv[1], autocommit=False) as conn:
        with conn.cursor("stream") as cur:
            cur.itersize = 40
            cur.execute(SQL, ("en", 0))
            out["description"] = [[d.name, d.type_code] for d in cur.description]
            out["streamed"] = rows(cur)
        with conn.cursor("sc", scrollable=True) as cur:
            cur.execute(SQL, ("en", 100))
            first = [list(r) for r in cur.fetchmany(3)]
            cur.scroll(10)
            after = list(cur.fetchone())
            cur.scroll(0, mode="absolute")
            again = list(cur.fetchone())
            out["scroll"] = [first, after, again]
        with conn.cursor("bin", binary=True) as cur:
            cur.execute(SQL + " LIMIT 10", ("en", 0))
            out["binary"] = [list(r) for r in cur.fetchall()]
        with conn.cursor("ranked", scrollable=True) as cur:
            cur.execute(
                "SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, id)::int AS score "
                "FROM cur_py WHERE (aws_comprehend.detect_sentiment(body, %s)).sentiment = %s "
                "ORDER BY score DESC LIMIT %s",
                ("en", "POSITIVE", 30),
            )
            head = [list(r) for r in cur.fetchmany(5)]
            cur.scroll(-2)
            out["ranked"] = [head, list(cur.fetchone()), [list(r) for r in cur.fetchall()]]
        conn.commit()
        with conn.cursor("held", withhold=True) as cur:
            cur.execute(SQL, ("en", 245))
            conn.commit()
            out["held"] = [list(r) for r in cur.fetchall()]
        conn.commit()
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(sys.argv[1])
    )
    with engine.connect() as connection:
        result = connection.execution_options(
            stream_results=True, max_row_buffer=25
        ).execute(
            text(
                "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment AS label "
                "FROM cur_py WHERE id > :low ORDER BY id"
            ),
            {"low": 180},
        )
        out["sqlalchemy"] = [list(row) for row in result]
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
