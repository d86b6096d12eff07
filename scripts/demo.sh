#!/usr/bin/env bash
# The demo: everything cytostore does, on its built-in synthetic TCIA-shaped data.
set -euo pipefail
DEMO=${DEMO:-demo-out}
BIN=${BIN:-.venv/bin}
cs() { echo "+ cytostore $*" >&2; "$BIN/cytostore" "$@"; }

rm -rf "$DEMO"
mkdir -p "$DEMO"
echo "== 1. synthetic TCIA-shaped data (lmu, mll_helmholtz, bm layouts) ==" >&2
cs synth "$DEMO/data" --cells-per-dataset 400 --patients-per-subtype 4 --seed 0
echo "== 2. ingest into a store (DuckDB catalog) ==" >&2
cs ingest "$DEMO/store" "$DEMO/data"
cs info "$DEMO/store"
echo "== 3. SQL over the catalog ==" >&2
cs sql "$DEMO/store" "SELECT dataset, count(*) AS cells, count(DISTINCT label) AS labels, count(DISTINCT patient_id) AS patients FROM cell_meta GROUP BY dataset ORDER BY dataset"
cs sql "$DEMO/store" "SELECT bag_label, count(DISTINCT patient_id) AS patients, round(avg(age), 1) AS mean_age FROM cell_meta WHERE dataset = 'mll_helmholtz' GROUP BY bag_label ORDER BY bag_label"
