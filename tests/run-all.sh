#!/usr/bin/env bash
# The zeoraid test command (README: `bash tests/run-all.sh`).
#
#   1. Python environment: .venv at the crate root with the pinned stock
#      ZODB/ZEO from tests/interop/requirements.txt (created or repaired only
#      when something is missing, so a second run skips this in a second).
#   2. etcd (tests/etcd.rs runs the HA client against real members): the
#      one on PATH, else the Debian package etcd-server is installed (as
#      root, or with `sudo -n`) without letting its service start.
#   3. cargo build --bins
#   4. cargo test, with ZEORAID_PYTHON=.venv/bin/python and ZEORAID_ETCD
#      exported: Rust tests use them to start Python runzeo servers, Python
#      ZEO clients and etcd members; the
#      array's seeded simulations on their own, their seed counts shown; then
#      cargo test --no-default-features (the embedder's core) and cargo doc
#      with warnings as errors.
#   5. The interop suite (tests/interop/run.py): stock ZEO.ClientStorage and
#      ZODB's storage conformance tests against target/debug/zeoraid.
#
# Every stage runs even if an earlier test stage failed (a failed build
# stops everything); the exit code is non-zero if anything failed.  The
# last line is the total over cargo test and the interop suite:
# "N passed, N failed, N skipped".
#
# Environment:
#   ZEORAID_BOOTSTRAP_PYTHON  interpreter that creates .venv (default python3)
#   ZEORAID_ETCD              the etcd binary (default: etcd on PATH, installed
#                             if missing)
#   CARGO_TARGET_DIR          honoured for finding the zeoraid binary
#   ZEORAID_INTEROP_*         passed through to tests/interop/run.py
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/.venv
REQUIREMENTS=$ROOT/tests/interop/requirements.txt
BOOTSTRAP_PYTHON=${ZEORAID_BOOTSTRAP_PYTHON:-python3}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOG_DIR=$TARGET_DIR/run-all
mkdir -p "$LOG_DIR"

section() {
    printf '\n==================== %s ====================\n' "$*"
}

die() {
    printf 'run-all: FAILED: %s\n' "$*" >&2
    exit 1
}

started=$SECONDS

# ---------------------------------------------------------------------------
section "python environment (.venv)"

# True if .venv's python runs and has every pinned name==version installed.
venv_satisfied() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$REQUIREMENTS" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version
missing = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, pinned = line.partition("==")
    try:
        if version(name.strip()) != pinned.strip():
            missing.append(line)
    except PackageNotFoundError:
        missing.append(line)
if missing:
    print("not installed as pinned:", ", ".join(missing))
    sys.exit(1)
EOF
}

if venv_satisfied; then
    echo ".venv is up to date with $(basename "$REQUIREMENTS")"
else
    command -v "$BOOTSTRAP_PYTHON" >/dev/null 2>&1 \
        || die "$BOOTSTRAP_PYTHON not found: the interop suite needs CPython 3 (Debian: apt-get install python3 python3-venv)"
    # A venv whose interpreter no longer runs (moved, python upgraded) is
    # rebuilt from scratch; an intact one only gets the missing packages.
    if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        echo "removing broken $VENV"
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV with $("$BOOTSTRAP_PYTHON" --version 2>&1) ($(command -v "$BOOTSTRAP_PYTHON"))"
        "$BOOTSTRAP_PYTHON" -m venv "$VENV" \
            || die "cannot create $VENV with $BOOTSTRAP_PYTHON -m venv (Debian: apt-get install python3-venv)"
    fi
    echo "installing $(basename "$REQUIREMENTS") into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
        --quiet -r "$REQUIREMENTS" \
        || die "pip install -r $REQUIREMENTS failed"
    venv_satisfied || die "$VENV still lacks the pinned packages after pip install"
fi
"$VENV/bin/python" -c 'import sys, ZODB, ZEO, msgpack; print("python", sys.version.split()[0], "- ZODB/ZEO importable")' \
    || die "$VENV/bin/python cannot import ZODB, ZEO and msgpack"

export ZEORAID_PYTHON=$VENV/bin/python

# ---------------------------------------------------------------------------
section "etcd (tests/etcd.rs)"

ETCD_PACKAGE=etcd-server
POLICY_RC_D=/usr/sbin/policy-rc.d

