#!/usr/bin/env python3
"""Run the zeoraid interop suite: stock Python ZODB/ZEO against the server.

    ZEORAID_BIN=target/debug/zeoraid .venv/bin/python tests/interop/run.py
    .venv/bin/python tests/interop/run.py test_invalidations   # one module
    .venv/bin/python tests/interop/run.py -k testPackAllRevisions -k Undo

Each test module runs in its own child process (so a module that hangs or
crashes past its per-test timeout cannot take the others down), in the
fixed order of MODULES.  The last line printed is the total,
``N passed, N failed, N skipped``; the exit code is non-zero if any test
failed, any known failure unexpectedly passed, or a module crashed.

Environment:
  ZEORAID_BIN                   the zeoraid binary (required for zeoraid)
  ZEORAID_INTEROP_TARGET        zeoraid (default) | runzeo (stock Python)
  ZEORAID_INTEROP_RUNZEO_STORAGE  file (default) | mapping, for runzeo
  ZEORAID_INTEROP_TEST_TIMEOUT  seconds per test (default 120)
  ZEORAID_INTEROP_LEVEL         2 also runs ZODB's @long_test tests
  ZEORAID_INTEROP_MAX_FAILURES  a module stops after this many (default 25)
  ZEORAID_INTEROP_MODULE_TIMEOUT  seconds per module process (default 1200)
  ZEORAID_INTEROP_RUNZEO_CLIENT_CR  1: runzeo resolves conflicts on the
                                client, as zeoraid does
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# Test modules, in the order they run.  Each defines load_suite(filter).
MODULES = ["test_invalidations", "test_hot_objects", "test_conformance",
           "test_mirror_faults",
           "test_raid", "test_recovery", "test_raid_conformance", "test_tls",
           "test_offsite", "test_blobs", "test_blob_durability",
           "test_blob_raid"]

CHILD_FAILED = 3   # exit code of a child whose tests (only) failed

# A module (child process) that runs longer than this is killed and counted
# as failed; the per-test timeout inside it should fire long before. The
# largest module (test_raid_conformance: ZODB's suites on six array kinds)
# takes about 450 s on 2 cores, and more than 600 s when the machine runs
# slow: a limit for hangs, not a speed target.
MODULE_TIMEOUT = float(os.environ.get("ZEORAID_INTEROP_MODULE_TIMEOUT",
                                      "1200"))


def run_child(module, filters, json_path):
    """Child process: run one module in-process, write its counts."""
    import harness
    import zeoraid_server
    print(f"[{module}] target: {zeoraid_server.target()}", flush=True)
    suite = importlib.import_module(module).load_suite(filters or None)

    def save(counts):
        # Written after every test, so the parent still has the counts if
        # this process is killed or exits through the watchdog.
        tmp = json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(counts, f)
        os.replace(tmp, json_path)

    counts = harness.run_suite(suite, on_progress=save)
    print(f"[{module}] totals: passed={counts['passed']} "
          f"failed={counts['failed']} skipped={counts['skipped']} "
          f"(known failures {counts['known_failures']}, "
          f"unexpected passes {counts['unexpected_passes']})", flush=True)
    # 3, not 1: an uncaught exception also exits with 1, and the parent
    # must tell "tests failed" from "the runner itself broke".
    return 0 if counts["failed"] == 0 else CHILD_FAILED


def exit_child(rc):
    """Leave the child process without waiting for stray threads.

    A failing test can leave non-daemon threads blocked forever (ZODB's
    MTStorage threads wait on ClientStorage's commit lock without a
    timeout when a sibling died mid-transaction); a normal exit would join
    them and hang.  Stop our servers, flush, and _exit."""
    import threading
    import zeoraid_server
    stray = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon
             and t.is_alive()]
    if stray:
        print(f"(leaving {len(stray)} stray test threads behind: "
              f"{', '.join(sorted(stray)[:10])})", flush=True)
    zeoraid_server._kill_live_servers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def run_parent(modules, filters):
    import harness
    total = dict(passed=0, failed=0, skipped=0, known_failures=0,
                 unexpected_passes=0)
    crashed = []
    started = time.monotonic()
    for module in modules:
        print(f"\n=== interop: {module} ===", flush=True)
        with tempfile.TemporaryDirectory(prefix="zeoraid-run-") as tmp:
            json_path = os.path.join(tmp, "counts.json")
            argv = [sys.executable, "-u", os.path.abspath(__file__),
                    "--child", module, "--json", json_path]
            for f in filters:
                argv += ["-k", f]
            proc = subprocess.Popen(argv)
            try:
                rc = proc.wait(MODULE_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
                print(f"[{module}] killed after {MODULE_TIMEOUT:g}s",
                      flush=True)
            try:
                with open(json_path) as f:
                    counts = json.load(f)
            except (OSError, ValueError):
                counts = None
        if counts is None or rc not in (0, CHILD_FAILED):
            # The child died (import error, watchdog exit, crash, module
            # timeout): whatever it counted stands, plus one failure for
            # the module itself.
            print(f"[{module}] CRASHED (exit code {rc}); counting the "
                  "module as one more failure", flush=True)
            crashed.append(module)
            total["failed"] += 1
        for key in total:
            total[key] += (counts or {}).get(key, 0)
    print(f"\ninterop: {len(modules)} modules in "
          f"{time.monotonic() - started:.0f}s"
          + (f"; crashed: {', '.join(crashed)}" if crashed else ""))
    harness.summarize(total)
    return 0 if total["failed"] == 0 else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("modules", nargs="*",
                        help=f"modules to run (default: {' '.join(MODULES)})")
    parser.add_argument("-k", dest="filters", action="append", default=[],
                        help="run only tests whose id contains this "
                             "(repeatable: any of them)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        # Stack dumps on demand: kill -USR1 <pid> when a module seems stuck.
        import faulthandler
        import signal
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        exit_child(run_child(args.child, args.filters, args.json))
    modules = args.modules or MODULES
    for m in modules:
        if m not in MODULES:
            parser.error(f"unknown module {m!r}; known: {', '.join(MODULES)}")
    # Fail fast, before any test, if the target cannot be started at all.
    import zeoraid_server
    try:
        if zeoraid_server.target() == "zeoraid":
            # Absolute, so tests may change directory (ZODB's setUp does).
            os.environ[zeoraid_server.BIN_ENV] = \
                zeoraid_server.zeoraid_binary()
    except zeoraid_server.HarnessError as exc:
        print(f"interop: {exc}", file=sys.stderr)
        print("0 passed, 1 failed, 0 skipped")
        return 2
    return run_parent(modules, args.filters)


if __name__ == "__main__":
    sys.exit(main())
