"""Log lines: JSON with the bound ids, patient metadata never, one format for library loggers."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from shared.config import Settings
from shared.logs import configure_logging, get_logger, log_context


@pytest.fixture
def captured():
    stream = io.StringIO()

    def configure(fmt: str = "json") -> io.StringIO:
        configure_logging(Settings(_env_file=None, log_format=fmt), stream=stream)
        return stream

    yield configure
    structlog.reset_defaults()
    for handler in list(logging.getLogger().handlers):
        if handler.get_name() == "dermasentinel":
            logging.getLogger().removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_lines_are_json_with_the_bound_ids(captured):
    stream = captured()
    with log_context(request_id="req-12345678", analysis_id="a-1", batch_id=None, tenant_id="t-1"):
        get_logger("dermasentinel.test").info("analysis recorded", status="succeeded")
    (line,) = lines(stream)
    assert line["event"] == "analysis recorded" and line["status"] == "succeeded"
    assert line["request_id"] == "req-12345678" and line["analysis_id"] == "a-1" and line["tenant_id"] == "t-1"
    assert "batch_id" not in line  # unbound ids are left out, not written as null
    assert line["level"] == "info" and line["timestamp"].endswith("Z")


def test_patient_metadata_never_reaches_a_line_whoever_binds_it(captured):
    stream = captured()
    logger = get_logger("dermasentinel.test")
    with log_context(analysis_id="a-2", external_id="MRN-0042"):
        logger.info("submitted", age=47, sex="female", site="torso", notes="mole on back",
                    detail={"external_id": "MRN-0042", "size": 3})
    logging.getLogger("celery.app.trace").info("stdlib line", extra={"age": 47, "external_id": "MRN-0042"})
    written = stream.getvalue()
    for phi in ("MRN-0042", "female", "torso", "mole on back", '"age"'):
        assert phi not in written, phi
    first, second = lines(stream)
    assert first["analysis_id"] == "a-2" and first["detail"] == {"size": 3}
    assert second["event"] == "stdlib line"


def test_library_loggers_share_the_format_and_context(captured):
    stream = captured()
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(logging.StreamHandler(io.StringIO()))  # as uvicorn's own config does
    uvicorn_error.propagate = False
    stream = captured()  # the API factory configures after uvicorn did
    with log_context(request_id="req-abcdefgh"):
        logging.getLogger("celery.worker").warning("connection lost %s", "broker")
        uvicorn_error.error("server error")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("sqlalchemy.pool").exception("pool failure")
    celery_line, uvicorn_line, sqlalchemy_line = lines(stream)
    assert celery_line["event"] == "connection lost broker" and celery_line["logger"] == "celery.worker"
    assert uvicorn_line["request_id"] == "req-abcdefgh" and uvicorn_line["level"] == "error"
    assert "ValueError: boom" in sqlalchemy_line["exception"]


def test_console_format_is_for_people(captured):
    stream = captured("console")
    with log_context(analysis_id="a-3"):
        get_logger("dermasentinel.test").info("report rendered", age=50)
    text = stream.getvalue()
    assert "report rendered" in text and "analysis_id=a-3" in text and "age" not in text
    with pytest.raises(ValueError):
        json.loads(text.splitlines()[0])
