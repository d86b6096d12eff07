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
# A 2-D map coloured by dataset, and the mixing score: are neighbours from the cell's
# own dataset more often than chance (1 = datasets apart, 0 = mixed), SSL vs random?
cs map "$S" --model tiny-simclr --method pca --out "$DEMO/map.png"
cs map "$S" --model tiny-random --method pca --out "$DEMO/map-random.png" --format json > "$DEMO/map-random.json"
cs sql "$S" "SELECT c.dataset, round(avg((c.label = n.label)::INT), 3) AS neighbours_sharing_label FROM nn_simclr JOIN cells c USING (cell_id) JOIN cells n ON n.cell_id = nn_simclr.neighbor_id GROUP BY c.dataset ORDER BY c.dataset"

step "6. linear probe on the bm cell types (SSL model vs random-init baseline)"
cs probe "$S" --model tiny-simclr --label label --where "dataset = 'bm'" --min-count 5 --name bm-linear
cs probe "$S" --model tiny-random --label label --where "dataset = 'bm'" --min-count 5 --name bm-linear-random --format json > "$DEMO/bm-linear-random.json"
cs predict "$S" --head bm-linear --where "dataset = 'bm'"
# Which model should the store use? Both on the same folds of the mll_helmholtz cells:
# linear probe, kNN and attention-MIL (mean +- sd), the mixing score, and a bar chart.
# (A foundation model's file joins the same table: cytostore import-model, docs/models.md.)
cs compare "$S" --model tiny-simclr --model tiny-random --label label --where "dataset = 'mll_helmholtz'" --folds 3 --png "$DEMO/compare.png"

step "7. attention-MIL: a patient's genetic AML subtype from their bag of cells"
cs mil "$S" --model tiny-simclr --bag patient_id --label bag_label --folds 5 --name subtype
PATIENT=$("$BIN/cytostore" sql "$S" "SELECT patient_id FROM patient_predictions WHERE head = 'subtype' ORDER BY patient_id LIMIT 1" --format csv | tail -n 1)
cs explain "$S" --patient "$PATIENT" --head subtype --montage "$DEMO/explain.png"
# ...and which pixels of its top-attention cells drive the call (integrated gradients
# through the backbone and the head; red for the predicted subtype, blue against)
cs explain "$S" --patient "$PATIENT" --head subtype --pixels --cells 3 --montage "$DEMO/explain-pixels.png"

step "8. SQL over predictions that know their provenance: cell types across datasets, and a domain-shift warning"
# Train on bm, test on lmu, on the canonical cell_type (the classes both share): the
# accuracy printed is measured on lmu cells the head never saw.
cs probe "$S" --model tiny-simclr --label cell_type --train-where "dataset = 'bm'" --test-where "dataset = 'lmu'" --name celltype-bm-to-lmu
# Every prediction row says whether the head trained on the cell (in_training) and the
# fold that held it out; accuracy per row kind: training cells vs held-out lmu cells.
# (A 2-epoch tiny model on synthetic data does not transfer across datasets: the
# held-out accuracy says so, and every lmu cell is flagged out_of_distribution.)
cs sql "$S" "SELECT m.dataset, pr.in_training, pr.fold, count(*) AS cells, round(avg((pr.label = m.cell_type)::INT), 3) AS accuracy, round(avg(pr.train_similarity), 3) AS mean_train_similarity, sum(pr.out_of_distribution::INT) AS out_of_distribution FROM predictions pr JOIN cell_meta m USING (cell_id) WHERE pr.head = 'celltype-bm-to-lmu' GROUP BY ALL ORDER BY ALL"
# The bm head applied to mll_helmholtz (another dataset, no cell labels to check it
# against): predict warns, and the rows carry the out-of-distribution flag.
cs predict "$S" --head bm-linear --where "dataset = 'mll_helmholtz'"
cs sql "$S" "SELECT m.dataset, pr.in_training, count(*) AS cells, sum(pr.out_of_distribution::INT) AS out_of_distribution, round(avg(pr.train_similarity), 3) AS mean_train_similarity FROM predictions pr JOIN cell_meta m USING (cell_id) WHERE pr.head = 'bm-linear' GROUP BY ALL ORDER BY ALL"
# Per subtype: the MIL head's out-of-fold accuracy (each patient predicted by the fold
# that held it out).
cs sql "$S" "SELECT true_label AS subtype, count(*) AS patients, round(avg((label = true_label)::INT), 3) AS mil_out_of_fold_accuracy, round(avg(probability), 3) AS mil_confidence FROM patient_predictions WHERE head = 'subtype' AND fold IS NOT NULL GROUP BY 1 ORDER BY 1"
cs export "$S" "$DEMO/parquet"

step "9. curation: likely label errors, and which cells to annotate next"
# Each labelled bm cell scored 0-1 for how likely its label is wrong (out-of-fold
# probe + neighbours from other patients, cleanlab's confident learning); the top
# suspects beside their look-alikes in audit.png.
cs audit "$S" --model tiny-simclr --label label --where "dataset = 'bm'" --name bm-labels --top 5 --montage "$DEMO/audit.png"
cs sql "$S" "SELECT given_label, suggested_label, count(*) AS flagged FROM label_issues WHERE run = 'bm-labels' AND is_issue GROUP BY ALL ORDER BY flagged DESC LIMIT 5"
# 24 cells to annotate next: the most typical cell of 24 clusters, spread evenly
# over the datasets; their image paths in a CSV for the annotators.
cs select "$S" --model tiny-simclr -n 24 --strategy typicality --balance-by dataset --name next-24 --csv "$DEMO/to-annotate.csv" --montage "$DEMO/to-annotate.png"

step "10. tags, and keeping the store whole: list, check, tidy"
cs tag "$S" --where "dataset = 'bm' AND label = 'BLA'" --add review
cs search "$S" --model tiny-simclr --cell 1 -k 3 --where "list_contains(tags, 'review')"
cs ls "$S"
cs verify "$S"
cs gc "$S" --dry-run
# User SQL is sandboxed: this is refused (exit 2) and changes nothing.
cs sql "$S" "COPY cells TO 'elsewhere.csv'" || echo "(refused, as it should be)" >&2

printf '\nDemo done. Pictures: %s/search.png, %s/audit.png, %s/to-annotate.png, %s/map.png, %s/explain.png, %s/explain-pixels.png, %s/heads/*/confusion.png, %s/models/*/curves.png\n' "$DEMO" "$DEMO" "$DEMO" "$DEMO" "$DEMO" "$DEMO" "$S" "$S" >&2
# The web page over the demo store (not started here: it runs until Ctrl-C).
printf 'Browse it in a web browser (cells, look-alikes, patients, SQL, tags; docs/web.md):\n    .venv/bin/cytostore serve %s\n  then open http://127.0.0.1:8000/\n' "$S" >&2
