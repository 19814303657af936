"""The trolleyfs exception tree. Every domain error carries the errno the filesystem reports for it.

    TrolleyError                   EIO   base of everything trolleyfs raises on purpose
    ├── InvalidQuery               EINVAL  a Query the model or a backend cannot express
    ├── ConfigError                EINVAL  a bad option, config file or environment value
    ├── NotFound                   ENOENT  the PACS has no such patient, study, series or instance
    ├── NoAttribute                ENODATA no extended attribute of that name
    ├── ReadOnly                   EROFS   any attempt to change the filesystem
    ├── IsADirectory               EISDIR  opening a directory as a file
    ├── NotADirectory              ENOTDIR listing or looking up inside a file
    ├── NeedsInstances             EIO     a downloader needs instance UIDs the reference lacks
    ├── PacsError                  EIO     the PACS failed: unreachable, timed out, garbage
    │   ├── PacsProtocolError      EIO     the PACS answered something that breaks the protocol
    │   │   ├── PacsBadRequest     EIO     the PACS refused the request itself (HTTP 400, C-FIND 0xA900/0xCxxx)
    │   │   └── UnrequestedInstance EIO    the PACS sent an instance outside what was asked
    │   └── PacsRefused            EACCES  the PACS refused us: credentials, AE title
    └── CacheError                 EIO     the disk cache cannot hold or publish a file
        └── CacheFull              ENOSPC  nothing evictable is left and the entry does not fit

Foreign exceptions (httpx, pydicom, OSError from the cache directory) are translated where they
enter, with ``raise ... from exc``; the FUSE adapter maps anything else, an OSError that slipped
through included, to EIO and logs it: a program never sees a raw errno of our own internals.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import trio


class TrolleyError(Exception):
    """Base of every error trolleyfs raises on purpose."""

    errno: int = errno.EIO


class InvalidQuery(TrolleyError, ValueError):
    errno = errno.EINVAL


class ConfigError(TrolleyError, ValueError):
    errno = errno.EINVAL


class NotFound(TrolleyError):
    errno = errno.ENOENT


class NoAttribute(TrolleyError):
    errno = errno.ENODATA


class ReadOnly(TrolleyError):
    errno = errno.EROFS


class IsADirectory(TrolleyError):
    errno = errno.EISDIR


class NotADirectory(TrolleyError):
    errno = errno.ENOTDIR


class NeedsInstances(TrolleyError):
    """Raised by a downloader that can only fetch single instances when given a study or series."""


class PacsError(TrolleyError):
    """The PACS could not be reached or did not answer properly."""


class PacsProtocolError(PacsError):
    """The PACS answered, but with something that does not follow the protocol."""


class PacsBadRequest(PacsProtocolError):
    """The PACS refused what we asked as malformed (HTTP 400, a C-FIND 0xA900 or 0xCxxx status): a
    searcher may ask again with less."""


class UnrequestedInstance(PacsProtocolError):
    """An instance arrived that the request did not name (another UID, study or series): it is
    never cached, since it would sit under a UID the PACS was not asked for."""


class PacsRefused(PacsError):
    """The PACS will not talk to us as configured (HTTP 401/403, association rejected): a mount
    fails with this at once instead of showing an empty tree."""

    errno = errno.EACCES


class CacheError(TrolleyError):
    pass


class CacheFull(CacheError):
    errno = errno.ENOSPC


@contextmanager
def first_error() -> Iterator[None]:
    """Turn an exception group from a nursery into its first real error, so that callers can
    catch TrolleyError (and its errno) as if one task had run. Pure cancellation stays a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        errors = [exc for exc in _leaves(group) if not isinstance(exc, trio.Cancelled)]
        if not errors:
            raise
        raise errors[0] from None


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
