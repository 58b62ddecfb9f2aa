"""The gateway's journal: the legs it runs, so that a restarted process runs them again.

Every accepted StartPull, StartPush and AvSync (its parameters and the RTP
ports it was given) and every Stop changes the journal, which is the whole
set of running legs as one JSON document: in Redis under the gateway's node
name when it is started with ``--redis`` (:mod:`wxmgw.cluster`), else in
``legs.json`` under ``--state-dir``. The file is rewritten at each change
through a temporary file and an atomic rename: a process killed at any point
leaves the previous or the new document, never a torn one. It is not synced
to disk (a write costs a fraction of a millisecond on the hub, an fsync can
cost tens): a host that loses power may lose the last changes, which the
front's reconciliation covers.

A graceful stop (SIGTERM) leaves the journal as it is, so that an upgrade or
a restart brings every leg back. An unreadable journal is logged, set aside
as ``legs.json.corrupt`` and the gateway starts empty; an entry that cannot
be read or started again is logged and skipped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from wxmgw import requests as rq
from wxmgw.logs import event

logger = logging.getLogger(__name__)

VERSION = 1

P = TypeVar("P", rq.StartPull, rq.StartPush)
E = TypeVar("E", "PullEntry", "PushEntry")


@dataclass(frozen=True, slots=True)
class PullEntry:
    params: rq.StartPull
    ports: list[int]
    sync_uuid: str = ""


@dataclass(frozen=True, slots=True)
class PushEntry:
    params: rq.StartPush
    ports: list[int]
    requesters: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Legs:
    """What the journal holds: every running leg, pulls and pushes."""

    pulls: list[PullEntry] = field(default_factory=list)
    pushes: list[PushEntry] = field(default_factory=list)


class Journal:
    """Where the legs are journaled: :meth:`save` at every change, :meth:`load` at start."""

    #: Where the journal is, for the log.
    where: str = ""

    def __init__(self) -> None:
        self.writes = 0
        self.errors = 0

    def save(self, legs: Legs) -> None:
        """Replace the journal with ``legs``; a failed write is logged and counted, not raised."""
        try:
            self._write(json.dumps({"version": VERSION, **asdict(legs)}, separators=(",", ":")))
        except (OSError, JournalUnavailable) as e:
            self.errors += 1
            event(logger, "journal_write_failed", logging.ERROR, journal=self.where, error=str(e))
            return
        self.writes += 1

    def load(self) -> Legs:
        """The journaled legs; none when there is no journal, or when it is unreadable
        (logged, and set aside where the backend can)."""
        try:
            text = self._read()
        except (OSError, JournalUnavailable) as e:
            event(logger, "journal_unreadable", logging.ERROR, journal=self.where, error=str(e))
            return Legs()
        if text is None:
            return Legs()
        try:
            return decode(text)
        except ValueError as e:
            event(logger, "journal_unreadable", logging.ERROR, journal=self.where, error=str(e))
            self._set_aside()
            return Legs()

    def moved_to(self, conf_id: str) -> str | None:
        """The gateway that runs ``conf_id`` now, when it is another (its legs stay here)."""
        return None

    def _write(self, text: str) -> None:
        raise NotImplementedError

    def _read(self) -> str | None:
        raise NotImplementedError

    def _set_aside(self) -> None:
        raise NotImplementedError


class JournalUnavailable(Exception):
    """The journal's store cannot be reached (a backend's own errors, wrapped)."""


class FileJournal(Journal):
    """``legs.json`` in ``state_dir``, replaced through a temporary file and a rename."""

    def __init__(self, state_dir: str | Path) -> None:
        super().__init__()
        self.dir = Path(state_dir)
        self.path = self.dir / "legs.json"
        self.where = str(self.path)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _write(self, text: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def _read(self) -> str | None:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as e:
            raise ValueError(str(e)) from None

    def _set_aside(self) -> None:
        os.replace(self.path, self.path.with_suffix(".json.corrupt"))


def decode(text: str) -> Legs:
    """The legs of a journal document; ValueError when it is not one (bad entries are skipped)."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} journal")
    pulls, pushes = doc.get("pulls", []), doc.get("pushes", [])
    if not isinstance(pulls, list) or not isinstance(pushes, list):
        raise ValueError("pulls and pushes must be lists")
    return Legs(
        [e for e in (_entry(_pull, x) for x in pulls) if e is not None],
        [e for e in (_entry(_push, x) for x in pushes) if e is not None],
    )


def _pull(data: dict[str, Any]) -> PullEntry:
    return PullEntry(_params(rq.StartPull, data["params"]), _ports(data), str(data["sync_uuid"]))


def _push(data: dict[str, Any]) -> PushEntry:
    requesters = data["requesters"]
    if not isinstance(requesters, list):
        raise TypeError("requesters must be a list")
    return PushEntry(_params(rq.StartPush, data["params"]), _ports(data),
                     [str(r) for r in requesters])


def _params(cls: type[P], data: dict[str, Any]) -> P:
    targets = {k: rq.RtpTarget(**data[k]) for k in ("audio", "video")}
    return cls(**{**data, **targets})


def _ports(data: dict[str, Any]) -> list[int]:
    ports = data["ports"]
    if not isinstance(ports, list) or not all(isinstance(p, int) for p in ports):
        raise TypeError("ports must be a list of numbers")
    return ports


def _entry(read: Callable[[dict[str, Any]], E], data: Any) -> E | None:
    """One journal entry, or None (logged) when it is not one."""
    try:
        if not isinstance(data, dict):
            raise TypeError("an entry must be an object")
        return read(data)
    except (KeyError, TypeError, ValueError) as e:
        event(logger, "journal_entry_skipped", logging.ERROR, entry=str(data)[:200],
              error=f"{type(e).__name__}: {e}")
        return None
