"""The return fields a MINT server accepts in ``IncludeFields``, per query level.

MINT servers check ``IncludeFields`` against a fixed list per ``QueryLevel`` and answer HTTP 400
for anything else (the lists are those of the Vitrea Connection 8.2 manual, as dicomtrolley
documents them). A deeper level may also ask for the fields of the levels above it; a SERIES
query may ask for the instance attributes a server promotes to the series when all its instances
agree.
"""

from __future__ import annotations

from trolleyfs.model import QueryLevel

_STUDY = frozenset({
    "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "PatientName", "PatientSex",
    "PatientBirthDate", "PatientBirthTime", "StudyInstanceUID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyID", "StudyDate", "StudyTime", "ModalitiesInStudy",
    "ReferringPhysicianName", "RequestedProcedureID", "StudyDescription", "InstanceAvailability",
    "InstitutionName", "StudyStatusID", "ConfidentialityCode", "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence", "OtherPatientIDsSequence", "InstitutionalDepartmentName",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "SOPClassesInStudy",
    "CurrentPatientLocation", "SourceApplicationEntityTitle",
})
_SERIES = frozenset({
    "SeriesInstanceUID", "Modality", "SeriesDate", "SeriesTime", "SeriesDescription", "Laterality",
    "AnatomicRegionSequence", "BodyPartExamined", "FrameOfReferenceUID", "PerformedProcedureStepDescription",
    "ProtocolName", "PerformingPhysicianName", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "OperatorsName", "PerformedProcedureStepStatus", "PresentationIntentType",
    "SeriesNumber", "SeriesType", "SmallestPixelValueInSeries", "SpatialResolution",
    "NumberOfSeriesRelatedInstances",
})
_SERIES_PROMOTABLE = frozenset({
    "Manufacturer", "ManufacturerModelName", "CorrectedImage", "DeviceSerialNumber", "InstitutionAddress",
    "SoftwareVersions", "StationName", "DateOfLastCalibration", "TimeOfLastCalibration",
})
_INSTANCE = frozenset({
    "SOPInstanceUID", "SOPClassUID", "Rows", "Columns", "NumberOfFrames", "BitsAllocated", "ContentDate",
    "ContentTime", "ObservationDateTime", "ConceptNameCodeSequence", "ContentLabel", "ContentDescription",
    "PresentationCreationDate", "PresentationCreationTime", "ContentCreatorName", "RetrieveURI",
    "TransferSyntaxUID", "InstanceNumber", "Manufacturer", "StationName", "ManufacturerModelName",
    "DeviceSerialNumber", "InstitutionAddress", "CorrectedImage", "SoftwareVersions", "DateOfLastCalibration",
    "TimeOfLastCalibration", "PixelPaddingValue",
})

ALLOWED_INCLUDE_FIELDS = {
    QueryLevel.STUDY: _STUDY,
    QueryLevel.SERIES: _STUDY | _SERIES | _SERIES_PROMOTABLE,
    QueryLevel.INSTANCE: _STUDY | _SERIES | _INSTANCE,
}
