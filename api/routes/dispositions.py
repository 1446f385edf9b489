"""/v1/dispositions: the dispositions and their reason codes in words, as every report words
them (shared.clinical). Clients key on the stable codes a result carries and show these
sentences; the web app keeps no copy of them."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from api.deps import authorized
from shared import clinical
from shared.clinical import disposition
from shared.clinical.disposition import Disposition
from shared.schemas.common import ResponseModel
from shared.scopes import Scope

router = APIRouter(prefix="/v1/dispositions", tags=["analyses"])


class DispositionWords(ResponseModel):
    code: Disposition
    text: str = Field(description="The disposition in words, e.g. `Urgent referral`")
    plan: str = Field(description="What it asks for (the PLAN line of reports from trained weights)")


class ReasonWords(ResponseModel):
    code: str = Field(description="A stable code of `result.disposition_reasons`")
    text: str


class DispositionVocabulary(ResponseModel):
    dispositions: list[DispositionWords] = Field(description="In triage order: the most urgent first")
    reasons: list[ReasonWords]
    not_assessable: str = Field(description="Said of every result from weights that are not `trained`")
    not_recorded: str = Field(description="Said of a result stored before dispositions existed (null disposition)")


def vocabulary() -> DispositionVocabulary:
    return DispositionVocabulary(
        dispositions=[
            DispositionWords(code=code, text=disposition.DISPOSITION_TEXT[code], plan=clinical.DISPOSITION_PLAN[code])
            for code in disposition.DISPOSITIONS
        ],
        reasons=[ReasonWords(code=code, text=text) for code, text in disposition.REASON_TEXT.items()],
        not_assessable=clinical.NOT_ASSESSABLE,
        not_recorded=clinical.DISPOSITION_NOT_RECORDED,
    )


@router.get(
    "",
    summary="The dispositions and their reasons in words",
    description="What `result.disposition` and each code of `result.disposition_reasons` (and of the triage "
    "list's `disposition_reasons`) mean, in the wording of the reports: show these, key on the codes. "
    "Research use only, not a certified medical device.",
    response_model=DispositionVocabulary,
    # The vocabulary holds no patient data: any key that may read results may read it, unaudited.
    dependencies=[authorized(Scope.analyses_read, "dispositions.read", "vocabulary", audited=False)],
)
def get_dispositions() -> DispositionVocabulary:
    return vocabulary()
