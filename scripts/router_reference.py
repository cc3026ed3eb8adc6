#!/usr/bin/env python3
"""Side-by-side bench: the paper's scikit-learn router vs `mome router bench`.

Creates a temporary venv, installs scikit-learn + numpy, rebuilds the sklearn
pipeline (TfidfVectorizer + LogisticRegression) from reference_router_params.json,
checks it reproduces the stored sample probabilities, times one-call-per-sequence
predict_proba and whole-batch predict_proba on the same inputs as the Rust bench
(run in the same invocation), and prints the ratios ours/sklearn.

usage: scripts/router_reference.py PARAMS.json MOME_BINARY [--reps N]
"""
import json, os, subprocess, sys, tempfile, venv

def inner(params_path, mome, reps):
    import numpy as np, time
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    p = json.load(open(params_path))
    t = p["tfidf"]; lr = p["logistic_regression"]
    vec = TfidfVectorizer(token_pattern=t["token_pattern"], lowercase=t["lowercase"], norm=t["norm"],
                          use_idf=True, smooth_idf=t["smooth_idf"], sublinear_tf=t["sublinear_tf"],
                          vocabulary=t["vocabulary"], dtype=np.float64)
    vec.fit(["10"])  # sets the fixed vocabulary; idf is overwritten below
    vec.idf_ = np.array(t["idf"])
    clf = LogisticRegression(C=lr["C"])
    clf.classes_ = np.array(lr["classes"]); clf.coef_ = np.array(lr["coef"]); clf.intercept_ = np.array(lr["intercept"])
    drop = set(p["input_to_string"]["drop_ids"])
    to_str = lambda ids: " ".join(str(i) for i in ids if i not in drop)
    seqs = [s["token_ids"] for s in p["samples"]]
    probs = clf.predict_proba(vec.transform([to_str(s) for s in seqs]))
    err = float(np.abs(probs - np.array([s["probabilities"] for s in p["samples"]])).max())
    n = len(seqs) * reps
    t0 = time.perf_counter()
    for _ in range(reps):
        for s in seqs:
            clf.predict_proba(vec.transform([to_str(s)]))
    single = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(reps):
        clf.predict_proba(vec.transform([to_str(s) for s in seqs]))
    batch = n / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:
        rp = os.path.join(d, "router.json")
        subprocess.run([mome, "router", "import-sklearn", "--params", params_path, "--out", rp], check=True, stdout=subprocess.DEVNULL)
        out = subprocess.run([mome, "router", "bench", "--router", rp, "--inputs", params_path, "--reps", str(reps * 10)],
                             check=True, capture_output=True, text=True).stdout
    ours = json.loads(out.strip().splitlines()[-1])
    print(json.dumps({"sequences": len(seqs), "sklearn_max_abs_error_vs_samples": err,
                      "sklearn_per_call_seq_per_s": single, "sklearn_batch_seq_per_s": batch,
                      "mome_per_call_seq_per_s": ours["per_call_seq_per_s"], "mome_batch_seq_per_s": ours["batch_seq_per_s"],
                      "ratio_per_call": ours["per_call_seq_per_s"] / single, "ratio_batch": ours["batch_seq_per_s"] / batch}, indent=1))

def main():
    args = sys.argv[1:]
    if args and args[0] == "--inner":
        return inner(args[1], args[2], int(args[3]))
    if len(args) < 2:
        sys.exit(__doc__)
    reps = int(args[args.index("--reps") + 1]) if "--reps" in args else 5
    with tempfile.TemporaryDirectory() as d:
        venv.create(d, with_pip=True)
        py = os.path.join(d, "bin", "python")
        subprocess.run([py, "-m", "pip", "install", "-q", "scikit-learn", "numpy"], check=True)
        subprocess.run([py, os.path.abspath(__file__), "--inner", os.path.abspath(args[0]), os.path.abspath(args[1]), str(reps)], check=True)

if __name__ == "__main__":
    main()
