"""psycopg 3 on the system's libpq (its pure-Python implementation) with autocommit off and every
statement prepared server-side, its statement cache smaller than the statements it runs: it
evicts with `DEALLOCATE name` (libpq before 17; Close from 17 on), and after each ROLLBACK it
sends `DEALLOCATE ALL`; in pipeline mode it sends the DEALLOCATE as Parse, Bind and Execute. Every
ML statement must keep working, and pgenrich must forget the ones the driver ended (the test runs
it under a small max_prepared_bytes).

Run by tests/it/transactions.rs with a connection string; prints one JSON object with what it
saw. Fails (non-zero exit) on any error.
"""

import os

os.environ["PSYCOPG_IMPL"] = "python"

import json  # noqa: E402
import sys  # noqa: E402

import psycopg  # noqa: E402
from psycopg import pq  # noqa: E402

# About 50 kB of text: pgenrich charges twice that per prepared statement.
PAD = "x" * 50_000


def main() -> None:
    conninfo = sys.argv[1]
    out = {"impl": pq.__impl__, "libpq": pq.version(), "rounds": []}
    with psycopg.connect(conninfo, autocommit=False, prepare_threshold=0) as conn:
        conn.prepared_max = 3
        for round_ in range(30):
            seen = []
            for k in range(4):
                cur = conn.execute(
                    f"SELECT {k} AS k /* {PAD} */, "
                    "aws_sagemaker.invoke_endpoint('score', NULL, %s)::float8",
                    (round_ * 4 + k,),
                )
                row = cur.fetchone()
                seen.append([row[0], row[1] is not None])
            conn.rollback()
            out["rounds"].append(seen)
    # Pipeline mode: psycopg queues its DEALLOCATE with libpq's PQsendQueryParams, which sends it
    # as Parse, Bind and Execute; PostgreSQL carries it out at the Execute.
    out["pipelined"] = []
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=0) as conn:
        conn.prepared_max = 3
        for round_ in range(30):
            cursors = []
            with conn.pipeline():
                for k in range(4):
                    cur = conn.cursor()
                    cur.execute(
                        f"SELECT {k} AS k /* {PAD} */, "
                        "aws_sagemaker.invoke_endpoint('score', NULL, %s)::float8",
                        (round_ * 4 + k,),
                    )
                    cursors.append(cur)
            rows = [cur.fetchone() for cur in cursors]
            out["pipelined"].append([[row[0], row[1] is not None] for row in rows])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
