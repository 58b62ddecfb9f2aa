"""deploy/: the alerting rules pass promtool and their unit tests; the rules and the
dashboard name only metrics the gateway and the front expose."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_callroute_front import Harness

from callroute.server import App
from wxmgw.app import Gateway
from wxmgw.config import Config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "wxmgw-alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "wxmgw-dashboard.json"
NAME = re.compile(r"\b((?:wxmgw|callroute|process)_[a-z_]+|up)\b(?=\s*[{\[(]|\s*[/>=)]|\s*$)", re.M)


def promtool(*args: str) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `make setup` installs the Debian package prometheus"
    done = subprocess.run([tool, *args], capture_output=True, text=True, cwd=RULES.parent,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_are_valid_and_fire_as_their_tests_say() -> None:
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", RULES.name)
    assert "SUCCESS" in promtool("test", "rules", "wxmgw-alerts.test.yml")


def exposed() -> set[str]:
    gateway = Gateway(Config(thrift_port=0, status_port=0, rtp_ports="40000-40009"))
    texts = [generate_latest(gateway.metrics.registry).decode(),
             generate_latest(App(Harness().front).metrics.registry).decode()]
    return {f.name for text in texts for f in text_string_to_metric_families(text)} | {"up"}


def base(name: str) -> str:
    return re.sub(r"_(bucket|count|sum|total)$", "", name)


@pytest.mark.parametrize("path", [RULES, DASHBOARD], ids=lambda p: p.name)
def test_deploy_names_only_exposed_metrics(path: Path) -> None:
    text = path.read_text()
    if path.suffix == ".json":
        dashboard = json.loads(text)
        text = "\n".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    names = {base(n) for n in NAME.findall(text)}
    assert names and names <= exposed(), names - exposed()
