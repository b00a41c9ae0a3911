#!/usr/bin/env bash
# b-hive environment set-up. Usage (bash):  source setup.sh
#
# - without an active virtualenv/conda environment, creates <repo>/.venv and uses it;
# - installs the dependencies of pyproject.toml once (again only when pyproject.toml changes);
# - exports B_HIVE_DIR, DATA_PATH (default <repo>/output), LAW_HOME, LAW_CONFIG_FILE,
#   PYTHONPATH; sources a git-ignored local_setup.sh for user overrides (e.g. DATA_PATH on
#   /eos); enables law's bash completion and indexes the tasks.
# Variables read: BHIVE_PYTHON (interpreter for the venv, default python3.11 or python3),
# BHIVE_TORCH_SPEC (pip spec used when torch is missing, default torch==2.13.0).

_bhive_setup() {
    local repo
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" || return 1
    export B_HIVE_DIR="${repo}"

    # 1. python environment
    if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
        if [ ! -x "${repo}/.venv/bin/python" ]; then
            local py="${BHIVE_PYTHON:-}"
            if [ -z "${py}" ]; then
                py="$(command -v python3.11 || command -v python3)" || {
                    echo "b-hive: no python3 found; set BHIVE_PYTHON" >&2; return 1; }
            fi
            echo "b-hive: creating ${repo}/.venv with $("${py}" --version 2>&1)"
            "${py}" -m venv "${repo}/.venv" || return 1
        fi
        # shellcheck disable=SC1091
        source "${repo}/.venv/bin/activate" || return 1
    fi

    # 2. dependencies, installed once per version of pyproject.toml
    local prefix stamp want
    prefix="$(python -c 'import sys; print(sys.prefix)')" || return 1
    stamp="${prefix}/.b-hive-installed"
    want="$(sha256sum "${repo}/pyproject.toml" | cut -c1-16)"
    if [ "$(cat "${stamp}" 2>/dev/null)" != "${want}" ]; then
        echo "b-hive: installing dependencies into ${prefix} (first time only, ~1-3 minutes)"
        python -m pip install --quiet --upgrade pip || return 1
        if ! python -c "import torch" >/dev/null 2>&1; then
            # shellcheck disable=SC2086
            python -m pip install --quiet ${BHIVE_TORCH_SPEC:-torch==2.13.0} || return 1
        fi
        python -m pip install --quiet "${repo}" || return 1
        echo "${want}" > "${stamp}"
    fi

    # 3. environment variables
    case ":${PYTHONPATH:-}:" in
        *":${repo}:"*) ;;
        *) export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}" ;;
    esac
    export LAW_HOME="${repo}/.law"
    export LAW_CONFIG_FILE="${repo}/law.cfg"
    export DATA_PATH="${DATA_PATH:-${repo}/output}"
    if [ -f "${repo}/local_setup.sh" ]; then
        # shellcheck disable=SC1091
        source "${repo}/local_setup.sh"
    fi
    mkdir -p "${DATA_PATH}"

    # 4. law: bash completion and task index
    # shellcheck disable=SC1090
    source "$(law completion)" || return 1
    law index --quiet >/dev/null || { echo "b-hive: 'law index' failed" >&2; return 1; }
    echo "b-hive ready: DATA_PATH=${DATA_PATH}"
}

_bhive_setup "$@"
