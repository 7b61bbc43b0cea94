#!/usr/bin/env bash
# The targeted checks of the megatron-core releases between CI's two ends (docs/compatibility.md):
# each version's wheel is unpacked into a temporary folder and put first on PYTHONPATH of the
# Python 3.12 venv that CI builds (.venv312), so torch and everything else stay the same.
#   bash scripts/check_mcore_versions.sh                  # 0.17.1 and 0.18.2
#   bash scripts/check_mcore_versions.sh 0.17.0 0.18.0    # other releases
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv312/bin/python}
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(0.17.1 0.18.2)
tests=(tests/unit/parallel/test_mcore_compat.py tests/unit/rollout tests/distributed/test_generation.py
       tests/distributed/test_generation_backends.py tests/distributed/test_checkpoint.py tests/e2e/test_train.py)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for version in "${versions[@]}"; do
  "$PY" -m pip download -q --no-deps -d "$work/wheels" "megatron-core==$version"
  mkdir -p "$work/$version"
  "$PY" -m zipfile -e "$work"/wheels/megatron_core-"$version"-*.whl "$work/$version"
  echo "== megatron-core $version"
  PYTHONPATH="$work/$version" "$PY" -c "import megatron.core as m; assert m.__version__ == '$version', m.__version__"
  PYTHONPATH="$work/$version" "$PY" -m pytest -m "not slow" -q -p no:cacheprovider "${tests[@]}" || failed+=("$version")
done
[ ${#failed[@]} -eq 0 ] || { echo "failed on megatron-core ${failed[*]}"; exit 1; }
