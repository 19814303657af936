"""MINT searcher and RAD-69 downloader: parsers on hand-written answers that follow the MINT API
and IHE RAD TF-3, and both backends against the embedded PACS through the filesystem core."""

from __future__ import annotations

import time

import pytest

from tests.memory_sink import MemorySink
from tests.unit.helpers import all_files, filesystem_over, read_all
from trolleyfs.backends.mint import parse_study_search_results
from trolleyfs.backends.rad69 import _Answer, parse_envelope
from trolleyfs.errors import PacsError, PacsProtocolError, UnrequestedInstance
from trolleyfs.model import InstanceReference
from trolleyfs.testing.pacs_soap import XML_BOMB, XML_EXTERNAL

MINT_ANSWER = b"""<?xml version="1.0" encoding="UTF-8"?>
<m:studySearchResults xmlns:m="http://medical.nema.org/mint">
  <m:study studyUUID="b1e4" lastModified="2024-01-15T08:00:00.000Z">
    <m:attr tag="0020000d" vr="UI" val="1.2.3"/>
    <m:attr tag="00100020" vr="LO" val="PAT 1"/>
    <m:attr tag="00081030" vr="LO"/>
    <m:attr tag="00080061" vr="CS" val="CT\\MR"/>
    <m:attr tag="00091001" vr="LO" val="private, ignored"/>
    <m:series>
      <m:attr tag="0020000e" vr="UI" val="1.2.3.4"/>
      <m:attr tag="00080060" vr="CS" val="CT"/>
      <m:instance>
        <m:attr tag="00080018" vr="UI" val="1.2.3.4.5"/>
        <m:attr tag="00280010" vr="US" val="512"/>
      </m:instance>
      <m:instance><m:attr tag="00080018" vr="UI" val="1.2.3.4.6"/></m:instance>
    </m:series>
  </m:study>
</m:studySearchResults>"""


def test_mint_answer_with_another_prefix_missing_and_multi_valued_attributes():
    [study] = parse_study_search_results(MINT_ANSWER)
    assert study.uid == "1.2.3"
    assert study.attributes["PatientID"] == "PAT 1"
    assert study.attributes["StudyDescription"] == ""  # an attr without val is empty
    assert study.attributes["ModalitiesInStudy"] == ["CT", "MR"]
    [series] = study.series
    assert (series.uid, series.attributes["Modality"]) == ("1.2.3.4", "CT")
    assert [i.uid for i in series.instances] == ["1.2.3.4.5", "1.2.3.4.6"]
    assert series.instances[0].attributes["Rows"] == "512" and "Rows" not in series.instances[1].attributes


@pytest.mark.parametrize(
    "body, message",
    [
        (b"<studySearchResults xmlns='http://medical.nema.org/mint'><study>", "not XML"),
        (b"<html><body>login</body></html>", "expected MINT studySearchResults"),
        (b"<studySearchResults xmlns='http://medical.nema.org/mint'><study/></studySearchResults>", "without StudyInstanceUID"),
        (XML_BOMB, "refused XML"),
        (XML_EXTERNAL, "refused XML"),
    ],
)
def test_a_bad_or_hostile_mint_answer_is_a_clear_error(body, message):
    started = time.monotonic()
    with pytest.raises(PacsProtocolError, match=message):
        parse_study_search_results(body)
    assert time.monotonic() - started < 1  # nothing was expanded


