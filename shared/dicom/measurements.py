"""The analysis as a DICOM Structured Report (issue 23; docs/DICOM.md): a TID 1500 Measurement
Report in a Comprehensive 3D SR, made with highdicom, with DermaSentinel as the device observer.

- Measurement group 1 (TID 1411, the lesion, referencing the Segmentation's segment): diameter
  (mm when the pixel spacing is known, else pixels of the uploaded image), coverage, the
  asymmetry, border and colour scores, the melanoma probability and its uncertainty, the
  classifier's diagnosis, risk band and uncertainty level; the model as TID 4019 algorithm
  identification (name, version, weights status, segmenter, threshold).
- Measurement group 2 (TID 1501, the skin around the lesion): ITA, skin group, bias warning,
  blur score.
- Qualitative evaluations (TID 1500 row 12): the disposition and its reasons, safety netting,
  the weights status, the notice beside untrained output, the model's identity, the site, and
  that this is research use only, not a certified medical device.

Concepts without a standard code use the private coding scheme ``99DERMSENT`` (its codes are
this module's ``CONCEPTS``). Weights that are not ``trained`` make the report PRELIMINARY, as
the FHIR DiagnosticReport is ``preliminary``; it is never VERIFIED (no clinician signed it).
"""

from __future__ import annotations

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from shared.clinical.rules import TRAINED
from shared.dicom.common import (
    MANUFACTURER,
    NOT_CERTIFIED,
    SR_SERIES,
    DicomPatient,
    dicom_date_time,
    is_dermoscopic,
    set_content_time,
    software_version,
    source_image,
    uid_for,
)
from shared.dicom.segmentation import SegmentationUnavailable
from shared.schemas.analyses import AnalysisRecord, ModelInfo

SCHEME = "99DERMSENT"
CONCEPTS: dict[str, str] = {
    "coverage": "Lesion share of the image",
    "asymmetry": "Asymmetry score",
    "border": "Border irregularity score",
    "color": "Colour variegation score",
    "probability": "Melanoma probability",
    "uncertainty": "Probability uncertainty (SD of TTA views)",
    "diagnosis": "Classifier diagnosis",
    "risk_band": "Risk band",
    "uncertainty_level": "Uncertainty level",
    "ita": "Individual typology angle",
    "skin_group": "Skin group",
    "bias_warning": "Skin tone under-represented in training data",
    "blur_score": "Blur score (variance of the Laplacian)",
    "disposition": "Disposition",
    "disposition_reason": "Disposition reason",
    "safety_netting": "Safety netting",
    "weights": "Model weights status",
    "notice": "Notice",
    "model": "Model",
    "site": "Anatomic site (as submitted)",
    "regulatory_status": "Regulatory status",
    "perilesional_skin": "Skin around the lesion",
}
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
PIXELS = CodedConcept("{pixels}", "UCUM", "pixels")


def concept(key: str) -> CodedConcept:
    return CodedConcept(key, SCHEME, CONCEPTS[key])


def value_code(key: str) -> CodedConcept:
    """A coded value of the private scheme: the API's own word (``urgent_referral``, ``high``;
    one over 16 characters goes in Long Code Value, as highdicom writes it)."""
    return CodedConcept(key, SCHEME, key.replace("_", " ")[:64])


