# Shared by scripts/demo and scripts/test: a virtualenv with gitbake installed (editable).
# Sourced, not run. Honours $GITBAKE_VENV (default: .venv in the repository).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GITBAKE_VENV:-$REPO_ROOT/.venv}"
EXTRAS="${GITBAKE_EXTRAS:-train,deepspeed,dev}"

pick_python() {
  for py in python3.12 python3.11 python3.10 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      echo "$py"; return 0
    fi
  done
  echo "gitbake needs Python >= 3.10" >&2; return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$(pick_python)" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# torch is installed first, and only when missing, pinned to the CPU wheel that satisfies our range:
# a bare `torch` requirement would pull a multi-GB CUDA build.
if [[ ",$EXTRAS," == *",train,"* ]] && ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  echo "==> installing torch (CPU)"
  "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
fi
echo "==> installing gitbake[$EXTRAS] into $VENV"
"$PY" -m pip install -q --disable-pip-version-check -c "$REPO_ROOT/scripts/constraints-dev.txt" -e "$REPO_ROOT[$EXTRAS]"
export PATH="$VENV/bin:$PATH"
# an editable install leaves out the wheel's data files: put the man pages where a wheel install would,
# so `git bake --help` (git runs `man git-bake`) finds them next to this git-bake
mkdir -p "$VENV/share/man/man1" && cp "$REPO_ROOT"/man/man1/*.1 "$VENV/share/man/man1/"
# an editable install compiles nothing of gitbake: without its bytecode (PYTHONDONTWRITEBYTECODE set, or a
# fresh clone) every `git bake` process would compile the modules it imports again
PYTHONDONTWRITEBYTECODE= "$PY" -m compileall -q "$REPO_ROOT/gitbake" >/dev/null