# Installs $ETCD_PACKAGE with apt-get, as root or through `sudo -n`. The
# package's maintainer scripts would start (and enable) a system etcd on
# 127.0.0.1:2379: a policy-rc.d that answers 101 ("action forbidden",
# honoured by invoke-rc.d and deb-systemd-invoke) keeps them from starting
# it, and a service that started anyway (a policy-rc.d already there that
# allowed it) is stopped.
install_etcd() {
    local -a as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 \
            || die "etcd not found, and not root and no sudo to install $ETCD_PACKAGE: install etcd 3.4+ (Debian: apt-get install $ETCD_PACKAGE) or set ZEORAID_ETCD"
        as_root=(sudo -n)
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "etcd not found and no apt-get to install it: install etcd 3.4+ and put it on PATH, or set ZEORAID_ETCD to the binary"
    local policy=$POLICY_RC_D ours=0 was_active=0
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
        was_active=1
    fi
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# run-all.sh: no service starts while it installs %s\nexit 101\n' "$ETCD_PACKAGE" \
            | "${as_root[@]}" tee "$policy" >/dev/null \
            && "${as_root[@]}" chmod 755 "$policy" \
            || die "cannot write $policy (as root${as_root:+ with ${as_root[*]}}): run as root or give passwordless sudo, or install $ETCD_PACKAGE yourself"
        ours=1
    fi
    echo "installing $ETCD_PACKAGE with ${as_root[*]:+${as_root[*]} }apt-get"
    local ok=1
    # A fresh machine has no package lists; an offline one may have some.
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        || echo "apt-get update failed; trying the install with the lists there are"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$ETCD_PACKAGE" \
        || ok=0
    [ "$ours" -eq 0 ] || "${as_root[@]}" rm -f "$policy"
    if [ "$was_active" -eq 0 ] && command -v systemctl >/dev/null 2>&1 \
            && systemctl is-active --quiet etcd 2>/dev/null; then
        echo "stopping and disabling the etcd service the package started"
        "${as_root[@]}" systemctl stop etcd || true
        "${as_root[@]}" systemctl disable --quiet etcd || true
    fi
    [ "$ok" -eq 1 ] || die "apt-get install $ETCD_PACKAGE failed${as_root:+ (with ${as_root[*]}: needs passwordless sudo)}: install etcd 3.4+ yourself or set ZEORAID_ETCD"
}

if [ -n "${ZEORAID_ETCD:-}" ]; then
    echo "ZEORAID_ETCD=$ZEORAID_ETCD (given)"
elif command -v etcd >/dev/null 2>&1; then
    ZEORAID_ETCD=$(command -v etcd)
else
    echo "etcd is not on PATH"
    install_etcd
    command -v etcd >/dev/null 2>&1 || die "$ETCD_PACKAGE is installed but etcd is still not on PATH"
    ZEORAID_ETCD=$(command -v etcd)
fi
# All of it, then the first line: `| head -1` could end etcd with SIGPIPE
# and fail the pipeline now and then.
etcd_version=$("$ZEORAID_ETCD" --version 2>&1) \
    || die "$ZEORAID_ETCD --version failed: $etcd_version"
etcd_version=${etcd_version%%$'\n'*}
echo "$ZEORAID_ETCD: $etcd_version"
export ZEORAID_ETCD

# ---------------------------------------------------------------------------
section "cargo build --bins"
cargo build --bins || die "cargo build --bins failed"
ZEORAID_BIN=$TARGET_DIR/debug/zeoraid
[ -x "$ZEORAID_BIN" ] || die "cargo build produced no $ZEORAID_BIN"

status=0

# ---------------------------------------------------------------------------
section "cargo test (ZEORAID_PYTHON=$ZEORAID_PYTHON, ZEORAID_ETCD=$ZEORAID_ETCD)"
cargo_log=$LOG_DIR/cargo-test.log
: > "$cargo_log"
cargo_status=0
# Unit, integration, example and doc tests with the default features;
# --no-fail-fast: a failing test binary does not keep the others from
# running (the totals count every test).
# The seeded simulations of the array run in the next section, where their
# seed counts are shown.
cargo test --no-fail-fast -- --skip raid::tests::sim 2>&1 | tee -a "$cargo_log" || cargo_status=1

section "the array's seeded simulations (src/raid/tests/sim.rs, sim_backends.rs)"
# Their own lines (how many seeds and steps, commits, faults) are printed;
# a failing seed prints itself and how to replay it.
cargo test --no-fail-fast --lib raid::tests::sim -- --show-output 2>&1 | tee -a "$cargo_log" \
    || cargo_status=1

