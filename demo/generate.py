#!/usr/bin/env python3
"""Deterministic synthetic data for the pgenrich quickstart.

Writes demo/demo.sql: a plain SQL script (no psql meta-commands, no COPY) that
drops and recreates the demo tables in schema public and fills them with
multi-row INSERT statements. It runs under `psql -f` and equally as one
multi-statement string over the simple query protocol.

Only the Python standard library is used, and every table has its own
fixed-seed random.Random, so the output is the same byte for byte on every run
(and changing one table does not reshuffle the others). demo/train.py imports
the table functions below instead of parsing the SQL.

    python3 demo/generate.py            # writes demo/demo.sql
    python3 demo/generate.py -o FILE    # writes FILE ('-' for stdout)
"""

import argparse
import math
import os
import random
import sys
from datetime import datetime, timedelta, timezone

SEED = 20240501

N_CUSTOMERS = 50
N_TRANSACTIONS = 2000
N_REVIEWS = 300
PURCHASES_PER_CUSTOMER = 15
ROWS_PER_INSERT = 200

# (category_id, category name, price range)
CATEGORIES = [
    (1, "kitchen", (12.0, 180.0)),
    (2, "electronics", (25.0, 650.0)),
    (3, "sports", (10.0, 260.0)),
    (4, "books", (6.0, 45.0)),
    (5, "home", (9.0, 220.0)),
]
SPORTS_CATEGORY_ID = 3

# 8 products per category; ids are assigned in this order (1..40).
PRODUCT_NAMES = {
    "kitchen": ["Blender", "Espresso Machine", "Milk Frother", "Chef Knife",
                "Cast Iron Pan", "Toaster", "Kettle", "Rice Cooker"],
    "electronics": ["Wireless Headphones", "Bluetooth Speaker", "Smartwatch",
                    "E-Reader", "USB-C Charger", "Webcam", "Mechanical Keyboard",
                    "Noise Cancelling Headset"],
    "sports": ["Jump Rope", "Yoga Mat", "Rain Jacket", "Dumbbell Set",
               "Cycling Helmet", "Tennis Racket", "Hiking Backpack", "Water Bottle"],
    "books": ["Cookbook", "Sci-Fi Novel", "Travel Guide", "Mystery Novel",
              "Gardening Handbook", "Children's Atlas", "Poetry Collection",
              "History of Cycling"],
    "home": ["Desk Lamp", "Throw Blanket", "Scented Candle", "Wall Clock",
             "Bath Towel Set", "Plant Pot", "Door Mat", "Storage Basket"],
}

FIRST_NAMES = ["Ada", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hugo",
               "Ines", "Jonas", "Kira", "Liam", "Maya", "Noah", "Olga", "Pablo",
               "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wen", "Ximena",
               "Yusuf", "Zoe"]
LAST_NAMES = ["Andersen", "Baker", "Costa", "Dubois", "Eriksen", "Fischer",
              "Garcia", "Hughes", "Ivanova", "Jensen", "Kowalski", "Lopez",
              "Moreau", "Nakamura", "Okafor", "Petrov", "Quinlan", "Rossi",
              "Schmidt", "Tanaka", "Urban", "Varga", "Weber", "Young"]


def _rng(table):
    # One independent, fixed stream per table.
    return random.Random("%d/%s" % (SEED, table))


def _money(x):
    return round(x + 1e-9, 2)


# --------------------------------------------------------------------------
# customers / products


def customers():
    """List of dicts: id, name, age, avg_basket, sporty."""
    rng = _rng("customers")
    rows = []
    used = set()
    for cid in range(1, N_CUSTOMERS + 1):
        while True:
            name = "%s %s" % (rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES))
            if name not in used:
                used.add(name)
                break
        age = rng.randint(18, 74)
        # Younger customers are a bit more often sporty.
        sporty = rng.random() < (0.65 if age < 40 else 0.3)
        avg_basket = _money(min(250.0, 15.0 + rng.lognormvariate(math.log(50.0), 0.6)))
        rows.append({"id": cid, "name": name, "age": age,
                     "avg_basket": avg_basket, "sporty": sporty})
    # The README's recommendation query uses customer 7: make it a sporty,
    # mid-budget customer regardless of the draw above.
    rows[6].update(age=34, avg_basket=85.0, sporty=True)
    return rows


