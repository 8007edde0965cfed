#!/bin/bash
# Queue the sharded clustering and its merge:  ./submit_cluster.sh run/embeddings.h5 run/partitions.h5 [SHARDS]
# The merge starts only once every shard succeeded (afterok). Re-submitting after a failure is
# cheap: shards that are already written with the same key are skipped ("is up to date").
set -euo pipefail
EMB="$1"; OUT="$2"; SHARDS="${3:-10}"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p logs
array=$(sbatch --parsable --array="0-$((SHARDS - 1))" --export="ALL,EMB=$EMB,OUT=$OUT" "$here/cluster_shards.sbatch")
sbatch --dependency="afterok:${array}" --export="ALL,OUT=$OUT" "$here/cluster_merge.sbatch"
