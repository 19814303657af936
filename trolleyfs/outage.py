"""How a failing PACS is logged: once per outage, not once per system call.

A PACS that is down makes every ``ls`` and ``open`` fail, and a file manager retries in a loop;
a WARNING for each would bury the log. The first failure of an outage is logged at WARNING, the
next ones at DEBUG, until the PACS answers a search or a download again, which is logged once
at INFO with the number of failures in between.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class Outage:
    def __init__(self) -> None:
        self.failures = 0
        """Failed PACS requests since the PACS last answered."""

    def failed(self) -> int:
        """Note one failure; the log level it deserves."""
        self.failures += 1
        return logging.WARNING if self.failures == 1 else logging.DEBUG

    def answered(self) -> None:
        if self.failures:
            log.info("the PACS answers again (%d failed requests while it did not)", self.failures)
            self.failures = 0
