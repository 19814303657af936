"""One series to NIfTI: dcm2niix (the binary bundled in the ``dcm2niix`` wheel) over a folder of
its instances, with ``-f series -z n -b y`` (``series.nii`` and the BIDS sidecar ``series.json``).

dcm2niix never overwrites (a second run into a folder writes ``seriesa.*``), so every conversion
writes into an empty folder of its own. A series it splits (echoes, phase and magnitude, several
orientations) gives several volumes, named by dcm2niix (``series_e2.nii``, ``series_ph.nii``);
:func:`shown_names` says under which name each is shown.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import dcm2niix

from trolleyfs.errors import TrolleyError

OPTIONS = ("-f", "series", "-z", "n", "-b", "y")
"""What every conversion is run with; the cache keys of conversions name this version of it."""
VERSION = "dcm2niix-" + str(dcm2niix.__version__)
NII, JSON = "series.nii", "series.json"
_REASON_MARKERS = ("error", "no valid", "unable", "unsupported", "not supported", "skipping", "warning")


class ConversionFailed(TrolleyError):
    """dcm2niix could not convert the series (its reason is the message)."""


def convert(inputs: Path, output: Path, timeout: float) -> dict[str, Path]:
    """Run dcm2niix over the DICOM files in ``inputs``, writing into the empty folder ``output``;
    the files it wrote by the names they are shown under (see :func:`shown_names`)."""
    try:
        done = subprocess.run(
            [dcm2niix.bin, *OPTIONS, "-o", str(output), str(inputs)],
            capture_output=True, text=True, errors="replace", timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConversionFailed(f"dcm2niix took longer than {timeout:.0f} s") from None
    except OSError as exc:
        raise ConversionFailed(f"dcm2niix could not be run: {exc}") from exc
    written = sorted(name for name in os.listdir(output) if name.endswith((".nii", ".json")))
    if done.returncode != 0 or not any(name.endswith(".nii") for name in written):
        raise ConversionFailed(f"dcm2niix (exit {done.returncode}): {reason(done.stdout + done.stderr, inputs, output)}")
    return {shown: output / name for shown, name in shown_names(written).items()}


def shown_names(written: list[str]) -> dict[str, str]:
    """dcm2niix's file names -> the names shown: its first volume (by name) is always
    ``series.nii`` with its sidecar ``series.json``, whatever dcm2niix called it; every other
    volume keeps dcm2niix's name."""
    volumes = sorted(name for name in written if name.endswith(".nii"))
    first = volumes[0].removesuffix(".nii")
    shown: dict[str, str] = {}
    for name in written:
        stem, dot, extension = name.rpartition(".")
        shown[f"series.{extension}" if stem == first else name] = name
    return shown


def reason(output: str, *paths: Path) -> str:
    """dcm2niix's own explanation: its last lines that say what went wrong, our folders left out."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    telling = [line for line in lines if any(marker in line.lower() for marker in _REASON_MARKERS)] or lines[-1:]
    text = "; ".join(telling[-2:]) or "no output"
    for path in paths:
        text = text.replace(str(path), "…")
    return text[:500]
