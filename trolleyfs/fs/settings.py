"""What the filesystem layer reads of the configuration (built from a Config by
:mod:`trolleyfs.mount`; tests build it directly)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trolleyfs.fs.names import DEFAULT_INSTANCE_NAME, DEFAULT_SERIES_NAME, DEFAULT_STUDY_NAME, NameTemplate

if TYPE_CHECKING:
    from trolleyfs.derived.deid import Deidentifier


@dataclass(frozen=True)
class Naming:
    study: NameTemplate = field(default_factory=lambda: NameTemplate(DEFAULT_STUDY_NAME))
    series: NameTemplate = field(default_factory=lambda: NameTemplate(DEFAULT_SERIES_NAME))
    instance: NameTemplate = field(default_factory=lambda: NameTemplate(DEFAULT_INSTANCE_NAME, ".dcm"))

    @classmethod
    def from_templates(cls, study: str, series: str, instance: str) -> Naming:
        return cls(NameTemplate(study), NameTemplate(series), NameTemplate(instance, ".dcm"))


@dataclass(frozen=True)
class FsSettings:
    """See the options of the same names in docs/options.md."""

    root_listing_limit: int = 1000
    listing_ttl: float = 60.0
    readahead_max: int = 512 * 1024**2
    listing_readahead: int = 16
    dates_from: int = 1990
    query_limit: int = 1000
    preview_size: int = 256
    nifti_timeout: float = 600.0
    naming: Naming = field(default_factory=Naming)
    deidentifier: Deidentifier | None = None
    """What ``/deid`` de-identifies with; None: there is no ``/deid``."""
    backend_names: tuple[str, str] = ("", "")
    """(searcher, downloader), for the stats."""
