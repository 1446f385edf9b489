"""/v1/analyses/{id}/questions: ask about one analysis; list what was asked (audit)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.auth import AuthenticatedTenant
from api.deps import ContextDep, SessionDep, authorized, parse_id
from api.problems import problems
from api.services import questions as service
from shared import clinical
from shared.clock import iso
from shared.questions import MAX_QUESTION_CHARS
from shared.scopes import Scope
from shared.tables import AnalysisQuestion

router = APIRouter(prefix="/v1/analyses", tags=["questions"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
AskQuestion = Annotated[AuthenticatedTenant, authorized(Scope.analyses_read, "question.ask", "analysis", "analysis_id")]
ListQuestions = Annotated[
    AuthenticatedTenant, authorized(Scope.analyses_read, "question.list", "analysis", "analysis_id")
]

class QuestionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    question: str = Field(
        min_length=1, max_length=MAX_QUESTION_CHARS, description="free text, one question",
        pattern=r"^[^\x00]*[^\s\x00][^\x00]*$",  # something besides spaces, and no NUL byte
    )


class GroundedAnswerOut(BaseModel):
    text: str
    cited: list[str] = Field(
        description="the analysis fields the answer was built from, e.g. result.concepts.asymmetry"
    )
    intents: list[str] = Field(description="the intents matched (docs/CLINICIANS.md lists them)")
    grounded: bool = True
    outside_scope: bool = Field(description="true when the question is about something the analysis did not measure")


class ModelAnswerOut(BaseModel):
    status: Literal["pending", "done", "failed"]
    text: str | None = None
    model: str | None = None
    label: str = service.MODEL_LABEL
    detail: str | None = None


class QuestionOut(BaseModel):
    id: str
    analysis_id: str
    question: str
    answer: GroundedAnswerOut
    model_answer: ModelAnswerOut | None = Field(
        default=None, description="only when the operator configured a local vision-language model (VQA_MODEL_DIR)"
    )
    created_at: str | None
    disclaimer: str = clinical.ANSWER_DISCLAIMER


class QuestionList(BaseModel):
    data: list[QuestionOut]


PROBLEMS = problems((404, "No analysis with this id for this tenant (another tenant's id answers 404 too)"))


def _out(row: AnalysisQuestion) -> QuestionOut:
    return QuestionOut(
        id=str(row.id),
        analysis_id=str(row.analysis_id),
        question=row.question,
        answer=GroundedAnswerOut(**row.answer),
        model_answer=ModelAnswerOut(**row.model_answer) if row.model_answer else None,
        created_at=iso(row.created_at),
    )


@router.post(
    "/{analysis_id}/questions",
    status_code=201,
    response_model=QuestionOut,
    responses={**PROBLEMS, **problems((422, "The question is empty or longer than 500 characters"))},
    summary="Ask a question about an analysis: an answer grounded in its own findings",
    description=(
        "The answer is built only from this analysis' fields and `cited` names each one; a question "
        "about something the analysis did not measure says so (`outside_scope`). Deterministic: the "
        "same question about the same analysis gets the same answer. With an untrained classifier, "
        "answers about diagnosis, probability or risk say so. When the operator configured a local "
        "vision-language model, `model_answer` is filled shortly after (status `pending`, then `done`), "
        "labelled as the model's and unverified. Questions and answers are stored (GET lists them)."
    ),
)
def ask_question(
    analysis_id: str, body: QuestionIn, context: ContextDep, tenant: AskQuestion, session: SessionDep
) -> QuestionOut:
    return _out(service.ask(context, session, tenant, parse_id(analysis_id), body.question))


@router.get(
    "/{analysis_id}/questions",
    response_model=QuestionList,
    responses=PROBLEMS,
    summary="The questions asked about an analysis and their answers, oldest first (audit)",
    description=(
        "Every question asked about this analysis, with the grounded answer and, when a local "
        "vision-language model is configured, the model's answer; oldest first, at most "
        f"{service.MAX_QUESTIONS_LISTED}."
    ),
)
def list_questions(analysis_id: str, tenant: ListQuestions, session: SessionDep) -> QuestionList:
    return QuestionList(data=[_out(row) for row in service.list_for(session, tenant, parse_id(analysis_id))])
