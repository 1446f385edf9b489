"""DICOM in (issue 23): what ``shared.images.clean_image`` makes of DICOM files, built here with
pydicom, no service needed: the pixels of every accepted SOP class and transfer syntax, the
header's age, sex and site, nothing of the header in the stored bytes, and each refusal with
its reason."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)

from shared import images
from shared.clinical import vocabulary
from shared.dicom.reading import PatientContext
from shared.schemas import AnalysisInputs
from tests.dicom_files import (
    CT_IMAGE,
    DERMOSCOPIC_PHOTOGRAPHY,
    PHI_VALUES,
    SECONDARY_CAPTURE,
    VL_PHOTOGRAPHIC,
    anatomic_region,
    dicom_file,
    jpeg_lossless,
)
from worker.pipeline.synthetic import make_lesion

MAX_PIXELS = 40_000_000
LESION = make_lesion(seed=11, size=(96, 128), radius_frac=0.22).image


def stored(raw: bytes, declared: str | None = None) -> images.CleanImage:
    return images.clean_image(raw, MAX_PIXELS, 4096, declared)


def pixels_of(clean: images.CleanImage) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(clean.data)).convert("RGB"))


@pytest.mark.parametrize("sop_class", [VL_PHOTOGRAPHIC, DERMOSCOPIC_PHOTOGRAPHY, SECONDARY_CAPTURE])
@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, JPEGLossless, JPEGLosslessSV1,
     JPEGBaseline8Bit],
)
def test_every_accepted_kind_becomes_a_clean_image_of_its_pixels(sop_class, transfer_syntax):
    raw = dicom_file(LESION, sop_class=sop_class, transfer_syntax=transfer_syntax)
    clean = stored(raw)
    lossy = transfer_syntax == JPEGBaseline8Bit
    assert clean.content_type == ("image/jpeg" if lossy else "image/png")
    assert (clean.width, clean.height) == (128, 96)
    error = np.abs(pixels_of(clean).astype(int) - LESION.astype(int)).mean()
    assert error < (6 if lossy else 0.01)
    assert clean.dicom is not None
    source = clean.dicom.source
    dataset = pydicom.dcmread(io.BytesIO(raw))
    assert source.sop_class_uid == sop_class and source.transfer_syntax_uid == transfer_syntax
    assert (source.study_instance_uid, source.series_instance_uid, source.sop_instance_uid) == (
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
    )


def test_not_a_byte_of_the_header_is_in_the_stored_image():
    for transfer_syntax in (ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLosslessSV1):
        raw = dicom_file(LESION, transfer_syntax=transfer_syntax, PatientAge="061Y", PatientSex="F")
        assert all(value.encode() in raw for value in PHI_VALUES[:5])
        clean = stored(raw)
        assert not clean.data.startswith(b"\0" * 128) and b"DICM" not in clean.data
        for value in PHI_VALUES:
            assert value.encode() not in clean.data, value
            assert value.encode("utf-16-le") not in clean.data, value
        assert Image.open(io.BytesIO(clean.data)).info.keys() <= {"jfif", "jfif_version", "jfif_unit",
                                                                   "jfif_density", "dpi"}


def test_malformed_identifying_values_are_not_logged(caplog):
    """pydicom logs a malformed value with the value itself; reading DICOM here logs none."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # writing them warns too: that is the test's file, not the service
        raw = dicom_file(LESION, PatientBirthDate="Quixotica1947", StudyDate="2003041X", PatientAge="Zebediah",
                         PatientSex="Marmaduke", FrameOfReferenceUID="Quixotica.Zebediah")
    caplog.clear()
    with caplog.at_level("DEBUG"):
        clean = stored(raw)
    assert clean.dicom is not None and clean.dicom.context == PatientContext()
    assert not any(word in caplog.text for word in ("Quixotica", "2003041X", "Zebediah", "Marmaduke"))


