# Sourced by scripts/test and scripts/demo: create .venv and install the package with its extras
# on a machine that has nothing but python3 (re-runs are quick: the stamp skips the install).
#
# The versions come from constraints.txt (a pinned lock of the environment the README's numbers were
# made in); HVS_NO_LOCK=1 installs without it (newest releases the extras allow).
#
# HVS_SOLO_LEARN_SRC=<folder | .tar.gz/.zip | pip requirement> also installs solo-learn (1.0.6;
# the registry's build is unusable) into the venv, once per source, and keeps its source at
# $venv/solo-learn-src, where the tests find main_pretrain.py (not part of the installed package).
# A relative path is taken from the directory the command is started in. Examples:
#   HVS_SOLO_LEARN_SRC=git+https://github.com/vturrisi/solo-learn@9187ea3   (needs git and internet)
#   HVS_SOLO_LEARN_SRC=../solo-learn            (a clone)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HVS_VENV:-$root/.venv}
py=${PYTHON:-python3}
stamp=$venv/.hvs-installed
lock=()
if [ -z "${HVS_NO_LOCK:-}" ] && [ -f "$root/constraints.txt" ]; then lock=(-c "$root/constraints.txt"); fi
_hvs_logged() {  # run "$@" quietly; show its output only if it fails
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
}
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$root/constraints.txt" -nt "$stamp" ]; then
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  echo "[hvs] installing hvs-plugins[all] into $venv" >&2
  _hvs_logged "$venv/bin/python" -m pip install --upgrade pip
  # torch/torchvision from the registry (CUDA build, runs on CPU); extras bring the hosts.
  _hvs_logged "$venv/bin/python" -m pip install "${lock[@]}" -e "$root[all]"
  "$venv/bin/python" -c "import torch, torchvision, lightly, mmselfsup, hvs_plugins" 
  touch "$stamp"
fi

# ------------------------------------------------------------------ solo-learn (optional)
_hvs_solo_learn() {  # $1: an existing folder or archive (absolute) or a pip requirement; $2: stamp text
  local src=$1 key=$2 vpy=$venv/bin/python dest=$venv/solo-learn-src tmp top
  echo "[hvs] installing solo-learn from $src into $venv" >&2
  # its setup.py imports pkg_resources (so no build isolation), and lightning 2.1.2 needs it at run time
  _hvs_logged "$vpy" -m pip install "setuptools<81" wheel
  rm -rf "$dest" "$venv/.hvs-solo-learn"
  if [ -d "$src" ]; then
    ln -s "$src" "$dest"
  else
    tmp=$(mktemp -d)
    if [ ! -f "$src" ]; then  # a pip requirement: bring its source (a VCS URL comes as a .zip)
      _hvs_logged "$vpy" -m pip download --no-deps --no-build-isolation --no-binary :all: -d "$tmp/dl" "$src"
      src=$(find "$tmp/dl" -maxdepth 1 -type f | head -n 1)
      [ -n "$src" ] || { echo "pip download $1 brought no file" >&2; return 1; }
    fi
    mkdir "$tmp/x"
    case "$src" in
      *.zip) "$vpy" -m zipfile -e "$src" "$tmp/x" ;;
      *.tar.gz | *.tgz | *.tar) tar -xf "$src" -C "$tmp/x" ;;
      *) echo "HVS_SOLO_LEARN_SRC: $src is neither a folder, a .tar.gz/.tgz/.tar/.zip nor a pip requirement" >&2
         return 1 ;;
    esac
    top=$tmp/x  # the archive's single top folder, or its root
    if [ ! -e "$top/setup.py" ] && [ "$(ls -A "$top" | wc -l)" -eq 1 ]; then top=$top/$(ls -A "$top"); fi
    [ -e "$top/setup.py" ] || [ -e "$top/pyproject.toml" ] || {
      echo "HVS_SOLO_LEARN_SRC: $1 holds no setup.py/pyproject.toml (is it solo-learn's source?)" >&2; return 1; }
    mv "$top" "$dest"
    rm -rf "$tmp"
  fi
  _hvs_logged "$vpy" -m pip install "${lock[@]}" --no-build-isolation "$dest/"
  _hvs_logged "$vpy" -c "import solo.methods"
  [ -f "$dest/main_pretrain.py" ] || echo "[hvs] $1 has no main_pretrain.py: the launcher tests need" \
    "HVS_SOLO_LEARN_ROOT=<a solo-learn checkout>" >&2
  printf '%s\n' "$key" > "$venv/.hvs-solo-learn"
}
if [ -n "${HVS_SOLO_LEARN_SRC:-}" ]; then
  solo_src=$HVS_SOLO_LEARN_SRC
  if [ -e "$solo_src" ]; then  # a local folder or archive: absolute, so the stamp names it exactly
    solo_src=$(cd "$(dirname "$solo_src")" && pwd)/$(basename "$solo_src")
    solo_key=$solo_src
    if [ -f "$solo_src" ]; then solo_key="$solo_src $(cksum < "$solo_src")"; fi
  else
    solo_key=$solo_src
  fi
  # once per source; again after the main install (it may have moved solo-learn's dependencies)
  if [ "$(cat "$venv/.hvs-solo-learn" 2>/dev/null)" != "$solo_key" ] || [ "$stamp" -nt "$venv/.hvs-solo-learn" ]; then
    _hvs_solo_learn "$solo_src" "$solo_key"
  fi
fi
export PATH="$venv/bin:$PATH"
cd "$root"
