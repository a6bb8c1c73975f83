"""The interop suite's test runner: loading, known failures, timeouts, output.

Plain ``unittest`` underneath, with the conventions the suite needs:

* **Loading.** ZODB's conformance mixins name their tests ``test*`` (ZODB 6)
  while ZEO's own mixins still use ``check*``; ``load_class`` collects both,
  sorted by name, so the order is the same on every run.
* **Known failures.** ``apply_known_failures(classes, {name: reason})``
  marks the named tests as expected failures: they still run, a failure is
  reported as "known failure" (counted as skipped), and an unexpected pass
  fails the run so the entry gets removed.  A name that is not a test is an
  error, so a typo cannot go unnoticed.
* **Long tests.** Tests that ZODB marks ``@long_test`` (level 2) are skipped
  unless ``ZEORAID_INTEROP_LEVEL=2``, as zope.testrunner does by default.
* **Timeouts.** Each test gets ``ZEORAID_INTEROP_TEST_TIMEOUT`` seconds
  (default 120: ZODB's ``test_race_external_invalidate_vs_disconnect``
  takes 35-50 s on 2 cores and bounds itself at 120 s).  When they run out a ``TestTimeout`` is raised in the main
  thread (interrupting whatever blocking call the test is in) and the test
  fails; its tearDown still runs and stops the server.  If even that hangs,
  faulthandler dumps every thread's stack and exits the process, and run.py
  reports the module as crashed.
* **Bounded cost.** After ``ZEORAID_INTEROP_MAX_FAILURES`` (default 25)
  failed tests a module stops; the tests it did not run count as failed.
* **Output.** One line per test with its outcome and duration; failures
  print their traceback, the stderr of the servers the test started (when
  the test case offers ``interop_logs()``) and what the Python client
  logged during the test (ZEO logs connection trouble and server errors;
  it is captured per test instead of cluttering the status lines).
  ``summarize`` prints the counts.
"""

import collections
import faulthandler
import functools
import logging
import os
import signal
import sys
import time
import traceback
import unittest


TEST_TIMEOUT = float(os.environ.get("ZEORAID_INTEROP_TEST_TIMEOUT", "120"))
# Extra time for tearDown after a timeout before the hard backstop fires.
TEARDOWN_GRACE = 30.0
LEVEL = int(os.environ.get("ZEORAID_INTEROP_LEVEL", "1"))
# After this many failed tests a module stops; the tests it did not run are
# counted as failed.  A server that is broken outright (every test waiting
# out its connect timeout) then costs minutes, not the whole CI budget.
MAX_FAILURES = int(os.environ.get("ZEORAID_INTEROP_MAX_FAILURES", "25"))

PREFIXES = ("check", "test")


# ---------------------------------------------------------------------------
# Loading


def test_names(cls):
    """All test method names of ``cls`` (both prefixes), sorted."""
    names = set()
    for prefix in PREFIXES:
        loader = unittest.TestLoader()
        loader.testMethodPrefix = prefix
        names.update(loader.getTestCaseNames(cls))
    return sorted(names)


def load_class(cls, name_filter=None):
    """A suite with one instance of ``cls`` per test name, in name order.

    ``name_filter`` is an optional list of substrings; a test is kept if its
    id contains any of them."""
    suite = unittest.TestSuite()
    for name in test_names(cls):
        test = cls(name)
        if name_filter and not any(f in test.id() for f in name_filter):
            continue
        suite.addTest(test)
    return suite


