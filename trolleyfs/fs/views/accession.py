"""``/accession/<AccessionNumber>/<study>/...``: the studies with one accession number.

Listing ``/accession`` shows nothing (nobody lists an archive's accession numbers); a name is
looked up directly, one search. Names are encoded like PatientIDs; an accession number that
cannot be matched exactly (empty, or holding a wildcard) is not searched for.
"""

from __future__ import annotations

from trolleyfs.errors import NotFound
from trolleyfs.fs.dicom import StudiesDir
from trolleyfs.fs.names import patient_id_from_name, searchable
from trolleyfs.fs.nodes import Directory, Node
from trolleyfs.fs.sidecars import text_of
from trolleyfs.model import Query, Study


class AccessionRoot(Directory):
    permanent = True

    async def entries(self) -> dict[str, Node]:
        return {}

    async def lookup(self, name: str) -> Node:
        accession = patient_id_from_name(name)
        if accession is None or not searchable(accession):
            raise NotFound("not an accession number that can be searched for exactly")
        node = self.child(AccessionDir, accession).of(accession)
        if not await node.entries():
            raise NotFound("no studies with that accession number")
        return node


class AccessionDir(StudiesDir):
    accession: str

    def of(self, accession: str) -> AccessionDir:
        self.accession = accession
        return self

    def study_query(self) -> Query | None:
        return Query(AccessionNumber=self.accession)

    def keeps(self, study: Study) -> bool:
        return text_of(study.attributes.get("AccessionNumber")) == self.accession
