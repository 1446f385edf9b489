"""The CLI's one error boundary (issue 25): no command shows a user a traceback.

Every command runs inside ``CliGroup.invoke``. A failure it knows (the API, the database, the
broker or the object store out of reach, a wrong URL, a missing setting, a file that cannot be
read or written, a stack already running) becomes one line that says what to do, exit status 1;
anything else becomes one line naming the error and "run with --log-level DEBUG for details".
With ``--log-level DEBUG`` (or ``DERMASENTINEL_LOG_LEVEL=DEBUG``) the full traceback is printed
first. Commands keep raising ``click.ClickException`` for what they check themselves.

The exception types are looked up in ``sys.modules``: a failure can only be of a library's type
once that library is loaded, so the boundary imports nothing heavy (SQLAlchemy, redis, minio) of
its own.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import click

DEBUG_HINT = "run with --log-level DEBUG for details"
START_STACK = "start the stack with `dermasentinel up`"
MAX_REASON = 200


class CommandFailed(click.ClickException):
    """A failure the boundary explained: ``Error: <one line>`` on stderr, exit status 1."""


class CliGroup(click.Group):
    """The ``dermasentinel`` group: runs every command (and sub-group) inside the boundary."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            debug = _debug(ctx)
            if debug:
                click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
            raise CommandFailed(explain(exc)) from None


def _debug(ctx: click.Context) -> bool:
    level = ctx.params.get("log_level")
    if not level:
        try:
            from shared.config import get_settings

            level = get_settings().log_level
        except Exception:  # the settings themselves may be what failed
            return False
    return str(level).upper() == "DEBUG"


def one_line(text: object, limit: int = MAX_REASON) -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters, API keys masked."""
    from shared.logs import mask_keys

    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(first) > limit:
        first = first[: limit - 1] + "…"
    return mask_keys(first)


def _loaded(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """The exception classes ``module.name`` if that module is loaded, else none."""
    found = sys.modules.get(module)
    if found is None:
        return ()
    return tuple(getattr(found, name) for name in names if isinstance(getattr(found, name, None), type))


def explain(exc: Exception) -> str:
    """One line for ``exc``: what went wrong and what to do."""
    for explainer in (_api, _database, _broker, _object_store, _settings, _known, _files):
        message = explainer(exc)
        if message is not None:
            return one_line(message, limit=400)
    return one_line(f"unexpected error: {type(exc).__name__}: {one_line(exc)} ({DEBUG_HINT})", limit=400)


# ---------------------------------------------------------------- the API


def _api(exc: Exception) -> str | None:
    import httpx
    from dermasentinel_client import ApiError

    if isinstance(exc, ApiError):  # the SDK's hint for an answer that is not the API's, in the CLI's words
        return str(exc).replace("check the API URL", "check --api-url / DERMASENTINEL_API_URL")
    if not isinstance(exc, httpx.TransportError):
        return None
    where = _request_origin(exc)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return f"the API URL is not usable ({one_line(exc)}); check --api-url / DERMASENTINEL_API_URL"
    if isinstance(exc, httpx.TimeoutException):
        reason = "no answer in time"
    elif isinstance(exc, httpx.ConnectError):
        reason = _connect_reason(exc)
    else:
        reason = one_line(exc) or type(exc).__name__
    return (f"cannot reach the API at {where or 'the configured URL'} ({reason}); {START_STACK}, "
            "or check --api-url / DERMASENTINEL_API_URL")


def _request_origin(exc: Exception) -> str | None:
    try:
        url = exc.request.url  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError when no request is attached
        return None
    return f"{url.scheme}://{url.netloc.decode()}" if url.scheme else str(url)


def _connect_reason(exc: Exception) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused: nothing listens there"
    if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
        return "no such host"
    return one_line(exc) or "cannot connect"


# ---------------------------------------------------------------- the database


def _database(exc: Exception) -> str | None:
    errors = sys.modules.get("sqlalchemy.exc")
    if errors is None:
        return None
    where = _database_where()
    if isinstance(exc, errors.ArgumentError):  # NoSuchModuleError too: an unknown scheme
        return (f"DERMASENTINEL_DATABASE_URL is not a usable database URL ({one_line(exc)}); {START_STACK} "
                "(client commands then find it), or set it like postgresql://USER:PASSWORD@HOST:5432/DB")
    if not isinstance(exc, errors.DBAPIError):
        return None
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None) or ""
    if state == "42P01":  # undefined_table
        return f"the database {where} has no DermaSentinel tables yet; run `dermasentinel migrate`"
    if isinstance(exc, errors.OperationalError | errors.InterfaceError) and (not state or state.startswith("08")):
        return (f"cannot reach the database {where} ({one_line(orig or exc)}); {START_STACK}, "
                "or check DERMASENTINEL_DATABASE_URL")
    return f"the database {where} refused the operation ({type(orig or exc).__name__}, SQLSTATE {state or '?'})"


def _database_where() -> str:
    """The database URL's host, port and name (never the password), as far as it can be read."""
    try:
        from sqlalchemy.engine import make_url

        from shared.config import get_settings

        url = make_url(get_settings().database_url)
        return f"at {url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"
    except Exception:
        return "(DERMASENTINEL_DATABASE_URL)"


