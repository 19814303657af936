"""Searching a server that may refuse the optional return fields we ask for.

Some servers answer HTTP 400 to return fields they do not support (a QIDO-RS ``includefield``,
a MINT ``IncludeFields`` outside its list), and some C-FIND SCPs a failure status (0xA900, or
0xCxxx "unable to process") to return keys they do not know. The search is then asked again without them; if that
works, the level is remembered and later searches at it ask without them too. A 400 that asking
without fields does not cure is the search's own error and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from trolleyfs.errors import PacsBadRequest
from trolleyfs.model import QueryLevel, Studies

log = logging.getLogger(__name__)


class OptionalFields:
    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self._refused: set[QueryLevel] = set()
        """Levels at which this server refused our return fields."""

    async def search(self, level: QueryLevel, search: Callable[[bool], Awaitable[Studies]]) -> Studies:
        """``search(with_fields)``, with fields unless this server refuses them at ``level``."""
        with_fields = level not in self._refused
        try:
            return await search(with_fields)
        except PacsBadRequest:
            if not with_fields:
                raise
            answer = await search(False)
            log.warning("%s refused the return fields asked at %s level; asking without them",
                        self.protocol, level.value)
            self._refused.add(level)
            return answer
