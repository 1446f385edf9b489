"""The process-wide handles every entry point builds once (API lifespan, worker init, CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from celery import Celery
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.jobs import make_celery
from shared.storage import ObjectStore, make_object_store


@dataclass
class AppContext:
    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings)

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def store(self) -> ObjectStore:
        return make_object_store(self.settings)

    @cached_property
    def probe_store(self) -> ObjectStore:
        return make_object_store(self.settings, probe_timeout=2.0)

    @cached_property
    def celery(self) -> Celery:
        return make_celery(self.settings)

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