ENVELOPE = """<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope">
 <soap:Body>
  <x:RetrieveDocumentSetResponse xmlns:x="urn:ihe:iti:xds-b:2007"
      xmlns:r="urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0">
   <r:RegistryResponse status="urn:ihe:iti:2007:ResponseStatusType:PartialSuccess">
    <r:RegistryErrorList>
     <r:RegistryError errorCode="XDSMissingDocument" codeContext="Unable to locate SOP" location="1.9.3"
        severity="urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"/>
    </r:RegistryErrorList>
   </r:RegistryResponse>
   <x:DocumentResponse><x:RepositoryUniqueId>1.3.6.1.4.1000</x:RepositoryUniqueId>
    <x:DocumentUniqueId>1.9.1</x:DocumentUniqueId><x:mimeType>application/dicom</x:mimeType>
    <x:Document><inc:Include xmlns:inc="http://www.w3.org/2004/08/xop/include" href="cid:first%40example"/></x:Document>
   </x:DocumentResponse>
   <x:DocumentResponse><x:RepositoryUniqueId>1.3.6.1.4.1000</x:RepositoryUniqueId>
    <x:DocumentUniqueId>1.9.2</x:DocumentUniqueId><x:mimeType>application/dicom</x:mimeType>
    <x:Document><inc:Include xmlns:inc="http://www.w3.org/2004/08/xop/include" href="cid:second@example"/></x:Document>
   </x:DocumentResponse>
  </x:RetrieveDocumentSetResponse>
 </soap:Body>
</soap:Envelope>"""


def test_rad69_envelope_maps_content_ids_to_documents_and_reads_registry_errors():
    envelope = parse_envelope(ENVELOPE.encode())
    assert envelope.documents == {"first@example": "1.9.1", "second@example": "1.9.2"}  # cid: is URL-decoded
    assert envelope.errors == ["XDSMissingDocument (1.9.3): Unable to locate SOP"]


def mtom(parts: list[tuple[str, bytes]], line_end: bytes = b"\r\n") -> bytes:
    body = b""
    for headers, content in parts:
        body += b"--MIME" + line_end + headers.encode().replace(b"\n", line_end) + line_end * 2 + content + line_end
    return body + b"--MIME--" + line_end


ROOT_HEADERS = 'Content-Type: application/xop+xml; type="application/soap+xml"\nContent-ID: <root>'


def asked(*uids: str) -> dict[str, InstanceReference]:
    return {uid: InstanceReference(study_uid="1.9", series_uid="1.9.0", instance_uid=uid) for uid in uids}


@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
async def test_rad69_parts_are_matched_by_content_id_not_by_position(line_end):
    body = mtom([
        (ROOT_HEADERS, ENVELOPE.encode()),
        ("Content-Type: application/dicom\nContent-ID: <second@example>", b"SECOND\r\n"),
        ("Content-Type: application/dicom\nContent-ID: <first@example>", b"FIRST"),
    ], line_end)

    sink = MemorySink()
    answer = read_mtom(body, 'multipart/related; type="application/xop+xml"; boundary=MIME', sink,
                       asked("1.9.1", "1.9.2"), chunk=7)
    assert sink.files == {"1.9.1": b"FIRST", "1.9.2": b"SECOND\r\n"}
    assert answer.received == {"1.9.1", "1.9.2"} and answer.envelope.errors


async def test_a_rad69_part_no_document_refers_to_is_refused():
    body = mtom([(ROOT_HEADERS, ENVELOPE.encode()), ("Content-Type: application/dicom\nContent-ID: <stray@x>", b"X")])

    with pytest.raises(PacsProtocolError, match="stray@x"):
        read_mtom(body, "multipart/related; boundary=MIME", MemorySink(), asked("1.9.1"))


async def test_a_rad69_document_that_was_not_asked_for_is_refused():
    body = mtom([(ROOT_HEADERS, ENVELOPE.encode()), ("Content-Type: application/dicom\nContent-ID: <first@example>", b"X")])

    with pytest.raises(UnrequestedInstance):
        read_mtom(body, "multipart/related; boundary=MIME", MemorySink(), asked("1.9.2"))


def read_mtom(body: bytes, content_type: str, sink, asked_for, chunk: int | None = None) -> _Answer:
    """Feed ``body`` to a RAD-69 answer reader as the worker thread would, ``chunk`` bytes at a time."""

    class Headers:
        status = 200

        def header(self, name):
            return content_type if name == "content-type" else ""

    answer = _Answer(sink, asked_for, "test")
    consumer = answer.open_body(Headers())
    step = chunk or len(body)
    try:
        for start in range(0, len(body), step):
            consumer.feed(memoryview(body[start : start + step]))
        consumer.close()
    except BaseException:
        consumer.abort()
        raise
    return answer


def rad69_options(pacs) -> dict[str, str]:
    return {"searcher": "mint", "mint_url": f"{pacs.base_url}/mint", "downloader": "rad69",
            "rad69_url": f"{pacs.base_url}/rad69"}


async def test_mint_and_rad69_give_the_tree_and_bytes_of_qido_and_wado_rs(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path / "web", readahead_max=0) as fs:
        web = await all_files(fs)
    async with filesystem_over(pacs, tmp_path / "soap", **rad69_options(pacs)) as fs:
        soap = await all_files(fs)
        assert set(soap) == set(web)
        for node in soap.values():
            uid = node.uid
            assert await read_all(fs, node.inode) == pacs.instances[uid].data
    assert pacs.count("mint") > 0 and pacs.count("qido") > 0
    series = {i.value("SeriesInstanceUID") for i in pacs.instances.values()}
    assert pacs.count("rad69") == 2 * len(series)  # a first file, then the rest of its series in one request


async def test_a_document_the_repository_reports_missing_is_a_pacs_error(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, readahead_max=0, retries=0, **rad69_options(pacs)) as fs:
        node = next(iter((await all_files(fs)).values()))
        pacs.faults.add("rad69", "missing", count=1)
        with pytest.raises(PacsError, match="XDSMissingDocument"):
            await read_all(fs, node.inode)
        assert len(fs.trolley.cache) == 0
        assert await read_all(fs, node.inode) == pacs.instances[node.uid].data


async def test_a_series_is_fetched_in_batches_of_rad69_batch_size(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, rad69_batch_size=4, **rad69_options(pacs)) as fs:
        files = await all_files(fs)
        series_uid = next(iter(files.values())).series_dir.series.uid
        in_series = [node for node in files.values() if node.series_dir.series.uid == series_uid]
        for node in in_series:
            assert await read_all(fs, node.inode) == pacs.instances[node.uid].data
    remaining = len(in_series) - 1  # the first file is fetched by itself, then the read-ahead
    assert pacs.count("rad69") == 1 + -(-remaining // 4)


async def test_a_rad69_503_is_retried_into_the_right_bytes(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, readahead_max=0, retries=1, **rad69_options(pacs)) as fs:
        node = next(iter((await all_files(fs)).values()))
        pacs.faults.add("rad69", "status", status=503, count=1)
        assert await read_all(fs, node.inode) == pacs.instances[node.uid].data
    assert pacs.count("rad69") == 2


async def test_asking_another_repository_is_a_clear_error(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, readahead_max=0, rad69_repository_id="1.2.3.999",
                               **rad69_options(pacs)) as fs:
        node = next(iter((await all_files(fs)).values()))
        with pytest.raises(PacsError, match="XDSUnknownRepositoryId"):
            await read_all(fs, node.inode)


async def test_an_mtom_answer_with_an_upper_case_media_type_is_read(pacs, tmp_path, monkeypatch):
    """Media types are case-insensitive (RFC 2045): `Multipart/Related` is MTOM too."""
    import httpx

    original = httpx.Headers.get

    def shouting(self, key, default=None):
        value = original(self, key, default)
        return value.replace("multipart/related", "Multipart/Related") if key.lower() == "content-type" and value else value

    monkeypatch.setattr(httpx.Headers, "get", shouting)
    async with filesystem_over(pacs, tmp_path, readahead_max=0, **rad69_options(pacs)) as fs:
        node = next(iter((await all_files(fs)).values()))
        assert await read_all(fs, node.inode) == pacs.instances[node.uid].data
