"""The DICOMweb backends and the trolley against a real Orthanc, without a mount."""

from __future__ import annotations

import datetime
from contextlib import asynccontextmanager

from trolleyfs.backends.http import HttpSession
from trolleyfs.backends.qido_rs import QidoRS
from trolleyfs.backends.wado_rs import WadoRS
from trolleyfs.cache import InstanceCache
from trolleyfs.model import Query, QueryLevel, StudyReference
from trolleyfs.trolley import Trolley


@asynccontextmanager
async def session():
    http = HttpSession(timeout=10, retries=1, max_connections=4)
    try:
        yield http
    finally:
        await http.aclose()


def patients_of(studies) -> set[str]:
    return {study.attributes["PatientName"] for study in studies}


async def test_wildcards_reach_orthanc_raw(orthanc):
    async with session() as http:
        qido = QidoRS(http, orthanc.dicomweb_url)
        assert patients_of(await qido.find_studies(Query(PatientName="DOE*"))) == {"DOE^JOHN"}
        assert patients_of(await qido.find_studies(Query(PatientName="*jane*"))) == {"ROE^JANE"}
        assert len(await qido.find_studies(Query(PatientName="DOE*"))) == 2
        assert len(await qido.find_studies(Query(PatientID="ODD/ID 7"))) == 2


def studies_where(instances: list[dict], keep) -> set[str]:
    return {i["StudyInstanceUID"] for i in instances if keep(i)}


async def test_study_queries_filter_by_date_range_and_modality_and_include_fields(orthanc, orthanc_instances):
    async with session() as http:
        qido = QidoRS(http, orthanc.dicomweb_url)
        early = await qido.find_studies(Query(max_study_date=datetime.date(2024, 1, 31)))
        expected_early = studies_where(orthanc_instances, lambda i: i["StudyDate"] <= "20240131")
        assert 0 < len(expected_early) < len(studies_where(orthanc_instances, lambda i: True))
        assert {s.uid for s in early} == expected_early
        with_mr = await qido.find_studies(Query(ModalitiesInStudy="MR", include_fields=("StudyDescription",)))
        assert {s.uid for s in with_mr} == studies_where(orthanc_instances, lambda i: i["Modality"] == "MR")
        assert {s.attributes["StudyDescription"] for s in with_mr} == {"CHEST CT", "BRAIN MR"}


async def test_paging_reaches_the_end_and_limit_caps(orthanc, orthanc_instances):
    async with session() as http:
        paged = QidoRS(http, orthanc.dicomweb_url, page_size=4)
        assert {s.uid for s in await paged.find_studies(Query())} == studies_where(orthanc_instances, lambda i: True)
        instances = await paged.find_studies(Query(PatientID="TROLLEY-001", query_level=QueryLevel.INSTANCE))
        found = {i.uid for study in instances for series in study.series for i in series.instances}
        assert found == {i["SOPInstanceUID"] for i in orthanc_instances if i["PatientID"] == "TROLLEY-001"}
        assert len(await paged.find_studies(Query(limit=5))) == 5


async def test_hierarchical_and_relational_series_queries_agree(orthanc, orthanc_instances):
    study_uid = orthanc_instances[0]["StudyInstanceUID"]
    async with session() as http:
        qido = QidoRS(http, orthanc.dicomweb_url)
        (hierarchical,) = await qido.find_studies(Query(StudyInstanceUID=study_uid, query_level=QueryLevel.SERIES))
        relational = await qido.find_studies(Query(PatientID="TROLLEY-00*", query_level=QueryLevel.SERIES))
        assert {s.attributes["Modality"] for s in hierarchical.series} == {"CT", "MR"}
        from_relational = next(study for study in relational if study.uid == study_uid)
        assert {s.uid for s in from_relational.series} == {s.uid for s in hierarchical.series}


async def test_a_whole_study_streams_into_the_cache_byte_for_byte(orthanc, orthanc_instances, tmp_path):
    study_uid = orthanc_instances[0]["StudyInstanceUID"]
    in_study = [i for i in orthanc_instances if i["StudyInstanceUID"] == study_uid]
    async with session() as http:
        cache = await InstanceCache.open(tmp_path, max_bytes=10**9)
        trolley = Trolley(QidoRS(http, orthanc.dicomweb_url), WadoRS(http, orthanc.dicomweb_url), cache)
        await trolley.download(StudyReference(study_uid=study_uid))
        assert trolley.stats["download_requests"] == 1
        assert len(cache) == len(in_study) == 20
        for instance in in_study:
            assert cache.get(instance["SOPInstanceUID"]).path.read_bytes() == orthanc.file(instance["id"])
