"""The URLs every test PACS (embedded or Orthanc) serves DICOMweb under, from its HTTP port."""

from __future__ import annotations


class DicomWebEndpoints:
    """Mixed into a server class that knows its ``http_port``."""

    http_port: int
    scheme = "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root: QIDO-RS and WADO-RS."""
        return f"{self.base_url}/dicom-web"

    @property
    def wado_uri_url(self) -> str:
        return f"{self.base_url}/wado"