def _copy_function(func):
    """A new function object that calls ``func``: decorating the copy leaves
    the mixin's original (shared by other classes) untouched."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    wrapper.__dict__.pop("__unittest_expecting_failure__", None)
    wrapper.__dict__.pop("__unittest_skip__", None)
    return wrapper


def apply_known_failures(classes, known, mark=True):
    """Mark ``known`` (test name -> reason) as expected failures.

    Keys are method names ("testPackAllRevisions"), applied to every class
    in ``classes`` that has that test, or "Class.method" for one class.  A
    key that matches no test raises ValueError.  With ``mark=False`` the
    keys are only validated (used when the target is not zeoraid)."""
    for key, reason in known.items():
        owner, _, name = key.rpartition(".")
        matched = False
        for cls in classes:
            if owner and owner != cls.__name__:
                continue
            if name not in test_names(cls):
                continue
            matched = True
            if mark:
                wrapper = _copy_function(getattr(cls, name))
                wrapper.known_failure_reason = reason
                setattr(cls, name, unittest.expectedFailure(wrapper))
        if not matched:
            raise ValueError(f"KNOWN_FAILURES names {key!r}, which is not a "
                             "test of " + ", ".join(c.__name__
                                                    for c in classes))


def skip_long_tests(cls):
    """Skip ZODB's ``@long_test`` (level > LEVEL) tests on ``cls``."""
    for name in test_names(cls):
        func = getattr(cls, name)
        level = getattr(func, "level", 1)
        if level > LEVEL:
            wrapper = _copy_function(func)
            reason = (f"long test (level {level}); set "
                      f"ZEORAID_INTEROP_LEVEL={level} to run it")
            setattr(cls, name, unittest.skip(reason)(wrapper))


def prepare_module(classes, known, mark):
    """Apply ``known`` failures (marking them only when ``mark``) and the
    long-test skips to ``classes``; return the module's ``load_suite``."""
    apply_known_failures(classes, known, mark=mark)
    for cls in classes:
        skip_long_tests(cls)

    def load_suite(name_filter=None):
        """All tests of the module, in a fixed order."""
        suite = unittest.TestSuite()
        for cls in classes:
            suite.addTest(load_class(cls, name_filter))
        return suite

    return load_suite


# ---------------------------------------------------------------------------
# Timeouts


class TestTimeout(Exception):
    """Raised in the main thread when a test exceeds its time budget."""


def _on_alarm(signum, frame):
    # Re-arm for tearDown: if cleanup hangs too, raise again.
    signal.setitimer(signal.ITIMER_REAL, TEARDOWN_GRACE)
    raise TestTimeout(f"test exceeded {TEST_TIMEOUT:g}s "
                      "(ZEORAID_INTEROP_TEST_TIMEOUT)")


def _arm(timeout):
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    # Backstop: if the test and its tearDown are stuck even after the alarm,
    # dump every thread's stack and exit (run.py counts the module as failed).
    faulthandler.dump_traceback_later(timeout + 2 * TEARDOWN_GRACE, exit=True)


def _disarm():
    signal.setitimer(signal.ITIMER_REAL, 0)
    faulthandler.cancel_dump_traceback_later()


# ---------------------------------------------------------------------------
# Client-side logging, captured per test


class LogCapture(logging.Handler):
    """Keeps the last ``maxlines`` formatted log records of the current
    test (the runner clears it when a test starts)."""

    def __init__(self, maxlines=400):
        super().__init__(logging.INFO)
        self.lines = collections.deque(maxlen=maxlines)
        self.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(threadName)s] "
            "%(message)s"))

    def emit(self, record):
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    def clear(self):
        self.lines.clear()

    def text(self):
        return "\n".join(self.lines)


def install_log_capture():
    """Route all Python logging of this process into a LogCapture."""
    capture = LogCapture()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    return capture


# ---------------------------------------------------------------------------
# Results


