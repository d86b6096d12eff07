#!/usr/bin/env bash
# The demo: everything cytostore does, on its built-in synthetic TCIA-shaped data.
# Run by `make demo`; every step is a plain `cytostore` command you can copy.
set -euo pipefail
DEMO=${DEMO:-demo-out}
BIN=${BIN:-.venv/bin}
S="$DEMO/store"
cs() { echo "+ cytostore $*" >&2; "$BIN/cytostore" "$@"; }
step() { printf '\n== %s ==\n' "$*" >&2; }

rm -rf "$DEMO"
mkdir -p "$DEMO"
step "1. synthetic TCIA-shaped data (the real lmu, mll_helmholtz and bm layouts)"
cs synth "$DEMO/data" --cells-per-dataset 400 --patients-per-subtype 5 --seed 0

step "2. ingest into a store (DuckDB catalog) and look at it"
cs ingest "$S" "$DEMO/data"
cs info "$S"
cs sql "$S" "SELECT dataset, count(*) AS cells, count(DISTINCT label) AS labels, count(DISTINCT patient_id) AS patients FROM cell_meta GROUP BY dataset ORDER BY dataset"
cs sql "$S" "SELECT bag_label, count(DISTINCT patient_id) AS patients, round(avg(age), 1) AS mean_age FROM cell_meta WHERE dataset = 'mll_helmholtz' GROUP BY bag_label ORDER BY bag_label"

step "3. self-supervised pretraining (SimCLR, tiny CNN, all three datasets balanced) + a random-init baseline"
cs pretrain "$S" --name tiny-simclr --method simclr --backbone tiny --epochs 2
cs pretrain "$S" --name tiny-random --backbone tiny --method none
cs models "$S"

step "4. embed every cell into a vector file + FAISS index"
cs embed "$S" --model tiny-simclr
cs embed "$S" --model tiny-random

step "5. similarity search with a SQL filter, and a montage"
cs search "$S" --model tiny-simclr --cell 1 -k 5 --where "dataset = 'bm'" --montage "$DEMO/search.png"
cs neighbors "$S" --model tiny-simclr -k 10 --into nn_simclr
cs sql "$S" "SELECT c.dataset, round(avg((c.label = n.label)::INT), 3) AS neighbours_sharing_label FROM nn_simclr JOIN cells c USING (cell_id) JOIN cells n ON n.cell_id = nn_simclr.neighbor_id GROUP BY c.dataset ORDER BY c.dataset"

step "6. linear probe on the bm cell types (SSL model vs random-init baseline)"
cs probe "$S" --model tiny-simclr --label label --where "dataset = 'bm'" --min-count 5 --name bm-linear
cs probe "$S" --model tiny-random --label label --where "dataset = 'bm'" --min-count 5 --name bm-linear-random --format json > "$DEMO/bm-linear-random.json"
cs predict "$S" --head bm-linear --where "dataset = 'bm'"

step "7. attention-MIL: a patient's genetic AML subtype from their bag of cells"
cs mil "$S" --model tiny-simclr --bag patient_id --label bag_label --folds 5 --name subtype
PATIENT=$("$BIN/cytostore" sql "$S" "SELECT patient_id FROM patient_predictions WHERE head = 'subtype' ORDER BY patient_id LIMIT 1" --format csv | tail -n 1)
cs explain "$S" --patient "$PATIENT" --head subtype --montage "$DEMO/explain.png"

step "8. SQL over predictions: predicted blast-like fraction per patient vs. subtype"
cs predict "$S" --head bm-linear --where "dataset = 'mll_helmholtz'"
cs sql "$S" "WITH per_patient AS (SELECT m.patient_id, m.bag_label, avg((pr.label IN ('BLA', 'PMO'))::INT) AS blast_fraction FROM predictions pr JOIN cell_meta m USING (cell_id) WHERE pr.head = 'bm-linear' AND m.dataset = 'mll_helmholtz' GROUP BY ALL) SELECT pp.bag_label AS subtype, count(*) AS patients, round(avg(pp.blast_fraction), 3) AS predicted_blast_fraction, round(avg((mil.label = pp.bag_label)::INT), 3) AS mil_out_of_fold_accuracy, round(avg(mil.probability), 3) AS mil_confidence FROM per_patient pp JOIN patient_predictions mil ON mil.patient_id = pp.patient_id AND mil.head = 'subtype' GROUP BY pp.bag_label ORDER BY pp.bag_label"
cs export "$S" "$DEMO/parquet"

step "9. tags, and keeping the store whole: list, check, tidy"
cs tag "$S" --where "dataset = 'bm' AND label = 'BLA'" --add review
cs search "$S" --model tiny-simclr --cell 1 -k 3 --where "list_contains(tags, 'review')"
cs ls "$S"
cs verify "$S"
cs gc "$S" --dry-run
# User SQL is sandboxed: this is refused (exit 2) and changes nothing.
cs sql "$S" "COPY cells TO 'elsewhere.csv'" || echo "(refused, as it should be)" >&2

printf '\nDemo done. Pictures: %s/search.png, %s/explain.png, %s/heads/*/confusion.png, %s/models/*/curves.png\n' "$DEMO" "$DEMO" "$S" "$S" >&2
