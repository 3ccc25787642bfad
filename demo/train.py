#!/usr/bin/env python3
"""Train the two demo models on demo/generate.py's synthetic data and export ONNX.

    pip install -r demo/requirements.txt
    python3 demo/train.py            # writes models/fraud.onnx, models/recommend.onnx

models/fraud.onnx      GradientBoostingClassifier -> ai.onnx.ml TreeEnsembleClassifier
    input  'input'  float32 [N, 5]: amount, hour, distance_km, foreign_country (0/1), card_present (0/1)
    output 'label'          int64   [N]    (1 = fraud, threshold 0.5)
    output 'probabilities'  float32 [N, 2] (column 1 = probability of fraud)

models/recommend.onnx  LinearRegression -> ai.onnx.ml LinearRegressor
    input  'input'  float32 [N, 5]: age, avg_basket, sporty (0/1), category_id, price
    output 'variable'       float32 [N, 1] (expected rating, about 1..5)

The export is reproducible: fixed seeds, fixed target opsets, fixed graph names,
and the linear coefficients rounded before export, so running this twice gives
byte-identical files. Each exported model is checked against scikit-learn's own
predictions, on every row, with onnxruntime and (when the `tract` Python
package is installed, as requirements.txt does) with tract, the engine pgenrich
embeds.
"""

import argparse
import hashlib
import os
import sys

import numpy as np
import onnx
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LinearRegression
from sklearn.metrics import accuracy_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import train_test_split
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no demo/__pycache__ from importing the generator
sys.path.insert(0, HERE)
import generate  # noqa: E402  (the data generator beside this file)

SEED = 7
# Upper bounds (skl2onnx then writes the lowest opsets the graph needs): with
# ai.onnx.ml <= 3 trees stay TreeEnsembleClassifier, as tract implements it
# (ai.onnx.ml >= 5 would switch them to the newer TreeEnsemble op).
TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}

FRAUD_FEATURES = ["amount", "hour", "distance_km", "foreign_country", "card_present"]
RECOMMEND_FEATURES = ["age", "avg_basket", "sporty", "category_id", "price"]

# Op types each model may contain. Anything else (ZipMap, TreeEnsembleRegressor,
# TreeEnsemble, Scaler, ...) is not implemented by tract-onnx and fails the export.
ALLOWED_OPS = {
    "fraud": {"TreeEnsembleClassifier", "Cast", "Identity"},
    "recommend": {"LinearRegressor", "Identity"},
}


def fraud_dataset():
    rows = generate.transactions()
    X = np.array([[r["amount"], r["hour"], r["distance_km"],
                   1.0 if r["foreign_country"] else 0.0,
                   1.0 if r["card_present"] else 0.0] for r in rows], dtype=np.float32)
    y = np.array([1 if r["is_fraud"] else 0 for r in rows], dtype=np.int64)
    return X, y


def recommend_dataset():
    custs = {c["id"]: c for c in generate.customers()}
    prods = {p["id"]: p for p in generate.products()}
    X, y = [], []
    for r in generate.purchases():
        c, p = custs[r["customer_id"]], prods[r["product_id"]]
        X.append([c["age"], c["avg_basket"], 1.0 if c["sporty"] else 0.0,
                  p["category_id"], p["price"]])
        y.append(r["rating"])
    return np.array(X, dtype=np.float32), np.array(y, dtype=np.float32)


def _attr(node, name):
    for a in node.attribute:
        if a.name == name:
            return a
    return None


