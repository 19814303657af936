"""``/dates/<YYYY>/<MM>/<DD>/<study>/...``: studies by StudyDate.

Years, months and days are calendar folders: listing them runs no search. ``/dates`` lists the
years from ``dates_from`` to this year (any other year can still be looked up); listing a day runs
one study search for that StudyDate, paged to its end.
"""

from __future__ import annotations

import calendar
import datetime

from trolleyfs.errors import NotFound
from trolleyfs.fs.dicom import StudiesDir
from trolleyfs.fs.nodes import Directory, Node
from trolleyfs.fs.sidecars import text_of
from trolleyfs.model import Query, Study


class DatesRoot(Directory):
    permanent = True

    async def entries(self) -> dict[str, Node]:
        this_year = datetime.date.today().year
        years = range(min(self.mount.settings.dates_from, this_year), this_year + 1)
        return {f"{year:04d}": self.child(YearDir, f"{year:04d}").of(year) for year in years}

    async def lookup(self, name: str) -> Node:
        if len(name) != 4 or not (name.isascii() and name.isdigit()) or int(name) < datetime.MINYEAR:
            raise NotFound("not a year (YYYY)")
        return self.child(YearDir, name).of(int(name))


class YearDir(Directory):
    year: int

    def of(self, year: int) -> YearDir:
        self.year = year
        return self

    async def entries(self) -> dict[str, Node]:
        return {f"{month:02d}": self.child(MonthDir, f"{month:02d}").of(self.year, month) for month in range(1, 13)}


class MonthDir(Directory):
    year: int
    month: int

    def of(self, year: int, month: int) -> MonthDir:
        self.year, self.month = year, month
        return self

    async def entries(self) -> dict[str, Node]:
        days = calendar.monthrange(self.year, self.month)[1]
        return {
            f"{day:02d}": self.child(DayDir, f"{day:02d}").of(datetime.date(self.year, self.month, day))
            for day in range(1, days + 1)
        }


class DayDir(StudiesDir):
    day: datetime.date

    def of(self, day: datetime.date) -> DayDir:
        self.day = day
        self.mtime = float(calendar.timegm(day.timetuple()))
        return self

    def study_query(self) -> Query | None:
        return Query(min_study_date=self.day, max_study_date=self.day)

    def keeps(self, study: Study) -> bool:
        return text_of(study.attributes.get("StudyDate")) == self.day.strftime("%Y%m%d")
