#!/usr/bin/env bash
# Rebuilds the out-of-class ("not confident") table of docs/router.md: trains the demo
# router with and without calibration, imports and calibrates the paper's router, and
# measures each on data/ood (Spanish, Italian) and on the in-domain held-out sources.
#
#   bash scripts/router_ood_table.sh [OUT_DIR]      (default runs/router-ood; ~15 min on 2 cores)
#
# Needs a built `mome` (cargo build -p mome-cli) and ../shared/seed/reference_router_params.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/router-ood}
MOME=${MOME:-target/debug/mome}
TOK=data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json
PARAMS=../shared/seed/reference_router_params.json
mkdir -p "$OUT"
DEMO=(--jsonl data/demo/de.jsonl --jsonl data/demo/en.jsonl --jsonl data/demo/fr.jsonl --jsonl data/demo/py.jsonl)
INDOMAIN=(--input data/demo/de.jsonl --input data/demo/en.jsonl --input data/demo/fr.jsonl --input data/demo/py.jsonl)

train() { # name, extra flags...
    local name=$1; shift
    [ -f "$OUT/$name.json" ] || "$MOME" router train "${DEMO[@]}" --tokenizer "$TOK" "$@" --out "$OUT/$name.json" > "$OUT/$name.train.json"
}
train demo
train demo_cal99 --calibrate 0.99
train demo_cal99t --calibrate 0.99 --temperature-scaling
train demo_cal99L --calibrate 0.99 --by-length
train demo_cal99Lt --calibrate 0.99 --by-length --temperature-scaling
"$MOME" router import-sklearn --params "$PARAMS" --out "$OUT/seed.json" > /dev/null
"$MOME" router calibrate --router "$OUT/seed.json" --tokenizer "$TOK" "${INDOMAIN[@]}" --target 0.99 --out "$OUT/seed_cal99.json" > /dev/null
"$MOME" router calibrate --router "$OUT/seed.json" --tokenizer "$TOK" "${INDOMAIN[@]}" --target 0.99 --by-length --out "$OUT/seed_cal99L.json" > /dev/null
"$MOME" router calibrate --router "$OUT/seed.json" --tokenizer "$TOK" "${INDOMAIN[@]}" --target 0.99 --by-length --temperature-scaling --out "$OUT/seed_cal99Lt.json" > /dev/null

ROUTERS=(demo demo_cal99 demo_cal99t demo_cal99L demo_cal99Lt seed seed_cal99 seed_cal99L seed_cal99Lt)
for r in "${ROUTERS[@]}"; do
    "$MOME" router ood --router "$OUT/$r.json" --tokenizer "$TOK" --input data/ood/es.jsonl --input data/ood/it.jsonl --out "$OUT/ood_$r.json" > /dev/null
    "$MOME" router ood --router "$OUT/$r.json" --tokenizer "$TOK" --code-labels py \
        --input data/demo/heldout/de.jsonl --input data/demo/heldout/en.jsonl \
        --input data/demo/heldout/fr.jsonl --input data/demo/heldout/py.jsonl --out "$OUT/ind_$r.json" > /dev/null
done
python3 - "$OUT" "${ROUTERS[@]}" <<'PY'
import json, sys
out, routers = sys.argv[1], sys.argv[2:]
f = lambda d: "%.3f (%d)" % (d["not_confident_fraction"], d["n"])
rows = ["| router | threshold | T | OOD short: not confident (n) | OOD 1024-token: not confident (n) | in-domain held-out short: not confident (n) | in-domain held-out 1024: not confident (n) |",
        "|---|---|---|---|---|---|---|"]
for r in routers:
    o = json.load(open(f"{out}/ood_{r}.json")); i = json.load(open(f"{out}/ind_{r}.json"))
    thr = "%.4f" % o["threshold"] + (" + %d bins" % len(o["thresholds_by_features"]) if o["thresholds_by_features"] else "")
    rows.append(f"| {r} | {thr} | {o['temperature']:.3f} | {f(o['short']['all'])} | {f(o['long_1024']['all'])} | {f(i['short']['all'])} | {f(i['long_1024']['all'])} |")
table = "\n".join(rows) + "\n"
open(f"{out}/ood_table.md", "w").write(table)
print(table)
PY
