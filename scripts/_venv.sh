# Sourced by scripts/test and scripts/demo: create .venv and install the package with its extras
# on a machine that has nothing but python3 (re-runs are quick: the stamp skips the install).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HVS_VENV:-$root/.venv}
py=${PYTHON:-python3}
stamp=$venv/.hvs-installed
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "WARNING: Location" || true
  # torch/torchvision from the registry (CUDA build, runs on CPU); extras bring the hosts.
  "$venv/bin/python" -m pip install -q -e "$root[all]" 2>&1 | grep -v -E "WARNING: Location|BuildBackendWarning|^\s*$" || true
  "$venv/bin/python" -c "import torch, torchvision, lightly, mmselfsup, hvs_plugins" 
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