def two_column_tree_classifier(onx):
    """Rewrite skl2onnx's binary TreeEnsembleClassifier into the explicit two-class form.

    For a binary GradientBoostingClassifier skl2onnx emits leaves for class 0
    only, a single base value and post_transform LOGISTIC, leaving it to the
    runtime to expand the one score into [1-p, p]. onnxruntime does, but tract
    0.23 rejects a one-element base_values ("expected length 2"), and its
    one-class ("binary layout") path takes `label` from the wrong column.
    (onnxruntime in turn misreads two-element base_values with two-class
    leaves, so base_values cannot simply be duplicated.) Here every leaf
    weight w becomes a vote -w for class 0 and +w for class 1, and the base
    value is folded into the first tree's leaves (every row reaches exactly one
    leaf per tree), so no base_values remain; LOGISTIC applied per column then
    gives [sigmoid(-F), sigmoid(F)] = [1-p, p] and label = argmax, in both
    runtimes. main() checks this against scikit-learn with both.
    """
    (node,) = [n for n in onx.graph.node if n.op_type == "TreeEnsembleClassifier"]
    labels = list(_attr(node, "classlabels_int64s").ints)
    post = _attr(node, "post_transform").s.decode()
    ids = list(_attr(node, "class_ids").ints)
    if labels != [0, 1] or post != "LOGISTIC" or set(ids) != {0}:
        raise SystemExit("unexpected TreeEnsembleClassifier layout: labels %s, post_transform %s, class ids %s"
                         % (labels, post, sorted(set(ids))))
    nodeids = list(_attr(node, "class_nodeids").ints)
    treeids = list(_attr(node, "class_treeids").ints)
    weights = list(_attr(node, "class_weights").floats)
    base = _attr(node, "base_values")
    b = 0.0
    if base is not None:
        (b,) = base.floats
    first_tree = min(treeids)
    new_ids, new_nodes, new_trees, new_weights = [], [], [], []
    for t, n, w in zip(treeids, nodeids, weights):
        if t == first_tree:
            w += b
        for cls, sign in ((0, -1.0), (1, 1.0)):
            new_trees.append(t)
            new_nodes.append(n)
            new_ids.append(cls)
            new_weights.append(sign * w)
    keep = [a for a in node.attribute
            if a.name not in ("class_ids", "class_nodeids", "class_treeids", "class_weights", "base_values")]
    del node.attribute[:]
    node.attribute.extend(keep)
    node.attribute.extend([
        onnx.helper.make_attribute("class_ids", new_ids),
        onnx.helper.make_attribute("class_nodeids", new_nodes),
        onnx.helper.make_attribute("class_treeids", new_trees),
        onnx.helper.make_attribute("class_weights", new_weights),
    ])
    node.attribute.sort(key=lambda a: a.name)


def export(model, name, doc, features, path, rewrite=None):
    onx = convert_sklearn(
        model,
        name=name,
        initial_types=[("input", FloatTensorType([None, len(features)]))],
        options={id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None,
        target_opset=TARGET_OPSET,
        doc_string=doc,
    )
    if rewrite is not None:
        rewrite(onx)
    onx.graph.name = name
    # Name the dynamic batch dimension: tract cannot type an input whose first
    # dimension is anonymous unless the caller sets an input fact, but takes a
    # named one as a symbol.
    for vi in list(onx.graph.input) + list(onx.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        if not dim0.HasField("dim_value"):
            dim0.dim_param = "N"
    # skl2onnx collects the opsets in a set (their order varies with the hash
    # seed) and may list a domain twice: keep one entry per domain, sorted.
    opsets = {}
    for o in onx.opset_import:
        opsets[o.domain] = max(o.version, opsets.get(o.domain, 0))
    del onx.opset_import[:]
    for domain, version in sorted(opsets.items()):
        onx.opset_import.append(onnx.helper.make_opsetid(domain, version))
    onx.model_version = 1
    del onx.metadata_props[:]
    for k, v in (("features", ",".join(features)), ("generator", "demo/train.py")):
        e = onx.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(onx)
    ops = sorted({n.op_type for n in onx.graph.node})
    bad = set(ops) - ALLOWED_OPS[name]
    if bad:
        raise SystemExit("%s: op types %s are not allowed (tract-onnx lacks them)" % (name, sorted(bad)))
    data = onx.SerializeToString()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    print("  wrote %s: %d bytes, sha256 %s" % (os.path.relpath(path), len(data),
                                               hashlib.sha256(data).hexdigest()))
    print("  ops: %s; inputs: %s; outputs: %s" % (
        ", ".join("%s(%s)" % (n.op_type, n.domain or "ai.onnx") for n in onx.graph.node),
        [i.name for i in onx.graph.input], [o.name for o in onx.graph.output]))
    return path


def check_onnxruntime(path, X, expected):
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    if names != list(expected):
        raise SystemExit("%s: outputs %s, expected %s" % (path, names, list(expected)))
    _compare("onnxruntime", path, sess.run(None, {"input": X}), expected)


def check_tract(path, X, expected):
    try:
        import tract
    except ImportError:
        print("  tract: python package not installed, skipped")
        return
    # As stored (symbolic batch size N), then with the batch size fixed.
    for fact in (None, "%d,%d,f32" % X.shape):
        model = tract.onnx().load(path)
        if fact is not None:
            model.set_input_fact(0, fact)
        outs = [o.to_numpy() for o in model.into_model().into_runnable().run([X])]
        _compare("tract" if fact is None else "tract[fixed]", path, outs, expected)


def _compare(runtime, path, outs, expected):
    for i, (k, want) in enumerate(expected.items()):
        got = outs[i].reshape(want.shape)
        diff = np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))
        print("  %-13s %-13s max |diff| vs sklearn = %.2e" % (runtime, k, diff))
        if diff > 1e-4:
            raise SystemExit("%s disagrees with sklearn on %s (%s)" % (runtime, path, k))