class InteropResult(unittest.TestResult):
    """Prints one line per test and keeps the outcome of each test id."""

    def __init__(self, stream=None, log_capture=None, on_progress=None):
        super().__init__()
        self.stream = stream or sys.stdout
        self.log_capture = log_capture
        self.on_progress = on_progress   # called with counts() after a test
        self.outcomes = {}   # test id -> pass|fail|skip|xfail|xpass
        self._started = {}   # test id -> monotonic start time
        self._pending = {}   # test id -> reports printed after its status
        self._skip_reasons = {}

    # Worse outcomes win when a test reports more than once (e.g. it failed
    # and then its tearDown failed too).
    _rank = {"pass": 0, "skip": 1, "xfail": 2, "xpass": 3, "fail": 4}

    def _set(self, test, outcome):
        old = self.outcomes.get(test.id())
        if old is None or self._rank[outcome] > self._rank[old]:
            self.outcomes[test.id()] = outcome

    def _w(self, text):
        self.stream.write(text)
        self.stream.flush()

    def startTest(self, test):
        super().startTest(test)
        self._started[test.id()] = time.monotonic()
        self._w(f"{test.id()} ... ")
        if self.log_capture is not None:
            self.log_capture.clear()
        _arm(TEST_TIMEOUT)

    def stopTest(self, test):
        _disarm()
        super().stopTest(test)
        elapsed = time.monotonic() - self._started.pop(test.id())
        outcome = self.outcomes.setdefault(test.id(), "pass")
        label = {"pass": "ok", "fail": "FAILED", "skip": "skipped",
                 "xfail": "known failure", "xpass": "UNEXPECTED PASS"}
        note = ""
        if outcome == "skip":
            note = f" [{self._skip_reasons.pop(test.id(), '')}]"
        elif outcome in ("xfail", "xpass"):
            method = getattr(test, test._testMethodName, None)
            note = f" [{getattr(method, 'known_failure_reason', '')}]"
        self._w(f"{label[outcome]} ({elapsed:.1f}s){note}\n")
        self._print_reports(test)
        cleanup = getattr(test, "interop_cleanup", None)
        if callable(cleanup):
            cleanup()
        if self.on_progress is not None:
            self.on_progress(self.counts())
        if self.counts()["failed"] >= MAX_FAILURES and not self.shouldStop:
            self._w(f"\n*** {MAX_FAILURES} tests failed: stopping this "
                    "module (ZEORAID_INTEROP_MAX_FAILURES) ***\n")
            self.stop()

    def _report(self, test, heading, body):
        # Kept until stopTest, so it prints after the test's status line
        # and after tearDown (which stops the servers, whose logs then
        # include the shutdown).
        self._pending.setdefault(test.id(), []).append(
            f"\n{'=' * 70}\n{heading}: {test.id()}\n{'-' * 70}\n{body}")

    def _print_reports(self, test):
        reports = self._pending.pop(test.id(), [])
        if not reports:
            return
        text = list(reports)
        logs = getattr(test, "interop_logs", None)
        if callable(logs):
            try:
                for label, log in logs():
                    text.append(f"{'-' * 25} {label} {'-' * 25}\n{log}\n")
            except Exception:
                text.append("(could not collect server logs)\n"
                            + traceback.format_exc())
        if self.log_capture is not None and self.log_capture.lines:
            text.append(f"{'-' * 25} client log {'-' * 25}\n"
                        f"{self.log_capture.text()}\n")
        text.append("=" * 70 + "\n\n")
        self._w("".join(text))

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set(test, "pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, "fail")
        self._report(test, "FAIL", self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, "fail")
        self._report(test, "ERROR", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._skip_reasons[test.id()] = reason
        self._set(test, "skip")

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, "xfail")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, "xpass")
        self._report(test, "UNEXPECTED SUCCESS",
                     "This test is listed in KNOWN_FAILURES but passed: "
                     "remove it from the list.\n")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._set(test, "fail")
            self._report(test, f"FAIL {subtest._subDescription()}",
                         self._exc_info_to_string(err, test))

    not_run = 0   # tests skipped over after MAX_FAILURES (count as failed)

    def counts(self):
        """dict with passed, failed, skipped, known_failures,
        unexpected_passes (failed includes unexpected passes and tests not
        run because the module stopped early)."""
        values = list(self.outcomes.values())
        return {
            "passed": values.count("pass"),
            "failed": (values.count("fail") + values.count("xpass")
                       + self.not_run),
            "skipped": values.count("skip") + values.count("xfail"),
            "known_failures": values.count("xfail"),
            "unexpected_passes": values.count("xpass"),
        }


def run_suite(suite, stream=None, on_progress=None):
    """Run ``suite``; return the result's counts dict.  ``on_progress`` is
    called with the counts so far after every test."""
    result = InteropResult(stream, install_log_capture(), on_progress)
    suite.run(result)
    result.not_run = suite.countTestCases() - len(result.outcomes)
    if result.not_run:
        result._w(f"{result.not_run} tests not run (counted as failed)\n")
    counts = result.counts()
    if on_progress is not None:
        on_progress(counts)
    return counts


def summary_line(counts):
    """The closing line CI reads: 'N passed, N failed, N skipped'."""
    return (f"{counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['skipped']} skipped")


def summarize(counts, stream=None):
    stream = stream or sys.stdout
    stream.write(
        f"\ninterop details: {counts['known_failures']} known failures "
        f"(counted as skipped), {counts['unexpected_passes']} unexpected "
        "passes (counted as failed)\n")
    stream.write(summary_line(counts) + "\n")
    stream.flush()
