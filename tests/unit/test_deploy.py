"""The systemd units in deploy/ start the project's commands with flags that exist."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from callroute.cli import build_parser
from wxmgw import config

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
VENV = "/opt/wxmgw/.venv"


def exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_wxmgw_unit_flags_parse() -> None:
    program, command, *flags = exec_start(UNITS / "wxmgw@.service")
    assert program == f"{VENV}/bin/wxmgw" and command == "serve"
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    args = parser.parse_args(flags)
    assert args.state_dir == "/var/lib/wxmgw/%i"


def test_callroute_unit_flags_parse() -> None:
    program, *rest = exec_start(UNITS / "callroute.service")
    assert program == f"{VENV}/bin/callroute"
    assert build_parser().parse_args(rest).command == "serve"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_verify(tmp_path: Path) -> None:
    venv = Path(sys.prefix)  # the venv running the tests has both commands
    for unit in UNITS.glob("*.service"):
        (tmp_path / unit.name).write_text(unit.read_text().replace(VENV, str(venv)))
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, tmp_path.glob("*.service"))],
        capture_output=True, text=True, env={"SYSTEMD_LOG_LEVEL": "warning"},
    )
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr  # warnings too