# ---------------------------------------------------------------- the broker and the object store


def _broker(exc: Exception) -> str | None:
    kinds = (
        _loaded("redis.exceptions", "ConnectionError", "TimeoutError")
        + _loaded("kombu.exceptions", "OperationalError")
    )
    if not kinds or not isinstance(exc, kinds):
        return None
    return (f"cannot reach the broker (Redis) {_endpoint('broker_url')} ({one_line(exc)}); {START_STACK}, "
            "or check DERMASENTINEL_BROKER_URL")


def _object_store(exc: Exception) -> str | None:
    kinds = _loaded("urllib3.exceptions", "HTTPError") + _loaded("minio.error", "MinioException")
    if not kinds or not isinstance(exc, kinds):
        return None
    return (f"cannot use the object store {_endpoint('s3_endpoint')} ({one_line(exc, 120)}); {START_STACK}, "
            "or check DERMASENTINEL_S3_ENDPOINT and its keys")


def _endpoint(setting: str) -> str:
    try:
        from shared.config import get_settings

        value = str(getattr(get_settings(), setting))
    except Exception:
        return ""
    if "@" in value:  # credentials in a URL stay out
        scheme, _, rest = value.partition("://")
        value = f"{scheme}://{rest.rsplit('@', 1)[1]}" if rest else value.rsplit("@", 1)[1]
    return f"at {value}" if value else "(not configured)"


# ---------------------------------------------------------------- settings, our own errors, files


def _settings(exc: Exception) -> str | None:
    from pydantic import ValidationError

    from shared.config import ENV_PREFIX, SettingMissing

    if isinstance(exc, SettingMissing):
        return str(exc)
    if not isinstance(exc, ValidationError):
        return None
    errors = exc.errors()
    if exc.title == "Settings":
        return "invalid setting: " + "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in errors
        )
    first = errors[0] if errors else {"loc": (), "msg": ""}
    where = ".".join(str(p) for p in first["loc"])
    return (f"an answer did not have the shape of {exc.title} ({len(errors)} problems, first: {where}: "
            f"{first['msg']}); is --api-url / DERMASENTINEL_API_URL the DermaSentinel API, of this version?")


def _known(exc: Exception) -> str | None:
    kinds = _loaded("devstack.errors", "StackError") + _loaded("worker.pipeline.errors", "ModelConfigError")
    if kinds and isinstance(exc, kinds):
        log_path = getattr(exc, "log_path", None)  # a service that did not start: its log says why
        return f"{one_line(exc, 300)}; its log: {log_path}" if log_path else str(exc)
    if isinstance(exc, TimeoutError) and str(exc):
        return str(exc)
    return None


def _files(exc: Exception) -> str | None:
    if not isinstance(exc, OSError):
        return None
    if exc.filename is not None:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return f"{type(exc).__name__}: {one_line(exc)}"