def train_fraud(out_dir):
    print("fraud: GradientBoostingClassifier on %s" % ", ".join(FRAUD_FEATURES))
    X, y = fraud_dataset()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=SEED)
    model = GradientBoostingClassifier(n_estimators=40, max_depth=3, learning_rate=0.1,
                                       subsample=1.0, random_state=SEED)
    model.fit(X_tr, y_tr)
    p_te = model.predict_proba(X_te)[:, 1]
    base = 1.0 - y_te.mean()
    print("  rows %d (fraud %.1f%%); holdout %d rows: AUC %.3f, accuracy %.3f (all-legit baseline %.3f)"
          % (len(y), 100.0 * y.mean(), len(y_te), roc_auc_score(y_te, p_te),
             accuracy_score(y_te, model.predict(X_te)), base))
    top = np.argsort(-p_te)[:20]
    print("  precision among the 20 highest-scored holdout rows: %.2f" % y_te[top].mean())
    path = export(model, "fraud", "Fraud probability of a card transaction (pgenrich demo).",
                  FRAUD_FEATURES, os.path.join(out_dir, "fraud.onnx"),
                  rewrite=two_column_tree_classifier)
    sample = X
    expected = {"label": model.predict(sample).astype(np.int64),
                "probabilities": model.predict_proba(sample).astype(np.float32)}
    check_onnxruntime(path, sample, expected)
    check_tract(path, sample, expected)
    big = X[X[:, 0] > 500][:5]
    print("  examples (amount, hour, km, foreign, card_present -> P(fraud)):")
    for row, p in zip(big, model.predict_proba(big)[:, 1]):
        print("    %8.2f %2d %7.1f %d %d -> %.3f" % (*row, p))


def train_recommend(out_dir):
    print("recommend: LinearRegression on %s" % ", ".join(RECOMMEND_FEATURES))
    X, y = recommend_dataset()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=SEED)
    model = LinearRegression()
    model.fit(X_tr, y_tr)
    # Round the parameters so that last-bit differences between BLAS builds
    # cannot change the exported bytes.
    model.coef_ = np.round(model.coef_.astype(np.float64), 6)
    model.intercept_ = float(np.round(float(model.intercept_), 6))
    pred = model.predict(X_te)
    print("  rows %d; holdout %d rows: R^2 %.3f, MAE %.3f (predict-the-mean MAE %.3f)"
          % (len(y), len(y_te), r2_score(y_te, pred), mean_absolute_error(y_te, pred),
             mean_absolute_error(y_te, np.full_like(y_te, y_tr.mean()))))
    print("  coefficients: %s; intercept %.4f" % (
        ", ".join("%s %+.4f" % kv for kv in zip(RECOMMEND_FEATURES, model.coef_)), model.intercept_))
    path = export(model, "recommend", "Expected rating (1..5) of a product by a customer (pgenrich demo).",
                  RECOMMEND_FEATURES, os.path.join(out_dir, "recommend.onnx"))
    sample = X
    expected = {"variable": model.predict(sample).astype(np.float32).reshape(-1, 1)}
    check_onnxruntime(path, sample, expected)
    check_tract(path, sample, expected)
    c7 = next(c for c in generate.customers() if c["id"] == 7)
    prods = generate.products()
    Xc = np.array([[c7["age"], c7["avg_basket"], 1.0 if c7["sporty"] else 0.0,
                    p["category_id"], p["price"]] for p in prods], dtype=np.float32)
    scores = model.predict(Xc)
    best = np.argsort(-scores)[:5]
    print("  customer 7 (%s): top products %s; score range %.2f..%.2f" % (
        c7["name"], ", ".join("%s %.2f" % (prods[i]["name"], scores[i]) for i in best),
        scores.min(), scores.max()))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train and export the pgenrich demo models.")
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(HERE), "models"),
                    help="directory for fraud.onnx and recommend.onnx (default: models/)")
    args = ap.parse_args(argv)
    train_fraud(args.out_dir)
    train_recommend(args.out_dir)


if __name__ == "__main__":
    main()
