#!/usr/bin/env bash
# The static checks, run by `make test` before pytest (what they cover: docs/design/static-checks.md).
#   tools/lint.sh         check only: every check runs, the exit status is 1 when any of them found something
#   tools/lint.sh --fix   first apply ruff's safe fixes and the formatter, then check
# PYTHON picks the interpreter whose ruff and mypy run (default: the project's .venv, else python3); mypy reads
# the installed packages (torch, numpy, ...) of that same interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [[ "${1:-}" == "--fix" ]]; then
    # the fixes before the formatter: when it moves a `# noqa: F401` off the name it covers, --fix must not have
    # deleted that re-export; the check below reports the line instead
    "$PYTHON" -m ruff check --fix --quiet . || true
    "$PYTHON" -m ruff format --quiet .
fi

status=0
run() {
    echo "== $*"
    "$PYTHON" -m "$@" || status=1
}
run ruff format --check .   # the formatter's output is the house style (line length 120, pyproject.toml)
run ruff check --output-format concise .
run mypy                    # the files and the modules not yet covered: [tool.mypy] in pyproject.toml
exit $status
