"""DICOM in and out (issue 23; docs/DICOM.md).

In: ``reading`` turns an uploaded DICOM file into RGB pixels, the identifiers of the instance
they came from, and the patient context its header gives (age, sex, site); ``shared.images``
re-encodes the pixels as it does a JPEG or PNG, so no byte of the header is ever stored.

Out: the objects a PACS takes, built from the typed ``AnalysisRecord`` and the stored
artifacts: ``segmentation`` (a DICOM Segmentation of the lesion mask), ``measurements`` (a
TID 1500 Comprehensive 3D SR), ``documents`` (the PDF report as Encapsulated PDF); ``common``
holds what the three share (identifiers, the anonymous patient, the source image).
"""