def products():
    """List of dicts: id, name, category, category_id, price."""
    rng = _rng("products")
    rows = []
    pid = 0
    for cat_id, cat, (lo, hi) in CATEGORIES:
        for name in PRODUCT_NAMES[cat]:
            pid += 1
            # log-uniform price inside the category's range
            price = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            price = math.floor(price) + 0.99 if price >= 10 else _money(price)
            rows.append({"id": pid, "name": name, "category": cat,
                         "category_id": cat_id, "price": _money(price)})
    return rows


# --------------------------------------------------------------------------
# transactions (fraud detection)


def _fraud_logit(amount, hour, distance_km, foreign, card_present):
    night = 1.0 if hour <= 5 else 0.0
    return (-5.6
            + 1.3 * math.log(amount / 60.0)
            + 1.5 * night
            + 0.55 * math.log1p(distance_km / 25.0)
            + 1.5 * (1.0 if foreign else 0.0)
            + 1.6 * (0.0 if card_present else 1.0))


# Relative frequency of each hour of the day for ordinary card use.
_HOUR_WEIGHTS = [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.5, 3, 4.5, 5, 5.5, 6,
                 7, 6.5, 6, 6, 6.5, 7, 7.5, 7, 6, 4.5, 3, 2]


def transactions():
    """List of dicts: id, customer_id, amount, hour, distance_km,
    foreign_country, card_present, is_fraud.

    Fraud is drawn from a logistic model of the features (large amount, night
    hours, far from home, foreign, card not present all raise the odds), so it
    is correlated with them but noisy: a model cannot be perfect on it.
    """
    rng = _rng("transactions")
    rows = []
    for tid in range(1, N_TRANSACTIONS + 1):
        customer_id = rng.randint(1, N_CUSTOMERS)
        amount = _money(min(9500.0, max(1.0, rng.lognormvariate(math.log(55.0), 1.05))))
        hour = rng.choices(range(24), weights=_HOUR_WEIGHTS)[0]
        if rng.random() < 0.08:  # travelling / online from far away
            distance_km = rng.uniform(150.0, 4000.0)
        else:
            distance_km = rng.expovariate(1.0 / 12.0)
        distance_km = round(distance_km, 1)
        foreign = rng.random() < (0.45 if distance_km > 500 else 0.02)
        card_present = rng.random() < 0.72
        p = 1.0 / (1.0 + math.exp(-_fraud_logit(amount, hour, distance_km, foreign, card_present)))
        is_fraud = rng.random() < p
        rows.append({"id": tid, "customer_id": customer_id, "amount": amount,
                     "hour": hour, "distance_km": distance_km,
                     "foreign_country": foreign, "card_present": card_present,
                     "is_fraud": is_fraud})
    return rows


# --------------------------------------------------------------------------
# purchases (history for the recommendation model)


def expected_rating(customer, product):
    """The hidden 'true' taste used to draw ratings (noise is added on top)."""
    rel_price = product["price"] / customer["avg_basket"]
    x = 3.2
    x -= 0.9 * min(2.5, max(-1.0, rel_price - 1.0))      # pricey for this customer
    x += 0.0025 * (customer["avg_basket"] - 60.0)        # big spenders rate higher
    if product["category_id"] == SPORTS_CATEGORY_ID:
        x += 1.0 if customer["sporty"] else -0.8
    elif product["category_id"] == 4:                     # books: older readers
        x += 0.02 * (customer["age"] - 40)
    elif product["category_id"] == 2:                     # electronics: younger buyers
        x -= 0.015 * (customer["age"] - 40)
    return x


def purchases():
    """List of dicts: customer_id, product_id, rating (1..5)."""
    rng = _rng("purchases")
    prods = products()
    rows = []
    for c in customers():
        for p in sorted(rng.sample(prods, PURCHASES_PER_CUSTOMER), key=lambda p: p["id"]):
            r = expected_rating(c, p) + rng.gauss(0.0, 0.6)
            rows.append({"customer_id": c["id"], "product_id": p["id"],
                         "rating": int(min(5, max(1, round(r))))})
    return rows


# --------------------------------------------------------------------------
# reviews (sentiment / ad targeting)