def build_measurement_report(record: AnalysisRecord, patient: DicomPatient | None = None) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of a succeeded analysis; the same record gives the same instance."""
    result = record.result
    if result is None:
        raise SegmentationUnavailable(f"analysis {record.id} has no findings to report (it is {record.status})")
    model = record.model
    image = source_image(record, patient)
    segmentation = _segmentation_reference(record, image)
    algorithm = _algorithm(model)
    concepts = result.concepts
    if concepts.diameter_mm is not None:
        diameter = hd.sr.Measurement(
            name=codes.SCT.Diameter, value=concepts.diameter_mm, unit=codes.UCUM.Millimeter, algorithm_id=algorithm
        )
    else:
        diameter = hd.sr.Measurement(name=codes.SCT.Diameter, value=concepts.diameter_px, unit=PIXELS,
                                     algorithm_id=algorithm)
    lesion = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid_for(record.id, "tracking/lesion"), identifier="lesion"),
        referenced_segment=hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=segmentation.SOPClassUID,
            sop_instance_uid=segmentation.SOPInstanceUID,
            frame_number=1,
            segment_number=1,
            source_image=hd.sr.SourceImageForSegmentation(image.SOPClassUID, image.SOPInstanceUID),
        ),
        finding_type=codes.SCT.Lesion,
        algorithm_id=algorithm,
        measurements=[
            diameter,
            _number("coverage", result.segmentation.coverage, algorithm),
            _number("asymmetry", concepts.asymmetry, algorithm),
            _number("border", concepts.border, algorithm),
            _number("color", concepts.color, algorithm),
            _number("probability", result.probability, algorithm),
            _number("uncertainty", result.uncertainty, algorithm),
        ],
        qualitative_evaluations=[
            _coded("diagnosis", result.diagnosis),
            _coded("risk_band", result.risk_band),
            *([_coded("uncertainty_level", result.uncertainty_level)] if result.uncertainty_level else []),
        ],
    )
    equity = result.equity
    skin = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uid_for(record.id, "tracking/skin"), identifier=CONCEPTS["perilesional_skin"]
        ),
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=concept("ita"), value=equity.ita_degrees, unit=codes.UCUM.Degree),
            _number("blur_score", result.quality.blur_score, None),
        ],
        qualitative_evaluations=[
            _coded("skin_group", equity.skin_group),
            hd.sr.QualitativeEvaluation(
                name=concept("bias_warning"), value=codes.SCT.Yes if equity.bias_warning else codes.SCT.No
            ),
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_device_observer(record, model)),
        procedure_reported=(
            codes.SCT.DermoscopicPhotography if is_dermoscopic(record) else codes.SCT.PhotographyOfPatient
        ),
        imaging_measurements=[lesion, skin],
    )
    report[0].ContentSequence.append(_qualitative_evaluations(record, model))
    date, time = dicom_date_time(record.completed_at)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[image, segmentation],
        content=report,
        series_instance_uid=uid_for(record.id, "series/sr"),
        series_number=SR_SERIES,
        sop_instance_uid=uid_for(record.id, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=model is not None and model.weights == TRAINED,
        is_verified=False,
        series_description="DermaSentinel measurements (research use only)",
        content_date=date or None,
        content_time=time or None,
        series_date=date or None,
        series_time=time or None,
    )
    set_content_time(sr, record.completed_at)
    return sr


def _segmentation_reference(record: AnalysisRecord, image: Dataset) -> Dataset:
    """The Segmentation as the evidence list and the ROI reference need it: its UIDs (derived
    from the analysis, so they are ``build_segmentation``'s), in the source's study."""
    segmentation = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(segmentation, keyword, image.get(keyword, ""))
    segmentation.SOPClassUID = SegmentationStorage
    segmentation.SOPInstanceUID = uid_for(record.id, "seg")
    segmentation.SeriesInstanceUID = uid_for(record.id, "series/seg")
    segmentation.Modality = "SEG"
    return segmentation


def _algorithm(model: ModelInfo | None) -> hd.sr.AlgorithmIdentification:
    """TID 4019: the classifier that made the findings, with its provenance as parameters."""
    if model is None:
        return hd.sr.AlgorithmIdentification(name="DermaSentinel", version=software_version())
    fusion = model.fusion
    parameters = [f"weights={model.weights}", f"segmenter={model.segmenter}"]
    if model.backend:
        parameters.append(f"backend={model.backend}")
    if model.threshold is not None:
        parameters.append(f"threshold={model.threshold:g}")
    if fusion is not None and fusion.sha256:
        parameters.append(f"sha256={fusion.sha256}")
    return hd.sr.AlgorithmIdentification(
        name=fusion.name if fusion is not None else "DermaSentinel classifier",
        version=model.version or (fusion.version if fusion is not None else software_version()),
        parameters=parameters,
        manufacturer=MANUFACTURER,
    )


def _device_observer(record: AnalysisRecord, model: ModelInfo | None) -> hd.sr.ObserverContext:
    version = (model.version if model is not None else None) or software_version()
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid_for(f"device/{MANUFACTURER}/{version}", "observer"),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=f"{MANUFACTURER} {version}"[:64],
        ),
    )


def _number(key: str, value: float, algorithm: hd.sr.AlgorithmIdentification | None) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=concept(key), value=float(value), unit=NO_UNITS, algorithm_id=algorithm)


def _coded(key: str, value: str) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(name=concept(key), value=value_code(value))


def _qualitative_evaluations(record: AnalysisRecord, model: ModelInfo | None) -> hd.sr.ContainerContentItem:
    """TID 1500's Qualitative Evaluations: what is said of the case as a whole."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    result = record.result
    assert result is not None
    items: list[hd.sr.ContentItem] = []
    if result.disposition is not None:
        items.append(hd.sr.CodeContentItem(concept("disposition"), value_code(result.disposition), contains))
    items += [
        hd.sr.CodeContentItem(concept("disposition_reason"), value_code(reason), contains)
        for reason in result.disposition_reasons
    ]
    if result.safety_netting:
        items.append(hd.sr.TextContentItem(concept("safety_netting"), result.safety_netting, contains))
    weights = model.weights if model is not None and model.weights else "unknown"
    items.append(hd.sr.CodeContentItem(concept("weights"), value_code(weights), contains))
    if result.notice:
        items.append(hd.sr.TextContentItem(concept("notice"), result.notice, contains))
    items.append(hd.sr.TextContentItem(concept("model"), _model_text(model), contains))
    items.append(hd.sr.TextContentItem(concept("site"), record.inputs.site, contains))
    items.append(hd.sr.TextContentItem(concept("regulatory_status"), NOT_CERTIFIED, contains))
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=contains)
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _model_text(model: ModelInfo | None) -> str:
    if model is None:
        return "no model ran"
    parts = [f"weights {model.weights}", f"segmenter {model.segmenter}"]
    for role, checkpoint in (("classifier", model.fusion), ("segmentation network", model.scalpel)):
        if checkpoint is not None:
            digest = f", sha256 {checkpoint.sha256}" if checkpoint.sha256 else ""
            parts.append(f"{role} {checkpoint.name} {checkpoint.version}{digest}")
    if model.backend:
        parts.append(f"backend {model.backend}")
    return "; ".join(parts)

