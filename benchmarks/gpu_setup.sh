# Sourced by the GPU benchmark scripts, from the repository root with .carry carried: installs the carried wheels,
# enters the carried code, and tars /tmp/res into $OUT/results.tgz every 20 s (the caller kills $TAR and tars once
# more at the end), so a run cut short still returns what it has. Sets C (the carry folder), R (results folder).
export PYTHONUNBUFFERED=1
C=$PWD/.carry
R=/tmp/res
mkdir -p $R
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $C/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$C/src
cd $C/src || exit 1
(while sleep 20; do tar czf $OUT/results.tgz -C /tmp res 2>/dev/null; done) &
TAR=$!
nvidia-smi -L > $R/gpu.txt; nproc >> $R/gpu.txt