# Hand-written first reviews: every sentiment class, plus quotes, commas, a
# newline and non-ASCII text, so the first page of the demo query shows them.
# (product name, body)
_CURATED_REVIEWS = [
    ("Blender", "I love this blender, works great!"),
    ("Toaster", "Terrible quality, it broke after a week."),
    ("Desk Lamp", "Arrived on Tuesday."),
    ("Wireless Headphones", "Great sound but the battery is awful."),
    ("Milk Frother", "Perfect for my morning café au lait — the foam is fantastic!"),
    ("Rain Jacket", 'The "waterproof" jacket isn\'t waterproof. Returned it, obviously.'),
    ("Yoga Mat", "Box arrived today.\nHaven't opened it yet."),
    ("Cycling Helmet", "Fits well, looks nice, but the strap broke after a month 😞"),
    ("Espresso Machine", "Best espresso I've had outside Italy. Worth every cent! ☕"),
    ("Smartwatch", "The screen is bright and clear; the strap, however, is cheap and itchy."),
    ("Cookbook", "Ordered it as a gift for my sister."),
    ("Bluetooth Speaker", "Useless. Stopped pairing after two days and support never replied."),
]

_TEMPLATES = {
    "positive": [
        "I love this {p}, works great!",
        "Excellent {p}. Would buy again.",
        "Best {p} I've ever owned.",
        "Really happy with the {p}, and shipping was fast too.",
        "Five stars. The {p} exceeded my expectations.",
        "Fantastic quality, my family loves the {p}.",
        "Great value, the {p} is sturdy and beautiful.",
        "Absolutely perfect {p}, highly recommend it!",
    ],
    "negative": [
        "Terrible quality, the {p} broke after a week.",
        "Do not buy this {p}. Complete waste of money.",
        "Very disappointed, the {p} stopped working after two days.",
        "Awful customer service and the {p} arrived damaged.",
        "Worst purchase this year. Returning the {p}.",
        "The {p} is cheap junk, poorly made and overpriced.",
        "Horrible experience, the {p} was missing parts.",
        "I hate this {p}. It is flimsy and useless.",
    ],
    "neutral": [
        "Arrived on Tuesday.",
        "The {p} is blue.",
        "Ordered the {p} for my office.",
        "Package contained the {p} and a manual.",
        "Bought the {p} last month.",
        "The {p} comes in a cardboard box.",
        "Delivered to the front desk at noon.",
        "This is my second {p} from this shop.",
    ],
    "mixed": [
        "The {p} looks great, but it is far too noisy.",
        "Good value for the price, although the instructions were useless.",
        "Love the design of the {p}; hate the short cable.",
        "Works fine, but delivery took three weeks and the box was crushed.",
        "Great {p} but the customer support is terrible.",
        "Nice quality, but the {p} is overpriced.",
        "The {p} is excellent, the packaging was awful.",
        "Comfortable and light, but it broke after a month.",
    ],
}
_SENTIMENT_WEIGHTS = [("positive", 0.38), ("negative", 0.27), ("neutral", 0.2), ("mixed", 0.15)]
_SUFFIXES = ["", "", "", "", "", "", " 👍", " Thanks!", " (bought it on sale)", " Merci beaucoup!"]

_REVIEW_EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


def reviews():
    """List of dicts: id, customer_id, product_id, body, created_at (aware datetime)."""
    rng = _rng("reviews")
    prods = products()
    by_name = {p["name"]: p for p in prods}
    kinds = [k for k, _ in _SENTIMENT_WEIGHTS]
    weights = [w for _, w in _SENTIMENT_WEIGHTS]
    rows = []
    for rid in range(1, N_REVIEWS + 1):
        customer_id = rng.randint(1, N_CUSTOMERS)
        if rid <= len(_CURATED_REVIEWS):
            pname, body = _CURATED_REVIEWS[rid - 1]
            product = by_name[pname]
        else:
            product = rng.choice(prods)
            kind = rng.choices(kinds, weights=weights)[0]
            body = rng.choice(_TEMPLATES[kind]).format(p=product["name"].lower())
            body += rng.choice(_SUFFIXES)
        created_at = _REVIEW_EPOCH + timedelta(seconds=rng.randrange(0, 366 * 24 * 3600))
        rows.append({"id": rid, "customer_id": customer_id, "product_id": product["id"],
                     "body": body, "created_at": created_at})
    return rows


# --------------------------------------------------------------------------
# SQL output


def _lit(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, datetime):
        return "'%s'" % v.strftime("%Y-%m-%d %H:%M:%S+00")
    if isinstance(v, str):
        return "'%s'" % v.replace("'", "''")
    raise TypeError("unsupported literal %r" % (v,))


def _inserts(table, columns, rows, fmt=None):
    fmt = fmt or {}
    out = []
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start:start + ROWS_PER_INSERT]
        values = []
        for r in chunk:
            vals = []
            for c in columns:
                vals.append(fmt[c](r[c]) if c in fmt else _lit(r[c]))
            values.append("  (" + ", ".join(vals) + ")")
        out.append("INSERT INTO %s (%s) VALUES\n%s;\n" % (table, ", ".join(columns), ",\n".join(values)))
    return "".join(out)


