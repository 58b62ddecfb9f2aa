"""The gateway's side of a cluster: its entry in the Redis registry, its journal there.

Started with ``--redis URL``, a gateway registers itself and journals its
legs in Redis instead of ``--state-dir``. The keys, shared with the callroute
fronts (:mod:`callroute.store`), all start with ``wxmgw:``:

* ``wxmgw:gateway:{name}``: the gateway's entry, a JSON object (``name``,
  ``host``, ``port`` (Thrift), ``statusPort``, ``bootId``, ``legs``,
  ``capacity`` (RTP port pairs), ``ts``), written every ``REFRESH`` seconds
  with a TTL of ``TTL``: a gateway whose entry has expired is not alive and
  gets no new conference. ``bootId`` changes at every start, so a front sees
  a restart it did not witness.
* ``wxmgw:gateways``: the set of names ever registered (look each entry up).
* ``wxmgw:legs:{name}``: the gateway's journal (:mod:`wxmgw.journal`).
* ``wxmgw:conf:{confId}``: a conference of the fronts, a JSON object whose
  ``gateway`` names where it runs; the journaled legs of a conference that a
  front has moved to another gateway are not restored.

``name`` is the gateway's stable node name, by default ``host:port`` of its
Thrift endpoint as the fronts reach it (``--advertise-host``). Redis being
away does not touch running media: the entry expires (no new conference
comes), journal writes fail and are logged, and the whole journal is written
again once Redis answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import gevent
import redis

from wxmgw.journal import Journal, JournalUnavailable
from wxmgw.logs import event

logger = logging.getLogger(__name__)

PREFIX = "wxmgw:"
GATEWAYS = PREFIX + "gateways"
#: Seconds between two writes of a gateway's entry, and before an unrefreshed one expires.
REFRESH = 1.0
TTL = 5


def gateway_key(name: str) -> str:
    return f"{PREFIX}gateway:{name}"


def legs_key(name: str) -> str:
    return f"{PREFIX}legs:{name}"


def conference_key(conf_id: str) -> str:
    return f"{PREFIX}conf:{conf_id}"


def connect(url: str) -> redis.Redis:
    """A client that gives up on an unreachable Redis within a second (gevent sockets)."""
    return redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0,
                                decode_responses=True)


class RedisJournal(Journal):
    """The journal as one value, ``wxmgw:legs:{name}``; see :mod:`wxmgw.journal`.

    A write that fails is kept and written again by :meth:`flush` (the
    registration loop calls it), so the journal catches up after an outage.
    """

    def __init__(self, client: redis.Redis, name: str) -> None:
        super().__init__()
        self.client = client
        self.name = name
        self.where = f"redis {legs_key(name)}"
        self._unsaved: str | None = None

    def _write(self, text: str) -> None:
        self._unsaved = text
        try:
            self.client.set(legs_key(self.name), text)
        except redis.RedisError as e:
            raise JournalUnavailable(str(e)) from None
        self._unsaved = None

    def _read(self) -> str | None:
        try:
            value = self.client.get(legs_key(self.name))
        except redis.RedisError as e:
            raise JournalUnavailable(str(e)) from None
        return None if value is None else str(value)

    def _set_aside(self) -> None:
        try:
            self.client.rename(legs_key(self.name), legs_key(self.name) + ":corrupt")
        except redis.RedisError as e:
            event(logger, "journal_not_set_aside", logging.ERROR, journal=self.where,
                  error=str(e))

    def flush(self) -> None:
        """Write again a journal whose last write failed; raises while Redis is away."""
        if self._unsaved is not None:
            self._write(self._unsaved)
            self.writes += 1
            event(logger, "journal_caught_up", journal=self.where)

    def moved_to(self, conf_id: str) -> str | None:
        """The other gateway a front has placed ``conf_id`` on, if it has."""
        try:
            value = self.client.get(conference_key(conf_id))
        except redis.RedisError as e:
            raise JournalUnavailable(str(e)) from None
        try:
            record = json.loads(value) if value is not None else None
        except ValueError:
            return None
        gateway = record.get("gateway") if isinstance(record, dict) else None
        return gateway if isinstance(gateway, str) and gateway != self.name else None


class Registration:
    """Keeps ``wxmgw:gateway:{name}`` alive while the gateway runs; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        journal: RedisJournal,
        entry: dict[str, Any],
        load: Callable[[], dict[str, int]],
    ) -> None:
        self.client = client
        self.journal = journal
        self.name = str(entry["name"])
        self.entry = {**entry, "bootId": uuid.uuid4().hex}
        self.load = load
        self._greenlet: gevent.Greenlet | None = None
        self._down: str | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop refreshing and take the entry out: no new conference comes here."""
        if self._greenlet is not None:
            self._greenlet.kill()
        with contextlib.suppress(redis.RedisError):  # it expires by itself
            self.client.delete(gateway_key(self.name))

    def refresh(self) -> None:
        """One write of the entry (and of a journal that is behind); raises while Redis is away."""
        entry = {**self.entry, **self.load(), "ts": time.time()}
        pipe = self.client.pipeline()
        pipe.set(gateway_key(self.name), json.dumps(entry), ex=TTL)
        pipe.sadd(GATEWAYS, self.name)
        pipe.execute()
        self.journal.flush()

    def _run(self) -> None:
        while True:
            try:
                self.refresh()
            except (redis.RedisError, JournalUnavailable) as e:
                if self._down is None:
                    event(logger, "redis_unreachable", logging.ERROR, gateway=self.name,
                          error=str(e))
                self._down = str(e)
            else:
                if self._down is not None:
                    event(logger, "redis_back", gateway=self.name)
                self._down = None
            gevent.sleep(REFRESH)
