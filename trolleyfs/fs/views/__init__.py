"""The top-level folders, one module each; a new view is one module and one line here."""

from __future__ import annotations

from trolleyfs.fs.nodes import Directory
from trolleyfs.fs.views.accession import AccessionRoot
from trolleyfs.fs.views.dates import DatesRoot
from trolleyfs.fs.views.deid import DeidRoot
from trolleyfs.fs.views.nifti import NiftiRoot
from trolleyfs.fs.views.patients import PatientsRoot
from trolleyfs.fs.views.query import QueryRoot
from trolleyfs.fs.views.studies import StudiesRoot

VIEWS: dict[str, type[Directory]] = {
    "patients": PatientsRoot,
    "studies": StudiesRoot,
    "accession": AccessionRoot,
    "dates": DatesRoot,
    "query": QueryRoot,
    "nifti": NiftiRoot,
    "deid": DeidRoot,
}
