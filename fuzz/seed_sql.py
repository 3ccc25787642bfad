#!/usr/bin/env python3
"""Writes the seed corpus of the `sql` and `sql_ast` fuzz targets: every string literal of the
Rust tests (tests/it/*.rs and the SQL unit tests in src/sql/) that mentions an ML schema or is a
cursor statement (FETCH, MOVE, CLOSE, DECLARE, DISCARD), and every
statement of tests/it/reference.sql that does, one file each, named by content hash.

Run from the repository root: python3 fuzz/seed_sql.py
"""
import glob
import hashlib
import os
import re

MAX_LEN = 4096
OUT = "fuzz/seeds/sql"
ML = re.compile(r"aws_(comprehend|sagemaker|bedrock)", re.IGNORECASE)
CURSOR = re.compile(r"\s*(fetch|move|close|declare|discard)\b", re.IGNORECASE)
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}


def rust_strings(source):
    """The values of the string literals in Rust source (plain and raw)."""
    i = 0
    while i < len(source):
        raw = re.match(r'r(#*)"', source[i:])
        if raw and (i == 0 or not (source[i - 1].isalnum() or source[i - 1] == "_")):
            end = '"' + raw.group(1)
            start = i + raw.end()
            stop = source.find(end, start)
            if stop < 0:
                return
            yield source[start:stop]
            i = stop + len(end)
        elif source.startswith("//", i):
            i = source.find("\n", i) if "\n" in source[i:] else len(source)
        elif source[i] == "'" and re.match(r"'(\\.|[^\\'])'", source[i:]):
            i += re.match(r"'(\\.|[^\\'])'", source[i:]).end()
        elif source[i] == '"':
            i += 1
            value = []
            while i < len(source) and source[i] != '"':
                if source[i] == "\\":
                    nxt = source[i + 1]
                    if nxt == "\n":  # line continuation: skip the newline and indentation
                        i += 2
                        while i < len(source) and source[i] in " \t\n":
                            i += 1
                        continue
                    if nxt == "u":
                        close = source.index("}", i)
                        value.append(chr(int(source[i + 3 : close], 16)))
                        i = close + 1
                        continue
                    if nxt == "x":
                        value.append(chr(int(source[i + 2 : i + 4], 16)))
                        i += 4
                        continue
                    value.append(ESCAPES.get(nxt, nxt))
                    i += 2
                    continue
                value.append(source[i])
                i += 1
            yield "".join(value)
            i += 1
        else:
            i += 1


def sql_statements(script):
    """Statements of a psql script, split at semicolons outside quotes and dollar quotes."""
    statements, current, i, quote = [], [], 0, None
    while i < len(script):
        if quote:
            if script.startswith(quote, i):
                current.append(quote)
                i += len(quote)
                quote = None
                continue
        elif script.startswith("--", i):
            i = script.find("\n", i) if "\n" in script[i:] else len(script)
            continue
        elif script[i] == "'":
            quote = "'"
        elif script[i] == "$":
            tag = re.match(r"\$[A-Za-z_]*\$", script[i:])
            if tag:
                quote = tag.group(0)
                current.append(quote)
                i += len(quote)
                continue
        elif script[i] == ";":
            statements.append("".join(current).strip())
            current = []
            i += 1
            continue
        current.append(script[i])
        i += 1
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def main():
    seeds = set()
    for path in sorted(glob.glob("tests/it/*.rs") + glob.glob("src/sql/**/*.rs", recursive=True)):
        with open(path, encoding="utf-8") as f:
            seeds.update(s for s in rust_strings(f.read()) if ML.search(s) or CURSOR.match(s))
    with open("tests/it/reference.sql", encoding="utf-8") as f:
        seeds.update(s for s in sql_statements(f.read()) if ML.search(s))
    os.makedirs(OUT, exist_ok=True)
    written = 0
    for seed in sorted(seeds):
        data = seed.encode("utf-8")
        if len(data) > MAX_LEN:
            continue
        name = hashlib.sha1(data).hexdigest()
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        written += 1
    print(f"{written} seeds in {OUT}")


if __name__ == "__main__":
    main()