def test_ycbcr_becomes_rgb_and_an_icc_profile_is_applied():
    raw = dicom_file(LESION, transfer_syntax=JPEGBaseline8Bit, photometric="YBR_FULL_422")
    assert np.abs(pixels_of(stored(raw)).astype(int) - LESION.astype(int)).mean() < 6
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    with_profile = stored(dicom_file(LESION, ICCProfile=srgb))
    assert np.abs(pixels_of(with_profile).astype(int) - LESION.astype(int)).mean() < 2
    assert b"acsp" not in with_profile.data  # the profile itself is not kept


def test_the_header_gives_age_sex_site_and_spacing():
    clean = stored(dicom_file(LESION, PatientAge="061Y", PatientSex="F", BodyPartExamined="CHEST",
                              PixelSpacing=[0.05, 0.05]))
    assert clean.dicom is not None
    assert clean.dicom.context == PatientContext(age=61, sex="female", site="torso", pixel_spacing_mm=0.05)
    # The coded region wins over the body part; months become years; O is unknown.
    clean = stored(dicom_file(LESION, PatientAge="030M", PatientSex="O", BodyPartExamined="CHEST",
                              AnatomicRegionSequence=anatomic_region("Upper limb structure", "53120007")))
    assert clean.dicom is not None
    assert clean.dicom.context == PatientContext(age=2, sex="unknown", site="upper extremity")
    bare = stored(dicom_file(LESION, phi=False))
    assert bare.dicom is not None and bare.dicom.context == PatientContext()


def test_the_form_wins_and_the_header_fills_only_what_it_left_out():
    clean = stored(dicom_file(LESION, PatientAge="061Y", PatientSex="M", BodyPartExamined="FOOT",
                              PixelSpacing=[0.02, 0.02]))
    assert clean.dicom is not None
    filled = clean.dicom.fill(AnalysisInputs())
    assert (filled.age, filled.sex, filled.site, filled.pixel_spacing_mm) == (61, "male", "lower extremity", 0.02)
    given = AnalysisInputs(age=40, sex="female", site="torso", pixel_spacing_mm=0.1)
    assert clean.dicom.fill(given) == given
    partly = clean.dicom.fill(AnalysisInputs(age=40))
    assert (partly.age, partly.sex, partly.site) == (40, "male", "lower extremity")


@pytest.mark.parametrize(
    ("raw", "age"),
    [("061Y", 61), ("018M", 1), ("003W", 0), ("400D", 1), ("130Y", None), ("61", None), ("06xY", None), ("", None)],
)
def test_dicom_ages(raw, age):
    assert vocabulary.age_from_dicom(raw) == age


@pytest.mark.parametrize(("raw", "sex"), [("M", "male"), ("F", "female"), ("O", "unknown"), ("X", None), (None, None)])
def test_dicom_sexes(raw, sex):
    assert vocabulary.sex_from_dicom(raw) == sex


@pytest.mark.parametrize(
    ("text", "site"),
    [
        ("Trunk structure", "torso"), ("Structure of palm of hand", "palms/soles"), ("UPR_LIMB", "upper extremity"),
        ("LEG", "lower extremity"), ("HEADNECK", "head/neck"), ("Sole of foot", "palms/soles"),
        ("Oral cavity structure", "oral/genital"), ("SKIN", None), ("EXTREMITY", None), ("", None), (None, None),
    ],
)
def test_dicom_sites(text, site):
    assert vocabulary.site_from_dicom(text) == site


def test_a_file_without_the_preamble_is_read_only_when_declared_dicom():
    raw = dicom_file(LESION, preamble=False, transfer_syntax=ImplicitVRLittleEndian)
    assert raw[128:132] != b"DICM"
    with pytest.raises(images.UnsupportedImageError, match="JPEG, PNG or DICOM"):
        stored(raw)
    clean = stored(raw, "application/dicom")
    assert clean.content_type == "image/png" and clean.dicom is not None
    with pytest.raises(images.UnsupportedImageError, match="declared application/dicom"):
        stored(b"%PDF-1.4 a referral letter" * 20, "application/dicom")
    # A JPEG declared as DICOM is a JPEG: the content decides.
    jpeg = io.BytesIO()
    Image.fromarray(LESION).save(jpeg, format="JPEG")
    assert stored(jpeg.getvalue(), "application/dicom").dicom is None


