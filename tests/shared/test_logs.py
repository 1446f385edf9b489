"""Log lines: JSON with the bound ids, patient metadata never, one format for library loggers."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest
import structlog

from shared.config import Settings
from shared.logs import (
    HIDE_EXCEPTION_MESSAGE,
    MAX_FRAMES,
    configure_logging,
    flush,
    get_logger,
    log_context,
    stop_background_writer,
)


@pytest.fixture
def captured():
    stream = io.StringIO()

    def configure(fmt: str = "json") -> io.StringIO:
        configure_logging(Settings(_env_file=None, log_format=fmt), stream=stream)
        return stream

    yield configure
    stop_background_writer()
    logging.captureWarnings(False)
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


# --- issue 22: tracebacks bounded, without locals, off the caller's thread ------------------

RAW_KEY = "dsk_Zq3v9Xw8Yt7Us6Rr5Qp4On3Mm2Ll1Kk0JjIiHhGgFfE"


def _fail_deep(depth: int, key: str, external_id: str) -> None:
    # Locals that a traceback printing variables would show: the caller's key, a patient id.
    if depth:
        _fail_deep(depth - 1, key, external_id)
    raise ValueError(f"refused the request of {key}")


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_traceback_is_bounded_shows_no_locals_and_masks_keys(captured, fmt):
    stream = captured(fmt)
    try:
        _fail_deep(200, RAW_KEY, "MRN-LOCAL-4711")
    except ValueError:
        logging.getLogger("api.middleware").exception("unhandled error")
    text = stream.getvalue()
    assert RAW_KEY not in text and RAW_KEY[4:] not in text
    assert "MRN-LOCAL-4711" not in text
    assert "dsk_[masked]" in text  # the message is kept, the key in it masked
    rendered = json.loads(text)["exception"] if fmt == "json" else text
    assert "earlier frames not shown" in rendered
    assert rendered.count('  File "') == MAX_FRAMES
    assert len(rendered.splitlines()) < 3 * MAX_FRAMES


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_line_can_drop_the_exception_message(captured, fmt):
    stream = captured(fmt)
    message = "INSERT failed for external_id MRN-MSG-0815, age 87"
    try:
        raise RuntimeError(message)  # (the traceback shows this source line, not the value)
    except RuntimeError as exc:
        logging.getLogger("api.middleware").error("unhandled error", exc_info=exc,
                                                  extra={HIDE_EXCEPTION_MESSAGE: True})
    text = stream.getvalue()
    assert "MRN-MSG-0815" not in text and "RuntimeError" in text and "Traceback" in text
    assert HIDE_EXCEPTION_MESSAGE not in text


def test_background_lines_are_written_by_another_thread_with_the_callers_context():
    writers: list[str] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            writers.append(threading.current_thread().name)
            return super().write(text)

    stream = Recording()
    configure_logging(Settings(_env_file=None, log_format="json"), stream=stream, background=True)
    try:
        with log_context(request_id="req-background-1"):
            logging.getLogger("uvicorn.error").warning("slow %s", "client")
            try:
                raise KeyError("boom")
            except KeyError:
                get_logger("api.test").exception("structlog line")  # exc_info=True, resolved by the caller
        flush()
        first, second = lines(stream)
    finally:
        stop_background_writer()
        structlog.reset_defaults()
        for handler in list(logging.getLogger().handlers):
            if handler.get_name() == "dermasentinel":
                logging.getLogger().removeHandler(handler)
    assert writers and threading.current_thread().name not in writers
    assert first["event"] == "slow client" and first["request_id"] == "req-background-1"
    assert second["request_id"] == "req-background-1" and "KeyError: 'boom'" in second["exception"]


def test_uvicorn_s_coloured_copy_of_the_message_is_not_written(captured):
    """Issue 25: uvicorn puts its message again, with ANSI colour codes, on its records
    (`color_message`); a JSON line carries the message once, plain."""
    stream = captured()
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]", 7, extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"}
    )
    (line,) = lines(stream)
    assert line["event"] == "Started server process [7]"
    assert "color_message" not in line and "\x1b" not in stream.getvalue()


def test_python_warnings_become_log_lines(captured):
    """Issue 25: Celery's start-up deprecation notices were plain text among the JSON lines."""
    stream = captured()
    import warnings

    warnings.showwarning("broker_connection_retry is deprecated", DeprecationWarning, "celery/app.py", 7)
    (line,) = lines(stream)
    assert line["logger"] == "py.warnings" and "broker_connection_retry is deprecated" in line["event"]
