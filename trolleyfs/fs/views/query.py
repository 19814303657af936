"""``/query/<query>/<study>/...``: the studies of any study-level query.

The folder name is the query (syntax in :mod:`trolleyfs.fs.query_names` and README.txt). Looking
a name up only parses it: a malformed one is EINVAL, a valid one is a folder at once; listing it
runs one search, of at most ``limit=N`` studies or, without one, ``query_limit``.
"""

from __future__ import annotations

from trolleyfs.fs.dicom import StudiesDir
from trolleyfs.fs.generated import GeneratedFile
from trolleyfs.fs.nodes import Directory, Node
from trolleyfs.fs.query_names import KEYS, parse_query_name
from trolleyfs.model import Query

README_NAME = "README.txt"
README = f"""\
Query folders: open /query/<query> to list the studies matching <query>.

<query> is Key=Value pairs joined by &. Keys:
  {", ".join(KEYS)}
  limit=N   at most N studies (without it, the mount's query_limit)

Values go to the PACS as written, with its wildcards: * (any run) and ? (one character).
Dates (StudyDate, PatientBirthDate): YYYYMMDD, YYYYMMDD-YYYYMMDD, -YYYYMMDD or YYYYMMDD-.
Write %2F for /, %26 for & and %25 for %.
A malformed name (unknown key, bad date, empty value) fails with "Invalid argument".

Examples (quote them in a shell):
  ls "/mnt/pacs/query/PatientName=DOE*&ModalitiesInStudy=CT"
  ls "/mnt/pacs/query/StudyDate=20240101-20240131&limit=50"
  ls "/mnt/pacs/query/AccessionNumber=A12345"
  ls "/mnt/pacs/query/PatientBirthDate=-19500101&StudyDescription=*CHEST*"
""".encode()


class QueryRoot(Directory):
    permanent = True

    async def entries(self) -> dict[str, Node]:
        return {README_NAME: self.child(GeneratedFile, README_NAME).generated_by(lambda: README, permanent=True)}

    async def lookup(self, name: str) -> Node:
        if name == README_NAME:
            return (await self.entries())[name]
        return self.child(QueryDir, name).of(parse_query_name(name))


class QueryDir(StudiesDir):
    query: Query

    def of(self, query: Query) -> QueryDir:
        self.query = query
        return self

    def study_query(self) -> Query | None:
        return self.query if self.query.limit else self.query.model_copy(update={"limit": self.mount.settings.query_limit})
