"""The PDF report for one analysis, rendered with reportlab.

Pure function of its inputs: the same analysis and image bytes give the same PDF bytes
(reportlab's invariant mode fixes the document id; the creation date is the analysis' own,
when it finished, not reportlab's invariant 2000-01-01: issue 25).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast
from xml.sax.saxutils import escape

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from shared import clinical
from shared.clinical import disposition
from shared.model_cards import card_url
from shared.schemas.analyses import AnalysisRecord, AnalysisResult, Equity
from worker.reporting import wording
from worker.reporting.scribe import build_scribe_note

PAGE_WIDTH, PAGE_HEIGHT = A4
MARGIN = 15 * mm
CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN
# Embedded pictures are downscaled to this many pixels on the long side: sharp at the
# printed size while keeping the PDF small and quick to build.
MAX_IMAGE_PX = 640
# Streams (page content, the embedded JPEGs) are stored binary, Flate- or DCT-coded, not also
# ASCII85-armoured: reportlab's pure-Python ASCII85 encoder was half of a report's CPU (issue 27),
# and the file is 20% smaller. Every PDF reader takes binary streams (PDF 1.0 onwards).
rl_config.useA85 = 0

BAND_COLOURS = {
    "high": colors.HexColor("#c62828"),
    "medium": colors.HexColor("#ef8f00"),
    "low": colors.HexColor("#2e7d32"),
}
ZONE_COLOURS = {"low": "#e8f5e9", "medium": "#fff3e0", "high": "#ffebee"}
# Output from weights that are not trained is drawn in grey: no green "safe", no red "alarm".
NEUTRAL = colors.HexColor("#757575")
NEUTRAL_ZONE = "#eeeeee"
INK = colors.HexColor("#1a1a1a")
MUTED = colors.HexColor("#5f6368")
RULE = colors.HexColor("#d0d4d9")
PANEL = colors.HexColor("#f3f5f7")
WARN_FILL = colors.HexColor("#fff4e0")
WARN_EDGE = colors.HexColor("#ef8f00")
# The disposition box: (edge, fill) by disposition; from weights that are not trained it is grey.
DISPOSITION_COLOURS = {
    disposition.URGENT_REFERRAL: (BAND_COLOURS["high"], colors.HexColor(ZONE_COLOURS["high"])),
    disposition.CLINICIAN_REVIEW: (WARN_EDGE, WARN_FILL),
    disposition.ROUTINE: (BAND_COLOURS["low"], colors.HexColor(ZONE_COLOURS["low"])),
}

_base = getSampleStyleSheet()
STYLES = {
    "title": ParagraphStyle("title", parent=_base["Title"], fontSize=16, leading=19, spaceAfter=1, alignment=0),
    "subtitle": ParagraphStyle("subtitle", parent=_base["Normal"], fontSize=8.5, textColor=MUTED, leading=11),
    "h2": ParagraphStyle(
        "h2", parent=_base["Heading2"], fontSize=11, leading=14, spaceBefore=7, spaceAfter=3, textColor=INK
    ),
    "body": ParagraphStyle("body", parent=_base["Normal"], fontSize=9, leading=12, textColor=INK),
    "small": ParagraphStyle("small", parent=_base["Normal"], fontSize=7.5, leading=9.5, textColor=MUTED),
    "cell": ParagraphStyle("cell", parent=_base["Normal"], fontSize=8.5, leading=10.5, textColor=INK),
    "cellkey": ParagraphStyle("cellkey", parent=_base["Normal"], fontSize=8, leading=10.5, textColor=MUTED),
    "hash": ParagraphStyle(
        "hash", parent=_base["Normal"], fontName="Courier", fontSize=6.8, leading=9, textColor=INK
    ),
    "note": ParagraphStyle(
        "note", parent=_base["Normal"], fontSize=8.5, leading=11, textColor=INK, leftIndent=8, firstLineIndent=-8
    ),
    "notehead": ParagraphStyle(
        "notehead",
        parent=_base["Normal"],
        fontName="Helvetica-Bold",
        fontSize=8.5,
        leading=12,
        spaceBefore=3,
        textColor=INK,
    ),
    "banner": ParagraphStyle(
        "banner",
        parent=_base["Normal"],
        fontName="Helvetica-Bold",
        fontSize=11,
        leading=14,
        textColor=colors.white,
        alignment=TA_CENTER,
    ),
    "headline": ParagraphStyle(
        "headline", parent=_base["Normal"], fontName="Helvetica-Bold", fontSize=12, leading=15, textColor=INK
    ),
    "caption": ParagraphStyle(
        "caption", parent=_base["Normal"], fontSize=7.5, leading=9, textColor=MUTED, alignment=TA_CENTER
    ),
    "disposition": ParagraphStyle(
        "disposition", parent=_base["Normal"], fontName="Helvetica-Bold", fontSize=13, leading=16, textColor=INK
    ),
}


def render_report(record: AnalysisRecord, image: bytes | None, overlay_png: bytes | None) -> bytes:
    story = _header(record)
    if record.status == "succeeded" and record.result is not None:
        story += _succeeded_body(record, record.result, image, overlay_png)
    elif record.status == "rejected":
        story += _rejected_body(record, image)
    else:
        story += _failed_body(record)
    story += _provenance(record)

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + 12 * mm,
        title=f"DermaSentinel report {record.id}",
        author="DermaSentinel (automated)",
        subject="Melanoma screening report — research use, not a medical device",
        creator="DermaSentinel",
        invariant=1,
    )
    decorate = _page_decorator(record)
    doc.build(story, onFirstPage=decorate, onLaterPages=decorate)
    return buffer.getvalue()


def pdf_date(record: AnalysisRecord) -> str:
    """The PDF's CreationDate and ModDate (``D:YYYYMMDDHHmmSS+00'00'``): when the analysis
    finished (else when it was created), so the same analysis always gives the same bytes."""
    moment = datetime.fromisoformat((record.completed_at or record.created_at).replace("Z", "+00:00"))
    return moment.astimezone(UTC).strftime("D:%Y%m%d%H%M%S+00'00'")


def _page_decorator(record: AnalysisRecord) -> Callable[[Canvas, SimpleDocTemplate], None]:
    watermark = wording.watermark(record)
    analysis_id = str(record.id)
    created = pdf_date(record)

    def decorate(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        canvas.setDateFormatter(lambda *_: created)  # the document info's dates (issue 25)
        canvas.saveState()
        canvas.setStrokeColor(RULE)
        canvas.line(MARGIN, MARGIN + 9 * mm, PAGE_WIDTH - MARGIN, MARGIN + 9 * mm)
        footer = Paragraph(escape(clinical.DISCLAIMER), STYLES["small"])
        _, h = footer.wrap(CONTENT_WIDTH - 30 * mm, 10 * mm)
        footer.drawOn(canvas, MARGIN, MARGIN + 8 * mm - h)
        canvas.setFont("Helvetica", 7)
        canvas.setFillColor(MUTED)
        canvas.drawRightString(PAGE_WIDTH - MARGIN, MARGIN + 5 * mm, f"Page {doc.page}")
        canvas.drawRightString(PAGE_WIDTH - MARGIN, MARGIN + 1.5 * mm, analysis_id[:8])
        if watermark:
            # Drawn last on the page so no picture or panel can cover it.
            canvas.translate(PAGE_WIDTH / 2, PAGE_HEIGHT / 2)
            canvas.rotate(54.7)
            canvas.setFillColor(colors.HexColor("#d32f2f"))
            canvas.setFillAlpha(0.16)
            diagonal = (PAGE_WIDTH**2 + PAGE_HEIGHT**2) ** 0.5
            size = 0.8 * diagonal / canvas.stringWidth(watermark, "Helvetica-Bold", 1)
            canvas.setFont("Helvetica-Bold", size)
            canvas.drawCentredString(0, -size / 3, watermark)
        canvas.restoreState()

    return decorate


def _header(record: AnalysisRecord) -> list:
    story: list = [
        Paragraph("DermaSentinel — Melanoma Screening Report", STYLES["title"]),
        Paragraph(
            "Automated dermoscopic lesion analysis. Research use only — not a certified medical device.",
            STYLES["subtitle"],
        ),
        Spacer(1, 4),
    ]
    banner = wording.banner(record)
    if banner:
        story += [_banner(banner, colors.HexColor("#c62828")), Spacer(1, 4)]
    story.append(_metadata_table(record))
    return story


def _banner(text: str, colour: colors.Color) -> Table:
    table = Table([[Paragraph(escape(text), STYLES["banner"])]], colWidths=[CONTENT_WIDTH])
    table.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), colour),
                ("TOPPADDING", (0, 0), (-1, -1), 5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
            ]
        )
    )
    return table


def _metadata_table(record: AnalysisRecord) -> Table:
    inputs = record.inputs
    spacing, age = inputs.pixel_spacing_mm, inputs.age
    pairs = [
        ("Analysis id", str(record.id)),
        ("Status", record.status),
        ("External reference", record.external_id or "none given"),
        ("Created", record.created_at or "—"),
        ("Age", str(age) if age is not None else "not given"),
        ("Completed", record.completed_at or "—"),
        ("Sex", inputs.sex),
        ("Body site", inputs.site),
        ("Pixel spacing", f"{spacing:g} mm/px" if spacing is not None else "not given"),
        ("Model weights", record.model.weights if record.model is not None else clinical.UNKNOWN_WEIGHTS),
    ]
    rows = []
    for i in range(0, len(pairs), 2):
        row = []
        for key, value in pairs[i : i + 2]:
            row += [Paragraph(escape(key), STYLES["cellkey"]), Paragraph(escape(str(value)), STYLES["cell"])]
        rows.append(row)
    widths = [30 * mm, 66 * mm, 26 * mm, CONTENT_WIDTH - 122 * mm]
    table = Table(rows, colWidths=widths)
    table.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), PANEL),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                ("BOX", (0, 0), (-1, -1), 0.5, RULE),
            ]
        )
    )
    return table


def _succeeded_body(
    record: AnalysisRecord, result: AnalysisResult, image: bytes | None, overlay_png: bytes | None
) -> list:
    band, prob, unc = result.risk_band, result.probability, result.uncertainty
    banner = wording.banner(record)
    colour = NEUTRAL if banner else BAND_COLOURS[band]
    headline = (
        f'Risk band: <font color="{colour.hexval().replace("0x", "#")}">{band.upper()}</font>'
        f" — malignancy probability {wording.fmt_prob(prob)} ± {wording.fmt_prob(unc)}"
        f" (model output: {escape(result.diagnosis)})"
    )
    story: list = [Spacer(1, 6), _disposition_box(record, result), Spacer(1, 6)]
    story += [Paragraph(headline, STYLES["headline"]), Spacer(1, 3)]
    if banner:
        weights = wording.weights(record) or clinical.UNKNOWN_WEIGHTS
        story.append(Paragraph(f"<b>Model weights: {escape(weights)}.</b> {escape(banner)}.", STYLES["body"]))
        story.append(Spacer(1, 2))
    threshold = wording.threshold(record)
    story.append(ProbabilityBar(prob, unc, band, threshold, neutral=bool(banner)))
    ranges = clinical.risk_band_ranges(threshold)
    story.append(
        Paragraph(
            f"Bar: probability with ± 1 SD whisker over {len(result.tta_probabilities)} "
            f"test-time views; uncertainty {_uncertainty_words(record, unc)}. Zones: low {ranges['low']}, "
            f"medium {ranges['medium']}, high {ranges['high']}; "
            f"{escape(wording.operating_point_text(record.model))}.",
            STYLES["small"],
        )
    )

    story.append(Paragraph("Image and lesion overlay", STYLES["h2"]))
    story.append(_image_row(image, overlay_png))

    segmenter = record.model.segmenter if record.model is not None else "unknown"
    abcd: list[Flowable] = [Paragraph("ABCD features", STYLES["h2"])]
    abcd.append(ScoreBars([(label, score) for _, label, score in wording.concept_scores(result.concepts)]))
    abcd.append(Spacer(1, 3))
    abcd.append(Paragraph(f"<b>Diameter:</b> {escape(wording.diameter_text(result.concepts))}.", STYLES["body"]))
    abcd.append(
        Paragraph(
            f"<b>Lesion coverage:</b> {wording.fmt_percent(result.segmentation.coverage)} of the image"
            f" ({escape(segmenter)} segmenter).",
            STYLES["body"],
        )
    )
    story.append(KeepTogether(abcd))

    story.append(Paragraph("Equity note", STYLES["h2"]))
    story.append(_equity_panel(result.equity))

    story += _scribe_section(result.scribe_note or build_scribe_note(record))
    return story


def _uncertainty_words(record: AnalysisRecord, uncertainty: float) -> str:
    """The uncertainty level, never "low" (or any level) from weights that are not trained."""
    if wording.is_untrained(record):
        return "not assessable (weights not trained)"
    return clinical.uncertainty_level(uncertainty)


def _disposition_box(record: AnalysisRecord, result: AnalysisResult) -> Table:
    """What should happen next, first after the header: the disposition, why, and for routine
    the safety netting; grey, saying the findings cannot be assessed, from weights not trained."""
    headline, lines = wording.disposition_lines(record, result)
    untrained = wording.is_untrained(record)
    rows: list[list[Flowable]] = [[Paragraph(f"Disposition: {escape(headline)}", STYLES["disposition"])]]
    if untrained:
        rows.append([Paragraph(f"<b>{escape(clinical.NOT_ASSESSABLE)}</b>", STYLES["body"])])
    rows += [[Paragraph(escape(line), STYLES["body"])] for line in lines]
    decision = clinical.disposition_of(result, record.model)
    edge, fill = (NEUTRAL, PANEL) if untrained else DISPOSITION_COLOURS[decision.disposition]
    table = Table(rows, colWidths=[CONTENT_WIDTH])
    table.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), fill),
                ("BOX", (0, 0), (-1, -1), 1.5, edge),
                ("LEFTPADDING", (0, 0), (-1, -1), 6),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                ("TOPPADDING", (0, 0), (-1, 0), 5),
                ("BOTTOMPADDING", (0, -1), (-1, -1), 6),
            ]
        )
    )
    return table


def _rejected_body(record: AnalysisRecord, image: bytes | None) -> list:
    rejection = record.rejection
    code = rejection.code if rejection is not None else "unknown"
    detail = rejection.detail if rejection is not None else "none"
    story: list = [Spacer(1, 8), _banner(f"IMAGE REJECTED — {code}: no lesion assessment was made", WARN_EDGE)]
    story.append(Paragraph("Why", STYLES["h2"]))
    story.append(Paragraph(escape(clinical.rejection_reason(code)), STYLES["body"]))
    story.append(Paragraph(f"Detail: {escape(detail)}", STYLES["body"]))
    story.append(Paragraph("What to do", STYLES["h2"]))
    story.append(Paragraph(escape(clinical.retake_advice(code)), STYLES["body"]))
    picture = _flowable_image(image, 60 * mm) if image else None
    if picture is not None:
        story += [Paragraph("Submitted image", STYLES["h2"]), picture]
    return story


def _failed_body(record: AnalysisRecord) -> list:
    """A failed analysis, and any other without findings (canceled, unfinished)."""
    error = record.error
    story: list = [
        Spacer(1, 8),
        _banner("SYSTEM ERROR — the analysis could not be completed", colors.HexColor("#455a64")),
    ]
    story.append(Paragraph("What happened", STYLES["h2"]))
    code = escape(error.code if error is not None else "unknown")
    detail = escape(error.detail if error is not None else "no detail")
    story.append(Paragraph(f"Error {code}: {detail}", STYLES["body"]))
    story.append(Paragraph("What to do", STYLES["h2"]))
    story.append(Paragraph(escape(clinical.FAILED_ADVICE), STYLES["body"]))
    return story


def _provenance(record: AnalysisRecord) -> list:
    model = record.model
    rows = [[Paragraph(h, STYLES["cellkey"]) for h in ("Model", "Name", "Version", "sha256")]]
    if model is not None and model.scalpel is not None:
        scalpel = model.scalpel
        sha256 = scalpel.sha256 or "none"
        rows.append(_model_row(f"Segmenter ({model.segmenter})", scalpel.name, scalpel.version, sha256))
    else:
        segmenter = f"Segmenter ({model.segmenter if model is not None else 'classical'})"
        rows.append(_model_row(segmenter, "colour-threshold", "—", "no checkpoint"))
    if model is not None and model.fusion is not None:
        fusion = model.fusion
        seed = f" (seed {fusion.seed})" if fusion.seed is not None else ""
        sha256 = fusion.sha256 or "none — untrained"
        rows.append(_model_row("Classifier", fusion.name, f"{fusion.version}{seed}", sha256))
    table = Table(rows, colWidths=[26 * mm, 30 * mm, 25 * mm, CONTENT_WIDTH - 81 * mm])
    table.setStyle(
        TableStyle(
            [
                ("LINEBELOW", (0, 0), (-1, 0), 0.5, RULE),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
            ]
        )
    )
    story: list = [Paragraph("Model provenance", STYLES["h2"]), table]
    story.append(
        Paragraph(
            f"Operating points: {escape(wording.operating_point_text(model))}; "
            f"{escape(wording.thresholds_text(model))}.",
            STYLES["small"],
        )
    )
    if model is not None and model.training_data:
        story.append(Paragraph(f"Training data (model card): {escape(model.training_data)}", STYLES["small"]))
    # Issue 24: each registered model's card, by its API path (the tenant's API serves it).
    cards = [(role, checkpoint.registry_id) for role, checkpoint in (
        ("classifier", model.fusion if model is not None else None),
        ("segmenter", model.scalpel if model is not None else None),
    ) if checkpoint is not None and checkpoint.registry_id]
    for role, registry_id in cards:
        story.append(Paragraph(f"Model card ({role}): {escape(card_url(registry_id))}", STYLES["small"]))
    return [KeepTogether(story)]


def _model_row(role: str, name: str, version: str, sha: str) -> list:
    return [
        Paragraph(escape(role), STYLES["cell"]),
        Paragraph(escape(name), STYLES["cell"]),
        Paragraph(escape(version), STYLES["cell"]),
        Paragraph(escape(sha), STYLES["hash"]),
    ]


NOTE_SECTIONS = ("FINDINGS", "ASSESSMENT", "DISPOSITION", "PLAN")


def _scribe_section(note: str) -> list:
    story: list = [Paragraph("AI Scribe note", STYLES["h2"])]
    lines = note.splitlines()
    # The banner, ids and inputs above the first section are already in the report header.
    body = lines[lines.index("FINDINGS") :] if "FINDINGS" in lines else lines
    section = None
    for line in body:
        if line in NOTE_SECTIONS:
            section = line
        if section == "DISPOSITION":
            continue  # the disposition box at the top says it
        if not line.strip() or line.startswith(("Provenance:", "Disclaimer:")):
            # Provenance and disclaimer have their own table and footer on every page.
            continue
        if line in NOTE_SECTIONS:
            story.append(Paragraph(line, STYLES["notehead"]))
        elif line.startswith("- "):
            story.append(Paragraph("• " + escape(line[2:]), STYLES["note"]))
        else:
            story.append(Paragraph(escape(line), STYLES["note"]))
    return story


def _equity_panel(equity: Equity) -> Table:
    warn = equity.bias_warning
    table = Table([[Paragraph(escape(wording.equity_text(equity)), STYLES["body"])]], colWidths=[CONTENT_WIDTH])
    table.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), WARN_FILL if warn else PANEL),
                ("BOX", (0, 0), (-1, -1), 1 if warn else 0.5, WARN_EDGE if warn else RULE),
                ("TOPPADDING", (0, 0), (-1, -1), 4),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 5),
            ]
        )
    )
    return table


def _image_row(image: bytes | None, overlay_png: bytes | None) -> Table:
    width = (CONTENT_WIDTH - 8 * mm) / 2
    base = _open_image(image)
    overlay = _open_image(overlay_png, keep_alpha=True)
    if base is not None and overlay is not None and overlay.mode == "RGBA":
        # A transparent overlay is a mask layer: lay it on the photograph so the outline sits on the lesion.
        overlay = PILImage.alpha_composite(base.convert("RGBA"), overlay.resize(base.size)).convert("RGB")
    cells = [
        _picture_or_placeholder(base, width, "Submitted dermoscopic image"),
        _picture_or_placeholder(overlay, width, "Lesion segmentation overlay"),
    ]
    table = Table([cells], colWidths=[width + 4 * mm, width + 4 * mm])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("ALIGN", (0, 0), (-1, -1), "CENTER")]))
    return table


def _picture_or_placeholder(picture: PILImage.Image | None, width: float, caption: str) -> list:
    if picture is None:
        return [Paragraph("(not available)", STYLES["caption"]), Paragraph(escape(caption), STYLES["caption"])]
    return [_image_flowable(picture, width, 52 * mm), Spacer(1, 2), Paragraph(escape(caption), STYLES["caption"])]


def _flowable_image(data: bytes, width: float) -> Image | None:
    picture = _open_image(data)
    return _image_flowable(picture, width, width) if picture is not None else None


def _open_image(data: bytes | None, keep_alpha: bool = False) -> PILImage.Image | None:
    if not data:
        return None
    try:
        picture = PILImage.open(io.BytesIO(data))
        size = _thumbnail_size(picture.width, picture.height)
        if picture.format == "JPEG":
            picture.draft(None, size)  # a large photo decodes DCT-scaled, never below ``size`` (as thumbnail did)
        picture.load()
    except (UnidentifiedImageError, OSError):
        return None
    mode = "RGBA" if keep_alpha and picture.mode in ("RGBA", "LA", "P") and _has_transparency(picture) else "RGB"
    converted = picture.convert(mode)
    if converted.size == size:
        return converted
    # Area averaging in OpenCV: antialiased like Pillow's thumbnail (bicubic), at half its CPU.
    return PILImage.fromarray(cv2.resize(np.asarray(converted), size, interpolation=cv2.INTER_AREA))


def _thumbnail_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) with the long side at most ``MAX_IMAGE_PX``, the aspect ratio kept."""
    scale = min(1.0, MAX_IMAGE_PX / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _has_transparency(picture: PILImage.Image) -> bool:
    if picture.mode == "P":
        return "transparency" in picture.info
    lowest, _ = cast(tuple[float, float], picture.getchannel("A").getextrema())  # one band: (min, max)
    return lowest < 255


def _image_flowable(picture: PILImage.Image, max_width: float, max_height: float) -> Image:
    scale = min(max_width / picture.width, max_height / picture.height)
    encoded = io.BytesIO()
    picture.save(encoded, format="JPEG", quality=88)
    encoded.seek(0)
    flowable = Image(encoded, width=picture.width * scale, height=picture.height * scale)
    flowable.hAlign = "CENTER"
    return flowable


class ScoreBars(Flowable):
    """Horizontal 0..1 bars, one per ABCD concept, with value and plain-language grade."""

    row_height = 6 * mm

    def __init__(self, rows: list[tuple[str, float]]) -> None:
        super().__init__()
        self.rows = rows

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        self.width = min(avail_width, CONTENT_WIDTH)
        self.height = self.row_height * len(self.rows)
        return self.width, self.height

    def draw(self) -> None:
        c = self.canv
        label_w, value_w = 38 * mm, 32 * mm
        bar_w = self.width - label_w - value_w
        for i, (label, score) in enumerate(self.rows):
            y = self.height - (i + 1) * self.row_height + 1.5 * mm
            c.setFont("Helvetica", 8.5)
            c.setFillColor(INK)
            c.drawString(0, y + 0.6 * mm, label)
            c.setFillColor(PANEL)
            c.setStrokeColor(RULE)
            c.rect(label_w, y, bar_w, 3.2 * mm, fill=1, stroke=1)
            c.setFillColor(_grade_colour(score))
            c.rect(label_w, y, bar_w * max(0.0, min(1.0, score)), 3.2 * mm, fill=1, stroke=0)
            c.setStrokeColor(MUTED)
            for quarter in (0.25, 0.5, 0.75):
                x = label_w + bar_w * quarter
                c.line(x, y, x, y + 3.2 * mm)
            c.setFillColor(INK)
            c.drawString(label_w + bar_w + 3 * mm, y + 0.6 * mm, f"{score:.2f}  {clinical.concept_grade(score)}")


GRADE_COLOURS = {
    "minimal": colors.HexColor("#8bc34a"),
    "mild": colors.HexColor("#cddc39"),
    "moderate": colors.HexColor("#ffb300"),
    "marked": colors.HexColor("#e53935"),
}


def _grade_colour(score: float) -> colors.Color:
    return GRADE_COLOURS[clinical.concept_grade(score)]


class ProbabilityBar(Flowable):
    """0..1 scale with the risk-band zones, a marker at the probability and a ± SD whisker."""

    def __init__(self, probability: float, uncertainty: float, band: str, threshold: float | None = None,
                 neutral: bool = False) -> None:
        super().__init__()
        self.probability = probability
        self.uncertainty = uncertainty
        self.band = band
        self.threshold = threshold
        self.neutral = neutral

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        self.width = min(avail_width, CONTENT_WIDTH)
        self.height = 15 * mm
        return self.width, self.height

    def draw(self) -> None:
        c = self.canv
        x0, bar_w, y, h = 2 * mm, self.width - 4 * mm, 6 * mm, 4 * mm
        zones = clinical.risk_zones(self.threshold)
        for lo, hi, zone in zones:
            c.setFillColor(colors.HexColor(NEUTRAL_ZONE if self.neutral else ZONE_COLOURS[zone]))
            c.rect(x0 + bar_w * lo, y, bar_w * (hi - lo), h, fill=1, stroke=0)
        c.setStrokeColor(RULE)
        c.rect(x0, y, bar_w, h, fill=0, stroke=1)
        c.setFillColor(NEUTRAL if self.neutral else BAND_COLOURS[self.band])
        c.rect(x0, y + h * 0.3, bar_w * self.probability, h * 0.4, fill=1, stroke=0)

        lo = max(0.0, self.probability - self.uncertainty)
        hi = min(1.0, self.probability + self.uncertainty)
        mid = y + h / 2
        c.setStrokeColor(INK)
        c.setLineWidth(1)
        c.line(x0 + bar_w * lo, mid, x0 + bar_w * hi, mid)
        for end in (lo, hi):
            c.line(x0 + bar_w * end, mid - 1.6 * mm, x0 + bar_w * end, mid + 1.6 * mm)
        px = x0 + bar_w * self.probability
        c.setFillColor(INK)
        path = c.beginPath()
        path.moveTo(px, y + h + 0.3 * mm)
        path.lineTo(px - 1.6 * mm, y + h + 3 * mm)
        path.lineTo(px + 1.6 * mm, y + h + 3 * mm)
        path.close()
        c.drawPath(path, fill=1, stroke=0)

        c.setFont("Helvetica", 7)
        c.setFillColor(MUTED)
        ticks = sorted({0.0, 1.0} | {lo for lo, _, _ in zones})
        # Quarter marks too, where they do not crowd a zone edge's label.
        ticks += [q for q in (0.25, 0.5, 0.75) if all(abs(q - t) > 0.1 for t in ticks)]
        for tick in ticks:
            c.drawCentredString(x0 + bar_w * tick, y - 3.5 * mm, f"{tick:.2f}")
