"""``/studies/<StudyInstanceUID>/<series>/...``: a study by its UID.

Looking a UID up is one study search for exactly that UID, never a listing; listing ``/studies``
shows up to ``root_listing_limit`` studies, each named by its UID alone.
"""

from __future__ import annotations

from trolleyfs.errors import NotFound
from trolleyfs.fs.dicom import StudiesDir, with_fields
from trolleyfs.fs.names import uid_name
from trolleyfs.fs.nodes import Node
from trolleyfs.model import Query, Study, is_uid


class StudiesRoot(StudiesDir):
    permanent = True

    def study_query(self) -> Query | None:
        limit = self.mount.settings.root_listing_limit
        return Query(limit=limit) if limit else None

    def study_name(self, study: Study) -> str:
        return uid_name(self.tree.visible_uid(study.uid))

    async def lookup(self, name: str) -> Node:
        if self.children is not None and name in self.children:
            return self.children[name]
        if not self.tree.searchable_names:
            raise NotFound("a study folder that only the listing can show")
        if not is_uid(name):
            raise NotFound("not a StudyInstanceUID")
        query = with_fields(Query(StudyInstanceUID=name), self.mount.settings.naming.study)
        study = (await self.mount.trolley.find_studies(query)).study(name)
        if study is None:
            raise NotFound("no study with that StudyInstanceUID")
        return self.child(self.tree.study_dir, name).showing(study)  # type: ignore[attr-defined]
