#!/usr/bin/env bash
# Create .venv and install the service with the default pipeline's weights.
# With --test, also install what the test suite needs (Python packages and, as root,
# Debian's espeak-ng, nginx and chromium). Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[[ "${1:-}" == "--test" ]] && with_tests=1

python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch first, from TORCH_INDEX_URL when set (for example PyTorch's CPU wheel index),
# so that the dependencies below find it installed and pull no other build.
if ! .venv/bin/python -c "import torch, torchvision, torchaudio" 2>/dev/null; then
    "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.1
fi

if (( with_tests )); then
    "${pip[@]}" -e ".[test]"
else
    "${pip[@]}" -e .
fi
# resemblyzer ships the GE2E speaker-encoder weights; its own dependencies
# (webrtcvad among them) are not needed, because the service only reads the file.
"${pip[@]}" --no-deps resemblyzer==0.1.4

if (( with_tests )); then
    missing=()
    for tool in espeak-ng:espeak-ng nginx:nginx-light chromium:chromium chromedriver:chromium-driver wrk:wrk; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
    done
    # The only CMYK ICC profile in Debian's archive, for the CMYK JPEG test.
    [[ -f /usr/share/color/icc/ghostscript/default_cmyk.icc ]] || missing+=(libgs-common)
    if (( ${#missing[@]} )); then
        if [[ $(id -u) -ne 0 ]]; then
            echo "setup: install these Debian packages first: ${missing[*]}" >&2
            exit 1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi
