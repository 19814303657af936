"""The getscu transport (downloader=c-get-dcmtk) on its own, against the real Orthanc."""

from __future__ import annotations

import time

from tests.conftest import MOVE_AET
from tests.memory_sink import MemorySink
from trolleyfs.backends import dcmtk_get
from trolleyfs.backends.dcmtk_get import DcmtkGet
from trolleyfs.config import parse_dimse_url
from trolleyfs.model import SeriesReference


async def test_files_getscu_writes_while_the_folder_is_being_read_are_all_delivered(orthanc, orthanc_instances,
                                                                                    monkeypatch):
    """getscu may finish while its folder is being read: the last files must still be delivered
    (before the fix, the newest file at that moment was lost with the temporary folder)."""
    looked = dcmtk_get._store_finished

    def slow_first_look(output, sink, reference, writer_pid):  # noqa: ANN001, ANN202
        if writer_pid is not None:
            time.sleep(1.5)  # in the worker thread: getscu ends meanwhile
        return looked(output, sink, reference, writer_pid)

    monkeypatch.setattr(dcmtk_get, "_store_finished", slow_first_look)
    first = orthanc_instances[0]
    series = [i for i in orthanc_instances if i["SeriesInstanceUID"] == first["SeriesInstanceUID"]]
    node = parse_dimse_url(f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")
    getter = DcmtkGet(node, MOVE_AET, acse_timeout=30, dimse_timeout=30, network_timeout=30, max_associations=2)
    sink = MemorySink()
    await getter.fetch(SeriesReference(study_uid=first["StudyInstanceUID"], series_uid=first["SeriesInstanceUID"]),
                       sink)
    assert sink.uids == {i["SOPInstanceUID"] for i in series}
