"""psycopg 3 through pgenrich with autocommit off (psycopg's and SQLAlchemy's default): base +
residual ML statements run again and again in one transaction, prepared server-side and not.

Run by tests/it/transactions.rs with a connection string; prints one JSON object with what it
saw. Fails (non-zero exit) on any error.
"""

import json
import sys

import psycopg

SORTED = (
    "SELECT g FROM generate_series(1, 40) g "
    "WHERE aws_sagemaker.invoke_endpoint('score', NULL, g)::float8 > %s ORDER BY g"
)
ROW_LOCAL = (
    "SELECT g FROM generate_series(1, 40) g "
    "WHERE aws_sagemaker.invoke_endpoint('score', NULL, g)::float8 > %s"
)


def main() -> None:
    conninfo = sys.argv[1]
    out = {"rounds": []}
    with psycopg.connect(conninfo, autocommit=False) as conn:
        with conn.cursor() as cur:
            for round_ in range(10):
                threshold = float(round_ * 3)
                seen = {"threshold": threshold}
                cur.execute(SORTED, (threshold,), prepare=True)
                seen["prepared"] = [row[0] for row in cur.fetchall()]
                cur.execute(SORTED, (threshold,), prepare=False)
                seen["unprepared"] = [row[0] for row in cur.fetchall()]
                cur.execute(ROW_LOCAL, (threshold,), prepare=True)
                seen["row_local"] = sorted(row[0] for row in cur.fetchall())
                out["rounds"].append(seen)
        conn.commit()
        out["status_after_commit"] = conn.info.transaction_status.name
    print(json.dumps(out))


if __name__ == "__main__":
    main()