def _frame_replaced(raw: bytes, frame: bytes) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(raw))
    dataset.PixelData = encapsulate([frame])
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _frame(raw: bytes) -> bytes:
    return next(generate_frames(pydicom.dcmread(io.BytesIO(raw)).PixelData, number_of_frames=1))


def test_pixels_that_cannot_be_decoded_are_unreadable_and_say_why():
    native = dicom_file(LESION)
    with pytest.raises(images.UnreadableImageError, match=r"could not be decoded: ValueError: The number of bytes"):
        stored(native[:-500])
    baseline = dicom_file(LESION, transfer_syntax=JPEGBaseline8Bit)
    frame = _frame(baseline)
    with pytest.raises(images.UnreadableImageError, match="JPEG Baseline.*no end-of-image marker"):
        stored(_frame_replaced(baseline, frame[: len(frame) // 2]))
    with pytest.raises(images.UnreadableImageError, match="JPEG Baseline.*not a JPEG stream"):
        stored(_frame_replaced(baseline, b"\xff\xd8" + bytes(400)))
    with pytest.raises(images.UnreadableImageError, match="frame is 128x96, the header says 1000x96"):
        stored(_frame_replaced(dicom_file(LESION, transfer_syntax=JPEGBaseline8Bit, Columns=1000), frame))
    lossless = dicom_file(LESION, transfer_syntax=JPEGLosslessSV1)
    frame = _frame(lossless)
    with pytest.raises(images.UnreadableImageError, match="JPEG Lossless.*no end-of-image marker"):
        stored(_frame_replaced(lossless, frame[: len(frame) // 2]))
    with pytest.raises(images.UnreadableImageError, match="could not be parsed"):
        stored(native[:132] + bytes(range(256)) * 4)
    with pytest.raises(images.UnreadableImageError, match="no pixel data"):
        stored(dicom_file(LESION)[:400])


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"sop_class": CT_IMAGE}, r"SOP class 1\.2\.840\.10008\.5\.1\.4\.1\.1\.2 \(CT Image Storage\) is not accepted"),
        ({"transfer_syntax": JPEG2000Lossless}, r"transfer syntax 1\.2\.840\.10008\.1\.2\.4\.90 .* is not accepted"),
        ({"transfer_syntax": RLELossless}, "RLE Lossless.* is not accepted"),
        ({"NumberOfFrames": 3}, "has 3 frames; send one image per file"),
        ({"PixelRepresentation": 1}, "signed samples"),
    ],
)
def test_objects_we_do_not_analyse_are_refused_naming_what_they_are(changes, named):
    with pytest.raises(images.UnsupportedDicomError, match=named) as refused:
        stored(dicom_file(LESION, **changes))
    assert refused.value.code == "unsupported_dicom" and refused.value.status == 422


def test_grey_images_are_refused_because_the_analysis_needs_colour():
    grey = np.asarray(Image.fromarray(LESION).convert("L"))
    for transfer_syntax in (ExplicitVRLittleEndian, JPEGBaseline8Bit):
        with pytest.raises(images.UnsupportedDicomError, match="MONOCHROME2 .* need colour"):
            stored(dicom_file(grey, transfer_syntax=transfer_syntax))


def test_the_pixel_limit_is_judged_from_the_header_before_decoding():
    with pytest.raises(images.ImageTooLargeError, match="128x96 = 12288 pixels, above the limit of 10000"):
        images.clean_image(dicom_file(LESION), 10_000)
    # A header claiming a huge image over tiny pixel data is refused before anything is decoded.
    with pytest.raises(images.ImageTooLargeError, match="50000x50000"):
        stored(dicom_file(LESION, Rows=50000, Columns=50000))


def test_the_lossless_encoder_of_the_tests_is_exact():
    from pydicom.pixels.decoders import JPEGLosslessSV1Decoder

    assert JPEGLosslessSV1Decoder.is_available
    stream = jpeg_lossless(LESION)
    import libjpeg

    assert np.array_equal(libjpeg.decode(stream), LESION)
