"""asyncpg through pgenrich: ML statements that stream and that run base + residual, prepared
statements reused with parameters, binary results (asyncpg asks for binary everywhere, records
included), cursors (portals fetched with row limits inside a transaction), and executemany of
an INSERT … SELECT with ML calls (one pipeline, one Sync).

Run by tests/it/asyncpg.rs twice, through pgenrich and on the reference database (where the ML
functions are native), with a libpq-style connection string; prints one JSON object with what it
saw, which the test compares. Fails (non-zero exit) on any unexpected error.
"""

import asyncio
import json
import sys

import asyncpg


def rows(records) -> list:
    return [[list(v) if isinstance(v, asyncpg.Record) else v for v in r] for r in records]


async def main() -> None:
    params = dict(part.split("=", 1) for part in sys.argv[1].split())
    conn = await asyncpg.connect(
        host=params["host"],
        port=int(params["port"]),
        user=params["user"],
        password=params["password"],
        database=params["dbname"],
        ssl=False,
    )
    out = {}
    out["streaming"] = rows(
        await conn.fetch(
            "SELECT id, aws_comprehend.detect_sentiment(body, $1) AS s, "
            "(aws_comprehend.detect_sentiment(body, $1)).confidence AS c, "
            "aws_sagemaker.invoke_endpoint('score', NULL, id) AS score "
            "FROM drv_a WHERE id <= $2 ORDER BY id",
            "en",
            12,
        )
    )
    out["residual"] = rows(
        await conn.fetch(
            "SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, id)::int AS score "
            "FROM drv_a WHERE (aws_comprehend.detect_sentiment(body, 'en')).sentiment = $1 "
            "ORDER BY score DESC, id",
            "POSITIVE",
        )
    )
    statement = await conn.prepare(
        "SELECT (aws_comprehend.detect_sentiment($1::text, 'en')).sentiment AS label"
    )
    out["prepared"] = [await statement.fetchval(t) for t in ("good", "bad", "fine", None)]
    out["prepared_columns"] = [[a.name, a.type.name] for a in statement.get_attributes()]
    async with conn.transaction():
        cursor = await conn.cursor(
            "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment "
            "FROM drv_a ORDER BY id"
        )
        first = rows(await cursor.fetch(5))
        await cursor.forward(3)
        out["cursor"] = [first, rows(await cursor.fetch(100))]
    async with conn.transaction():
        out["iterated"] = [
            [r[0], r[1]]
            async for r in conn.cursor(
                "SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, id) "
                "FROM drv_a ORDER BY id",
                prefetch=7,
            )
        ]
    await conn.execute("DROP TABLE IF EXISTS drv_out; CREATE TABLE drv_out (id int, label text)")
    await conn.executemany(
        "INSERT INTO drv_out SELECT $1, (aws_comprehend.detect_sentiment($2, 'en')).sentiment",
        [(1, "good"), (2, "bad"), (3, None), (4, "fine")],
    )
    out["inserted"] = rows(await conn.fetch("SELECT * FROM drv_out ORDER BY id"))
    await conn.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
