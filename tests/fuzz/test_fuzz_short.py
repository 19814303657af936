"""The short fuzz CI runs: every parser, a few hundred derandomized cases, no failure allowed.

The long run (100,000 cases a parser, new random cases each time) is ``scripts/fuzz.sh``.
"""

from __future__ import annotations

import pytest

from tests.fuzz.run import details, fuzz
from tests.fuzz.targets import TARGETS

SHORT_CASES = 300


@pytest.mark.parametrize("parser", list(TARGETS))
def test_parser_survives_fuzzing(parser: str) -> None:
    report = fuzz(parser, SHORT_CASES, derandomize=True, shrink_seconds=2.0)
    assert report.cases == SHORT_CASES
    if report.failures:
        pytest.fail(f"{report.failures} of {report.cases} cases failed:{details([report])}", pytrace=False)
