"""``/patients/<patient>/<study>/...``: studies by PatientID.

``/patients`` lists the patients of up to ``root_listing_limit`` studies; a patient folder is
looked up by its PatientID directly (one search), listed or not. A PatientID that cannot be
matched exactly (empty, or holding a wildcard) is never searched for: looking it up or listing its
folder runs no search, and shows what the last ``/patients`` listing held of it.
"""

from __future__ import annotations

from trolleyfs.errors import NotFound
from trolleyfs.fs.dicom import StudiesDir, patient_attributes, with_fields
from trolleyfs.fs.names import patient_dir_name, patient_id_from_name, searchable
from trolleyfs.fs.nodes import Directory, Node
from trolleyfs.fs.sidecars import text_of, xattr_values
from trolleyfs.model import Query, Studies, Study


class PatientsRoot(Directory):
    permanent = True
    last_listing: Studies = Studies()
    """The answer ``/patients`` was last listed from (bounded by root_listing_limit)."""

    async def listing(self) -> Studies:
        limit = self.mount.settings.root_listing_limit
        if not limit:
            return Studies()
        return await self.mount.trolley.find_studies(with_fields(Query(limit=limit), self.mount.settings.naming.study))

    async def entries(self) -> dict[str, Node]:
        answer = await self.listing()
        if self.up_to_date(answer):
            return self.children  # type: ignore[return-value]
        self.last_listing = answer
        patient_ids = sorted({text_of(study.attributes.get("PatientID")) for study in answer})
        return self.built({self.patient_name(pid): self.child(PatientDir, pid).of(self, pid) for pid in patient_ids}, answer)

    def patient_name(self, patient_id: str) -> str:
        return patient_dir_name(text_of(self.tree.visible({"PatientID": patient_id}).get("PatientID")))

    async def lookup(self, name: str) -> Node:
        patient_id = patient_id_from_name(name) if self.tree.searchable_names else None
        if patient_id is None or not searchable(patient_id):  # only a listing made before knows these
            if self.children is None or name not in self.children:
                raise NotFound("a patient folder that only the /patients listing can show")
            return self.children[name]
        node = self.child(PatientDir, patient_id).of(self, patient_id)
        if not await node.entries():
            raise NotFound("no studies for that PatientID")
        return node


class PatientDir(StudiesDir):
    patients: PatientsRoot
    patient_id: str

    def of(self, patients: PatientsRoot, patient_id: str) -> PatientDir:
        self.patients, self.patient_id = patients, patient_id
        return self

    def study_query(self) -> Query | None:
        return Query(PatientID=self.patient_id)

    async def answer(self) -> Studies:
        if searchable(self.patient_id):
            return await super().answer()
        return self.patients.last_listing

    def keeps(self, study: Study) -> bool:
        return text_of(study.attributes.get("PatientID")) == self.patient_id

    async def xattrs(self) -> dict[str, bytes]:
        studies = [study for study in await self.answer() if self.keeps(study)]
        return xattr_values(patient_attributes(studies) or {"PatientID": self.patient_id})