section "cargo test --no-default-features (the core an embedder keeps)"
# Without tls, admin and bench: the server, storages, array and client
# build and pass their tests (the suites that need a left-out feature are
# compiled out).
# In a target directory of its own: its zeoraid binary (without TLS and
# the admin listener) must not replace the one the interop suite runs.
# (The simulations ran above; they use no feature.)
CARGO_TARGET_DIR=$TARGET_DIR/no-default-features cargo test --no-fail-fast --no-default-features \
    -- --skip raid::tests::sim 2>&1 | tee -a "$cargo_log" || cargo_status=1

section "cargo doc (no warnings)"
# Broken links and other rustdoc warnings fail the docs, counted as one
# test in the totals.
if RUSTDOCFLAGS="-D warnings" cargo doc --no-deps 2>&1 | tee -a "$cargo_log"; then
    echo "test result: ok. 1 passed; 0 failed; 0 ignored (cargo doc)" | tee -a "$cargo_log"
else
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored (cargo doc)" | tee -a "$cargo_log"
    cargo_status=1
fi
[ "$cargo_status" -eq 0 ] || status=1
# Sum the "test result: ok. N passed; N failed; N ignored; ..." lines.
read -r cargo_passed cargo_failed cargo_ignored < <(awk '
    /^test result:/ {
        for (i = 1; i <= NF; i++) {
            n = $(i - 1) + 0
            if ($i ~ /^passed/)  p += n
            if ($i ~ /^failed/)  f += n
            if ($i ~ /^ignored/) g += n
        }
    }
    END { printf "%d %d %d\n", p, f, g }' "$cargo_log")
if [ "$cargo_status" -ne 0 ] && [ "$cargo_failed" -eq 0 ]; then
    cargo_failed=1   # failed without a test failing (e.g. a compile error)
fi

# ---------------------------------------------------------------------------
section "interop suite (stock Python ZODB/ZEO against $ZEORAID_BIN)"
interop_log=$LOG_DIR/interop.log
# Level 2 includes ZODB's long race tests (about 30 s): nothing is skipped.
if ZEORAID_INTEROP_LEVEL=${ZEORAID_INTEROP_LEVEL:-2} ZEORAID_BIN=$ZEORAID_BIN \
        "$VENV/bin/python" "$ROOT/tests/interop/run.py" 2>&1 \
        | tee "$interop_log"; then
    interop_status=0
else
    interop_status=1
    status=1
fi
# run.py's last line is "N passed, N failed, N skipped".
read -r interop_passed interop_failed interop_skipped < <(awk '
    /^[0-9]+ passed, [0-9]+ failed/ { p = $1; f = $3; s = ($5 == "" ? 0 : $5) }
    END { printf "%d %d %d\n", p, f, s }' "$interop_log")
if [ "$interop_status" -ne 0 ] && [ "$interop_failed" -eq 0 ]; then
    interop_failed=1   # the runner itself failed
fi

# ---------------------------------------------------------------------------
section "summary"
printf 'cargo test: %d passed, %d failed, %d ignored%s\n' \
    "$cargo_passed" "$cargo_failed" "$cargo_ignored" \
    "$([ "$cargo_status" -eq 0 ] && echo "" || echo "  (FAILED)")"
printf 'interop:    %d passed, %d failed, %d skipped%s\n' \
    "$interop_passed" "$interop_failed" "$interop_skipped" \
    "$([ "$interop_status" -eq 0 ] && echo "" || echo "  (FAILED)")"
# The failed tests by name, with the first lines of what each printed, so
# that the end of the output alone says what to look at.
if [ "$cargo_status" -ne 0 ]; then
    echo "cargo tests that failed:"
    grep -E '^test .* \.\.\. FAILED$|^test result: FAILED.*\(cargo doc\)$' "$cargo_log" \
        | sed 's/^/  /' || true
    grep -E '^error(\[E[0-9]+\])?: ' "$cargo_log" | head -10 | sed 's/^/  /' || true
    awk '/^---- .* stdout ----$/ { n = 8 } n > 0 { print "    " $0; n-- }' "$cargo_log" | head -60 || true
fi
if [ "$interop_status" -ne 0 ]; then
    echo "interop tests that failed:"
    grep -E '\.\.\. (FAIL|ERROR)' "$interop_log" | cut -c1-300 | sed 's/^/  /' || true
fi
printf 'logs: %s, %s; took %ds\n' "$cargo_log" "$interop_log" "$((SECONDS - started))"
printf '%d passed, %d failed, %d skipped\n' \
    "$((cargo_passed + interop_passed))" \
    "$((cargo_failed + interop_failed))" \
    "$((cargo_ignored + interop_skipped))"
exit "$status"
