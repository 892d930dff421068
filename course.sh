#!/usr/bin/env bash
# Set up the course's environment (once) and run one job:
#   bash course.sh pipeline   # the main job: base model -> SFT -> reward model -> REINFORCE, PPO, DPO, GRPO, best-of-n, into runs/pipeline
#   bash course.sh test       # the whole test suite: unit tests, exercise checks, every lesson under nbval
#   bash course.sh lab        # open the lessons in JupyterLab
#   bash course.sh constraints  # refresh constraints.txt from the installed environment (after testing it)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=.venv

setup() {
    # Re-install only when pyproject.toml or constraints.txt changed since the last install.
    local stamp="$VENV/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
    [ -f "$stamp" ] && return
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first, pinned: on this course's machines 2.13.0 is the small CPU build.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    # constraints.txt: the exact versions the course was last tested with, so a fresh clone gets a known
    # environment (pyproject.toml keeps the ranges, for installing the package into an environment of yours)
    "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev,real-model]"
    rm -f "$VENV"/.installed-* && touch "$stamp"
}

browser() {
    # The browser test (tests/test_browser.py) drives Debian's chromium; Playwright's own browser download
    # does not work offline. Installed here when this runs as root (as CI does); elsewhere the test says how.
    command -v chromium >/dev/null && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -q chromium >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } ||
            echo "course.sh: could not install chromium; the browser test will say what is missing" >&2
    fi
}

export HF_HUB_OFFLINE=1
case "${1:-}" in
    pipeline)
        setup
        shift
        "$VENV/bin/rlhf-course" pipeline --out runs/pipeline "$@"
        ;;
    test)
        setup
        browser
        shift
        # Unit tests and lessons in one run on both cores; loadscope keeps each notebook on one worker.
        # The cell timeout only guards against hangs: a lesson's first cell may build the cached SFT and
        # reward models (about 6 minutes alone) while another lesson runs on the other core.
        # Two workers on two cores: one torch thread each (the lessons' kernels inherit it). With the default
        # of two threads each, the workers oversubscribe the cores and a sample of the tests ran 2x slower.
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
        "$VENV/bin/ruff" format --check rlhf_course tests tools solutions exercises bench
        "$VENV/bin/ruff" check rlhf_course tests tools solutions bench  # exercises/: stubs, unfinished by design
        "$VENV/bin/python" -m pytest -n 2 --dist loadscope tests lessons \
            --nbval-lax --nbval-current-env --nbval-cell-timeout=1800 --durations=12 "$@"
        ;;
    lab)
        setup
        "$VENV/bin/jupyter" lab lessons
        ;;
    constraints)
        setup
        { echo "# The versions the course was last tested with; course.sh installs them. Refresh: bash course.sh constraints"
          "$VENV/bin/python" -m pip freeze --exclude-editable | sed 's/+cpu$//'; } > constraints.txt
        ;;
    *)
        echo "usage: bash course.sh pipeline|test|lab|constraints" >&2
        exit 2
        ;;
esac
