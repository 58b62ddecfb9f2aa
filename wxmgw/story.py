"""`wxmgw story`: one conference's timeline, merged from gateway and front JSON logs.

Every log line is an event with fields (:mod:`wxmgw.logs`), and every line
about a conference carries its ``confId``; so the story of a conference is
those lines of every file given, in time order: the front's requests and
their codes, joins and leaves, the gateway's calls, legs started and
stopped, reconnects, stalls, errors. ``leg_stats`` lines are not printed
as they are: what changed between two of them is (a bitrate that fell to
zero or came back, a loss spike). The front's ``gateway_down`` and
``gateway_up`` lines are kept for the gateways the conference was placed on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

#: Loss over this share of a stream's packets between two stats lines is a spike.
LOSS_SPIKE: Final = 0.05
#: Fields every line has, or that a story line shows in its own columns.
_SHOWN: Final = frozenset({"ts", "level", "logger", "event", "confId", "uuid", "leg", "exc"})
_GATEWAY_EVENTS: Final = frozenset({"gateway_down", "gateway_up"})
_WIDTH: Final = 80


@dataclass(slots=True)
class Line:
    """One line of the story."""

    ts: str
    source: str
    event: str
    uuid: str
    detail: str
    level: str = "info"

    def __str__(self) -> str:
        mark = "!" if self.level in ("warning", "error", "critical") else " "
        when = self.ts[11:23] if len(self.ts) >= 23 else self.ts
        return f"{when} {mark} {self.source:<10} {self.event:<22} {self.uuid:<14} {self.detail}"


def read(paths: Iterable[Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file stem, event) for every JSON object line of the files; other lines are skipped."""
    for path in paths:
        with path.open(encoding="utf-8", errors="replace") as f:
            for text in f:
                if not text.startswith("{"):
                    continue
                try:
                    entry = json.loads(text)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("event"), str):
                    yield path.stem, entry


def story(entries: Iterable[tuple[str, dict[str, Any]]], conf_id: str,
          uuid: str | None = None) -> list[Line]:
    """The conference's lines in time order (those about ``uuid`` and the room, if given)."""
    lines: list[Line] = []
    stats = _StatsChanges()
    gateways: set[str] = set()
    gateway_lines: list[tuple[str, Line]] = []
    for source, e in entries:
        if e["event"] in _GATEWAY_EVENTS:
            gateway_lines.append((str(e.get("gateway")), _line(source, e)))
            continue
        if str(e.get("confId")) != conf_id:
            continue
        if isinstance(e.get("gateway"), str):
            gateways.add(e["gateway"])
        if uuid is not None and e.get("uuid") not in (None, uuid) and uuid not in (
                e.get("member"), e.get("syncUuid")):
            continue
        if e["event"] == "leg_stats":
            lines.extend(stats.changes(source, e))
        else:
            lines.append(_line(source, e))
    lines.extend(line for gateway, line in gateway_lines if gateway in gateways)
    lines.sort(key=lambda line: line.ts)
    return lines


def _line(source: str, e: dict[str, Any]) -> Line:
    name = e["event"]
    if name == "request":
        detail = f"{e.get('method')} -> {e.get('code')}"
        if e.get("message") not in (None, "ok"):
            detail += f" {e['message']}"
    else:
        detail = " ".join(f"{k}={_short(v)}" for k, v in e.items() if k not in _SHOWN)
    if e.get("leg"):
        detail = f"[{e['leg']}] {detail}"
    return Line(str(e.get("ts", "")), source, name, str(e.get("uuid") or ""), detail.strip(),
                str(e.get("level", "info")))


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= _WIDTH else text[:_WIDTH - 1] + "…"


class _StatsChanges:
    """What changed between a leg's consecutive ``leg_stats`` lines."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}

    def changes(self, source: str, e: dict[str, Any]) -> list[Line]:
        key = (source, str(e.get("uuid")), str(e.get("leg")))
        now = dict(_streams(e))
        before = self._last.get(key, {})
        self._last[key] = now
        out = []
        for path, stream in now.items():
            old = before.get(path)
            if old is None:
                continue
            kbps, was = stream.get("kbps"), old.get("kbps")
            if kbps == 0 and was:
                out.append(self._line(source, e, "bitrate_zero", f"{path} {was} -> 0 kbps"))
            elif kbps and was == 0:
                out.append(self._line(source, e, "bitrate_back", f"{path} 0 -> {kbps} kbps"))
            lost = _grown(stream, old, "lost")
            packets = _grown(stream, old, "packets")
            total = lost + packets
            if lost and lost / total > LOSS_SPIKE:
                detail = f"{path} {lost} lost of {total} ({100 * lost / total:.0f} %)"
                out.append(self._line(source, e, "loss_spike", detail))
        return out

    @staticmethod
    def _line(source: str, e: dict[str, Any], name: str, detail: str) -> Line:
        return Line(str(e.get("ts", "")), source, name, str(e.get("uuid") or ""),
                    f"[{e.get('leg')}] {detail}", "warning" if name != "bitrate_back" else "info")


def _streams(stats: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """The nested dicts of a stats line that count bytes or packets, by their path."""
    for key, value in stats.items():
        if isinstance(value, dict):
            path = f"{prefix}.{key}" if prefix else key
            if "bytes" in value or "packets" in value:
                yield path, value
            yield from _streams(value, path)


def _grown(now: dict[str, Any], before: dict[str, Any], key: str) -> int:
    a, b = now.get(key), before.get(key)
    return max(a - b, 0) if isinstance(a, int) and isinstance(b, int) else 0


def tell(paths: list[Path], conf_id: str, uuid: str | None, out: TextIO) -> int:
    """Print the story; 1 when no line is about the conference."""
    lines = story(read(paths), conf_id, uuid)
    for line in lines:
        print(line, file=out)
    if not lines:
        print(f"no line about conference {conf_id} in {len(paths)} file(s)", file=out)
    return 0 if lines else 1
