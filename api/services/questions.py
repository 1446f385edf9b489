"""Questions about an analysis: grounded answers now, a vision-language model's answer later.

The grounded answer (shared.questions) is computed in the request: it reads only the row.
When ``VQA_MODEL_DIR`` names a local BLIP model, its answer is computed off the request path
by one background thread per API process (the model is loaded once, at first use, from local
files only) and written to the same row; until then ``model_answer.status`` is ``pending``.
All SQL for the questions routes lives here.
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.services.owned import get_owned
from shared import lifecycle, vlm
from shared.clock import utcnow
from shared.context import AppContext
from shared.db import after_commit, session_scope
from shared.questions import answer_question, normalise_question
from shared.storage import IMAGES
from shared.tables import Analysis, AnalysisQuestion

log = logging.getLogger(__name__)

MODEL_LABEL = vlm.MODEL_LABEL
MAX_QUESTIONS_LISTED = 500


def ask(
    context: AppContext, session: Session, tenant: TenantRef, analysis_id: uuid.UUID, question: str
) -> AnalysisQuestion:
    analysis = get_owned(session, Analysis, analysis_id, tenant, "analysis")
    question = normalise_question(question)
    grounded = answer_question(question, lifecycle.analysis_record(analysis))
    vqa = context.settings.vqa_model_dir is not None and lifecycle.image_stored(analysis)
    row = AnalysisQuestion(
        analysis_id=analysis.id,
        tenant_id=analysis.tenant_id,
        question=question,
        answer=grounded.as_dict(),
        model_answer={"status": "pending", "label": MODEL_LABEL} if vqa else None,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    if vqa:
        row_id, image_key = row.id, analysis.image_key
        after_commit(session, lambda: model_answers(context).submit(row_id, image_key, question))
    return row


def list_for(session: Session, tenant: TenantRef, analysis_id: uuid.UUID) -> list[AnalysisQuestion]:
    analysis = get_owned(session, Analysis, analysis_id, tenant, "analysis")
    return list(
        session.execute(
            select(AnalysisQuestion)
            .where(AnalysisQuestion.analysis_id == analysis.id)
            .order_by(AnalysisQuestion.created_at, AnalysisQuestion.id)
            .limit(MAX_QUESTIONS_LISTED)
        ).scalars()
    )


# ---------------------------------------------------------------- the optional model


class ModelAnswers:
    """One thread per process answers queued questions in order, so a slow model never holds a
    request and at most one model inference runs in the API process at a time."""

    def __init__(self, context: AppContext):
        self.context = context
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vqa")
        self._model: vlm.VisionLanguageModel | None = None

    def submit(self, question_id: uuid.UUID, image_key: str, question: str) -> None:
        self._executor.submit(self._run, question_id, image_key, question)

    def _load(self) -> vlm.VisionLanguageModel:
        directory = self.context.settings.vqa_model_dir
        if directory is None:
            raise RuntimeError("VQA_MODEL_DIR is not set")
        if self._model is None:
            self._model = vlm.load(Path(directory))
        return self._model

    def _run(self, question_id: uuid.UUID, image_key: str, question: str) -> None:
        try:
            model = self._load()
            text = model.answer(self.context.store.get(IMAGES, image_key), question)
            outcome = {"status": "done", "text": text, "model": model.name, "label": MODEL_LABEL}
        except Exception as exc:  # a broken model directory must not lose the grounded answer
            log.warning("vision-language model answer failed: %s", type(exc).__name__)
            detail = f"the model could not answer ({type(exc).__name__})"
            outcome = {"status": "failed", "detail": detail, "label": MODEL_LABEL}
        with session_scope(self.context.session_factory) as session:
            row = session.get(AnalysisQuestion, question_id)
            if row is not None:
                row.model_answer = outcome


_runners: dict[int, ModelAnswers] = {}
_runners_lock = threading.Lock()


def model_answers(context: AppContext) -> ModelAnswers:
    """The process' runner for this context, built at first use (nothing at import time)."""
    with _runners_lock:
        runner = _runners.get(id(context))
        if runner is None:
            runner = _runners[id(context)] = ModelAnswers(context)
        return runner
