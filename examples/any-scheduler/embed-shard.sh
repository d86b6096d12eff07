#!/usr/bin/env bash
# Embed shard I of N on any scheduler (PBS/Torque, LSF, SGE, Kubernetes jobs, or a
# loop over ssh): give each job its own I (1..N), then merge. Shards may run at the
# same time on one shared store and can be merged as they finish.
#
#   for i in $(seq 1 8); do qsub -v STORE=/shared/cyto/store,MODEL=r50-dino,I=$i,N=8 examples/any-scheduler/embed-shard.sh; done
#   I=3 N=8 STORE=... MODEL=... examples/any-scheduler/embed-shard.sh     # by hand
set -euo pipefail

STORE=${STORE:?set STORE to the store folder}
MODEL=${MODEL:?set MODEL to a registered model}
I=${I:?set I to the shard of this job (1..N)}
N=${N:?set N, the number of shards}
EMBED_ARGS=${EMBED_ARGS:-}

# shellcheck disable=SC2086  # EMBED_ARGS is a list of options
cytostore embed "$STORE" --model "$MODEL" --shard "$I/$N" $EMBED_ARGS
cytostore merge "$STORE" --model "$MODEL" --when-ready
