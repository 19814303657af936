"""Fuzz every parser that reads bytes from a PACS or a user (issue 11).

    python -m tests.fuzz.run                      # 100,000 cases of every parser (scripts/fuzz.sh)
    python -m tests.fuzz.run --cases 2000 --parser rad69 --parser mint-xml
    python -m tests.fuzz.run --list               # the parsers

Each case is one spec drawn by hypothesis from the target's strategy (see targets.py) and run
under a time limit (2 s by default; SIGALRM interrupts Python code, and a watchdog dumps the
stacks and exits if C code hangs past 30 s). A case passes when the parser returns or raises a
TrolleyError; anything else escaping, a Mismatch, or running past the limit is a failure.
Failures do not stop the run: every case is counted, failures are grouped by exception type and
the place in trolleyfs it came from, and the first input of each group is then shrunk (greedy
deletion and simplification, kept only while it fails the same way) to a small reproducer.

It prints ``parser | cases | failures | distinct | seconds | cases/s`` and, per distinct failure,
the exception, where it came from and the minimal input; the exit status is 1 if anything failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import faulthandler
import functools
import gc
import logging
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis import strategies as st

import trio

from tests.fuzz import targets
from tests.fuzz.targets import TARGETS, Kind, Target
from trolleyfs.errors import TrolleyError

DEFAULT_CASES = 100_000
TIME_LIMIT = 2.0
WATCHDOG = 30.0
"""Seconds after which a case stuck in C code (where SIGALRM cannot interrupt it) ends the run."""
_ROOT = Path(__file__).resolve().parents[2]
_HARNESS = Path(__file__).resolve().parent


class CaseTimeout(BaseException):
    """Raised into a case that runs past the time limit (a BaseException: no ``except Exception``
    in product code can swallow it)."""


@dataclass
class Failure:
    signature: tuple[str, str]
    """(exception type, where in trolleyfs it was raised)."""
    message: str
    traceback: str = ""
    exception: BaseException | None = field(default=None, repr=False)

    def settle(self) -> Failure:
        """Format the traceback (only kept failures pay for it) and let go of the exception."""
        if self.exception is not None:
            self.traceback, self.exception = "".join(traceback.format_exception(self.exception)), None
        return self


@dataclass
class Bug:
    failure: Failure
    first_spec: Any
    count: int = 1
    minimal_spec: Any = None


@dataclass
class Report:
    parser: str
    cases: int = 0
    failures: int = 0
    seconds: float = 0.0
    bugs: dict[tuple[str, str], Bug] = field(default_factory=dict)
    slow_once: int = 0
    """Cases past the time limit that ran in time when run again (a pause of the machine or the
    garbage collector, not of the parser): not failures."""

    def add(self, failure: Failure, spec: Any) -> None:
        self.failures += 1
        if (bug := self.bugs.get(failure.signature)) is not None:
            bug.count += 1
        else:
            self.bugs[failure.signature] = Bug(failure.settle(), spec)


# --- one case --------------------------------------------------------------------------------------------

class _Alarm:
    """SIGALRM as a per-case deadline, while :meth:`installed` (in the main thread only: elsewhere
    cases run unbounded, their duration still checked afterwards)."""

    def __init__(self) -> None:
        self.armed = False
        self.fired = False
        self.usable = False
        self._watchdog_set = 0.0

    def _ring(self, signum: int, frame: Any) -> None:
        if self.armed:
            self.armed, self.fired = False, True
            raise CaseTimeout

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if self.usable or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGALRM, self._ring)
        self.usable = True
        try:
            yield
        finally:
            self.usable = False
            signal.signal(signal.SIGALRM, previous)
            faulthandler.cancel_dump_traceback_later()
            self._watchdog_set = 0.0

    @contextlib.contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        self.fired = False
        if self.usable:
            # The watchdog: it ends the process if no case starts for that long. Setting it costs
            # milliseconds (it stops a thread), so it is set again at most once a second.
            if (now := time.monotonic()) - self._watchdog_set > 1.0:
                faulthandler.dump_traceback_later(max(WATCHDOG, 5 * seconds), exit=True)
                self._watchdog_set = now
            self.armed = True
            signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            self.armed = False
            if self.usable:
                signal.setitimer(signal.ITIMER_REAL, 0)


_alarm = _Alarm()


_slow_once = 0


def run_case(target: Target, spec: Any, limit: float = TIME_LIMIT) -> Failure | None:
    """Run one case; None if it passed. A case past the time limit is run once more, after a
    garbage collection, and is a failure only if it is too slow again."""
    global _slow_once
    failure = _run_once(target, spec, limit)
    if failure is not None and failure.signature[0].startswith("Timeout"):
        gc.collect()
        if _run_once(target, spec, limit) is None:
            _slow_once += 1
            return None
    return failure


def _run_once(target: Target, spec: Any, limit: float) -> Failure | None:
    start = time.perf_counter()
    try:
        with _alarm.limit(limit):
            target.run(spec)
    except TrolleyError:
        pass
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - everything else is what we are looking for
        if _alarm.fired or isinstance(exc, trio.TooSlowError):
            return _failure(exc, f"Timeout (> {limit:g} s)")
        return _failure(exc)
    elapsed = time.perf_counter() - start
    if elapsed > limit:
        return Failure((f"Timeout (> {limit:g} s)", "ran to the end, in C code or a pause"), f"took {elapsed:.1f} s")
    return None


def _failure(exc: BaseException, kind: str | None = None) -> Failure:
    leaf = exc
    while isinstance(leaf, BaseExceptionGroup):  # trio nurseries: the first real error
        leaf = leaf.exceptions[0]
    kind = kind or f"{type(leaf).__module__}.{type(leaf).__qualname__}".removeprefix("builtins.")
    return Failure((kind, _where(leaf.__traceback__)), _clip(str(leaf), 2000), exception=leaf)


def _where(tb: Any) -> str:
    """The innermost frame in trolleyfs (else in the harness, else anywhere but this runner) as
    ``path:line in function``."""
    frames = [(frame.f_code, line) for frame, line in traceback.walk_tb(tb)]
    frames = [(code, line) for code, line in frames if _place(code.co_filename)[0] != "runner"]
    for wanted in ("product", "harness", None):
        chosen = [(code, line) for code, line in frames
                  if wanted is None or (_place(code.co_filename)[0] == wanted and code.co_name != "check")]
        if chosen:
            code, line = chosen[-1]
            return f"{_place(code.co_filename)[1]}:{line} in {code.co_name}"
    return "?"


@functools.lru_cache(maxsize=512)
def _place(filename: str) -> tuple[str, str]:
    """(product, harness, runner or other; the path to show) of a source file."""
    path = Path(filename).resolve()
    shown = str(path.relative_to(_ROOT)) if path.is_relative_to(_ROOT) else filename
    if path == Path(__file__).resolve():
        return "runner", shown
    if path.is_relative_to(_ROOT / "trolleyfs"):
        return "product", shown
    return ("harness" if path.is_relative_to(_HARNESS) else "other"), shown


# --- shrinking ------------------------------------------------------------------------------------------

def shrink(spec: Any, still_fails: Callable[[Any], bool], seconds: float) -> Any:
    """The simplest variant of ``spec`` found in ``seconds`` for which ``still_fails`` holds:
    greedy, taking the first simpler variant that still fails and starting again from it."""
    deadline = time.monotonic() + seconds
    best, progress = spec, True
    while progress and time.monotonic() < deadline:
        progress = False
        for candidate in simpler(best):
            if time.monotonic() >= deadline:
                break
            if still_fails(candidate):
                best, progress = candidate, True
                break
    return best


def simpler(value: Any) -> Iterator[Any]:
    """Variants of ``value`` one step simpler, biggest steps first. Tuples are records (their
    length is kept), lists, dicts, strings and bytes lose items; numbers go towards 0."""
    if isinstance(value, Kind) or value is None:
        return
    if isinstance(value, bool):
        if value:
            yield False
    elif isinstance(value, int):
        if value:
            yield 0
            step = abs(value) // 2
            while step:
                yield value - step if value > 0 else value + step
                step //= 2
    elif isinstance(value, float):
        if value != 0.0:
            yield 0.0
            if value == value and abs(value) != float("inf") and value != int(value):
                yield float(int(value))
    elif isinstance(value, (str, bytes, list)):
        yield from _cuts(value)
        if isinstance(value, list):
            for index, item in enumerate(value):
                for variant in simpler(item):
                    yield [*value[:index], variant, *value[index + 1 :]]
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            for variant in simpler(item):
                yield (*value[:index], variant, *value[index + 1 :])
    elif isinstance(value, dict):
        for key in value:
            yield {k: v for k, v in value.items() if k != key}
        for key, item in value.items():
            for variant in simpler(item):
                yield {**value, key: variant}


def _cuts(sequence: Any) -> Iterator[Any]:
    if not sequence:
        return
    yield sequence[:0]
    size = len(sequence) // 2
    while size:
        for start in range(0, len(sequence), size):
            yield sequence[:start] + sequence[start + size :]
        size //= 2


# --- a whole run ----------------------------------------------------------------------------------------

BATCH = 8
"""Specs drawn per hypothesis example: hypothesis spends more time per example than these
targets take per case, and a batch shares that cost (about 1.7 times the cases per second)."""


def fuzz(
    name: str,
    cases: int = DEFAULT_CASES,
    *,
    seed_value: int | None = None,
    derandomize: bool = False,
    limit: float = TIME_LIMIT,
    shrink_seconds: float = 20.0,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Run ``cases`` cases of the target ``name`` and shrink the first input of each distinct failure."""
    target = TARGETS[name]
    targets.ASYNC_DEADLINE = 0.75 * limit
    report = Report(name)
    every = max(cases // 10, 1)

    def batch(specs: list[Any]) -> None:
        for spec in specs:
            if report.cases >= cases:
                return
            report.cases += 1
            failure = run_case(target, spec, limit)
            if failure is not None:
                report.add(failure, spec)
            if progress and report.cases % every == 0:
                report.seconds = time.perf_counter() - start
                progress(report)

    start, slow_before = time.perf_counter(), _slow_once
    with _quiet(), _alarm.installed():
        rounds = 0
        while report.cases < cases and rounds < (1 if derandomize else 5):
            rounds += 1  # hypothesis may stop early (it counts valid draws only): go on for the rest
            before = report.cases
            loop = settings(
                max_examples=-(-(cases - report.cases) // BATCH), deadline=None, database=None,
                derandomize=derandomize, suppress_health_check=list(HealthCheck),
                phases=(Phase.explicit, Phase.generate), verbosity=Verbosity.quiet, report_multiple_bugs=False,
            )(given(st.lists(target.strategy, min_size=BATCH, max_size=BATCH))(batch))
            if seed_value is not None and not derandomize:
                loop = seed(seed_value + rounds)(loop)
            loop()
            if report.cases == before:
                break
        report.seconds, report.slow_once = time.perf_counter() - start, _slow_once - slow_before
        for signature, bug in report.bugs.items():
            bug.minimal_spec = _minimize(target, signature, bug, limit, shrink_seconds)
    return report


def _minimize(target: Target, signature: tuple[str, str], bug: Bug, limit: float, seconds: float) -> Any:
    def still_fails(spec: Any) -> bool:
        failure = run_case(target, spec, limit)
        if failure is not None and failure.signature == signature:
            bug.failure = failure.settle()  # the traceback of the smallest reproducer so far
            return True
        return False

    if signature[0].startswith("Timeout"):
        seconds = min(seconds, 10 * limit)
    return shrink(bug.first_spec, still_fails, seconds)


def fuzz_all(names: list[str], cases: int, jobs: int = 1, **options: Any) -> list[Report]:
    """:func:`fuzz` each of ``names``, ``jobs`` parsers at a time in worker processes."""
    if jobs <= 1 or len(names) <= 1:
        return [fuzz(name, cases, **options) for name in names]
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(fuzz, name, cases, **options) for name in names]
        reports = []
        for name, future in zip(names, futures):
            try:
                reports.append(future.result())
            except concurrent.futures.process.BrokenProcessPool:  # the watchdog ended a hung worker
                report = Report(name, failures=1)
                report.bugs[("Hang", "see the stack dump above")] = Bug(
                    Failure(("Hang", "see the stack dump above"), f"stuck past {WATCHDOG:g} s in C code", ""), None)
                reports.append(report)
        return reports


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No log lines or warnings from the code under test (pydicom warns on every odd value)."""
    def unraisable(info: Any) -> None:  # a deadline that struck inside a __del__ or a GC callback
        if not isinstance(info.exc_value, CaseTimeout):
            previous(info)

    previous, sys.unraisablehook = sys.unraisablehook, unraisable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
        sys.unraisablehook = previous


# --- output ---------------------------------------------------------------------------------------------

def table(reports: list[Report]) -> str:
    rows = [("parser", "cases", "failures", "distinct", "seconds", "cases/s")]
    for r in reports:
        rate = r.cases / r.seconds if r.seconds else 0.0
        rows.append((r.parser, f"{r.cases:,}", f"{r.failures:,}", str(len(r.bugs)), f"{r.seconds:.1f}", f"{rate:,.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _clip(text: str, size: int = 1200) -> str:
    return text if len(text) <= size else f"{text[:size]}... ({len(text):,} characters)"


def details(reports: list[Report]) -> str:
    out = []
    for report in reports:
        for number, ((kind, where), bug) in enumerate(report.bugs.items(), 1):
            shown = TARGETS[report.parser].show
            try:
                parser_input = repr(shown(bug.minimal_spec))
            except Exception as exc:  # noqa: BLE001 - a report must not fail on a weird spec
                parser_input = f"(cannot render: {exc!r})"
            message = bug.failure.message.strip().splitlines()
            out += [
                "",
                f"[{report.parser} #{number}] {kind} at {where}  ({bug.count:,} of {report.cases:,} cases)",
                f"  message: {_clip(message[0] if message else '', 300)}",
                f"  input:   {_clip(parser_input)}",
                f"  spec:    {_clip(repr(bug.minimal_spec))}",
                "  traceback:",
                *("    " + line for line in _clip(bug.failure.traceback, 4000).rstrip().splitlines()[-24:]),
            ]
    return "\n".join(out)


def _progress(report: Report) -> None:
    print(f"  {report.parser}: {report.cases:,} cases, {report.failures:,} failures, {report.seconds:.0f} s",
          file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES, help="cases per parser (default %(default)s)")
    parser.add_argument("--parser", action="append", choices=list(TARGETS), help="only this parser (repeatable)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parsers fuzzed at once (default: CPUs)")
    parser.add_argument("--seed", type=int, help="a fixed random seed (default: a new one each run)")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT, help="seconds a case may take (default 2)")
    parser.add_argument("--shrink-seconds", type=float, default=20.0, help="shrinking time per distinct failure")
    parser.add_argument("--list", action="store_true", help="list the parsers and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(TARGETS))
        return 0
    started = time.perf_counter()
    try:
        reports = fuzz_all(args.parser or list(TARGETS), args.cases, args.jobs, seed_value=args.seed,
                           limit=args.time_limit, shrink_seconds=args.shrink_seconds, progress=_progress)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(table(reports))
    print(f"({time.perf_counter() - started:.0f} s in all, {args.jobs} at a time)")
    if slow := sum(report.slow_once for report in reports):
        print(f"({slow} cases ran past the time limit once but in time when run again: not counted as failures)")
    if any(report.failures for report in reports):
        print(details(reports))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