def _f2(x):
    return "%.2f" % x


def _f1(x):
    return "%.1f" % x


def render_sql():
    custs = customers()
    prods = products()
    txs = transactions()
    revs = reviews()
    purch = purchases()
    n_fraud = sum(t["is_fraud"] for t in txs)
    parts = []
    parts.append(
        "-- pgenrich quickstart demo data. GENERATED by demo/generate.py: do not edit by hand.\n"
        "-- Synthetic: %d customers, %d products, %d transactions (%d fraudulent), %d reviews,\n"
        "-- %d purchases. Plain SQL (no psql meta-commands): runs with psql -f or as one\n"
        "-- simple-protocol query string.\n"
        % (len(custs), len(prods), len(txs), n_fraud, len(revs), len(purch)))
    parts.append("SET client_min_messages = warning;\n"
                 "SET client_encoding = 'UTF8';\n"
                 "BEGIN;\n\n")
    parts.append("DROP TABLE IF EXISTS public.purchases, public.reviews, public.transactions,\n"
                 "  public.products, public.customers CASCADE;\n\n")
    parts.append(
        "CREATE TABLE public.customers (\n"
        "  id int PRIMARY KEY,\n"
        "  name text NOT NULL,\n"
        "  age int NOT NULL,\n"
        "  avg_basket numeric(10,2) NOT NULL,\n"
        "  sporty boolean NOT NULL\n"
        ");\n\n"
        "CREATE TABLE public.products (\n"
        "  id int PRIMARY KEY,\n"
        "  name text NOT NULL,\n"
        "  category text NOT NULL,\n"
        "  category_id int NOT NULL,\n"
        "  price numeric(10,2) NOT NULL\n"
        ");\n\n"
        "CREATE TABLE public.transactions (\n"
        "  id bigint PRIMARY KEY,\n"
        "  customer_id int NOT NULL,\n"
        "  amount numeric(10,2) NOT NULL,\n"
        "  hour smallint NOT NULL,\n"
        "  distance_km real NOT NULL,\n"
        "  foreign_country boolean NOT NULL,\n"
        "  card_present boolean NOT NULL,\n"
        "  is_fraud boolean NOT NULL\n"
        ");\n\n"
        "CREATE TABLE public.reviews (\n"
        "  id int PRIMARY KEY,\n"
        "  customer_id int NOT NULL,\n"
        "  product_id int NOT NULL,\n"
        "  body text NOT NULL,\n"
        "  created_at timestamptz NOT NULL\n"
        ");\n\n"
        "-- Rating history, used only to train models/recommend.onnx.\n"
        "CREATE TABLE public.purchases (\n"
        "  customer_id int NOT NULL,\n"
        "  product_id int NOT NULL,\n"
        "  rating smallint NOT NULL,\n"
        "  PRIMARY KEY (customer_id, product_id)\n"
        ");\n\n")
    parts.append(_inserts("public.customers", ["id", "name", "age", "avg_basket", "sporty"],
                          custs, {"avg_basket": _f2}))
    parts.append("\n")
    parts.append(_inserts("public.products", ["id", "name", "category", "category_id", "price"],
                          prods, {"price": _f2}))
    parts.append("\n")
    parts.append(_inserts("public.transactions",
                          ["id", "customer_id", "amount", "hour", "distance_km",
                           "foreign_country", "card_present", "is_fraud"],
                          txs, {"amount": _f2, "distance_km": _f1}))
    parts.append("\n")
    parts.append(_inserts("public.reviews", ["id", "customer_id", "product_id", "body", "created_at"],
                          revs))
    parts.append("\n")
    parts.append(_inserts("public.purchases", ["customer_id", "product_id", "rating"], purch))
    parts.append("\nCOMMIT;\n\nANALYZE public.customers, public.products, public.transactions,\n"
                 "  public.reviews, public.purchases;\n")
    return "".join(parts)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=os.path.join(here, "demo.sql"),
                    help="output file, '-' for stdout (default: demo/demo.sql)")
    args = ap.parse_args(argv)
    sql = render_sql()
    if args.output == "-":
        sys.stdout.buffer.write(sql.encode("utf-8"))
    else:
        with open(args.output, "w", encoding="utf-8", newline="\n") as f:
            f.write(sql)
        print("wrote %s (%d bytes)" % (args.output, len(sql.encode("utf-8"))), file=sys.stderr)


if __name__ == "__main__":
    main()
