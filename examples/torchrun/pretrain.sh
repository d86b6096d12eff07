#!/usr/bin/env bash
# Pretrain on N GPUs of one machine, or on several machines, with torchrun.
#
#   one machine, 4 GPUs:
#       NPROC=4 examples/torchrun/pretrain.sh /data/cyto/store
#   two machines (run on each, NODE_RANK 0 on the one named in MASTER_ADDR):
#       NNODES=2 NODE_RANK=0 MASTER_ADDR=gpu01 NPROC=4 examples/torchrun/pretrain.sh /shared/cyto/store
#       NNODES=2 NODE_RANK=1 MASTER_ADDR=gpu01 NPROC=4 examples/torchrun/pretrain.sh /shared/cyto/store
#
# torchrun exits non-zero when any process fails (and stops the others).
set -euo pipefail

STORE=${1:?usage: pretrain.sh STORE}
NPROC=${NPROC:-4}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
NAME=${NAME:-r50-dino}
PRETRAIN_ARGS=${PRETRAIN_ARGS:---method dino --backbone resnet50 --epochs 100}

# shellcheck disable=SC2086  # PRETRAIN_ARGS is a list of options
exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    -m cytostore pretrain "$STORE" --name "$NAME" \
    --devices "$NPROC" --num-nodes "$NNODES" --strategy ddp $PRETRAIN_ARGS
