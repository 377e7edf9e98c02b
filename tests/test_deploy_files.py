"""deploy/: the Prometheus rules pass promtool, the Grafana panels' queries parse, and
every metric either names is one that /metrics exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from conftest import missing
from emailq.api.app import create_app
from emailq.lanes import Lane
from emailq.monitor.recorder import Recorder, sample_body
from emailq.monitor.runner import Monitor
from emailq.monitor.store import open_store
from monitoring import AppClient, monitored, outcome

DEPLOY = Path(__file__).parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "emailq-rules.yml"
GRAFANA = DEPLOY / "grafana" / "emailq.json"
METRIC = re.compile(r"\bemailq_[a-z_]+\b")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing("promtool is not installed (apt-get install prometheus)")
    return found


def grafana_queries() -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_the_grafana_queries_parse(tmp_path: Path) -> None:
    # promtool parses PromQL only inside rules: each panel query becomes a recording rule
    lines = ["groups:", "  - name: grafana", "    rules:"]
    for index, expr in enumerate(grafana_queries()):
        lines += [f"      - record: grafana_panel_{index}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "grafana-rules.yml"
    path.write_text("\n".join(lines) + "\n")
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def exported_metric_names(tmp_path: Path) -> set[str]:
    """Every sample name /metrics exports once the monitor has written a snapshot."""
    with monitored(f"sqlite:///{tmp_path}/q.db", interval_s=15) as deployment:
        monitor = Monitor(deployment, channels=[])
        store = open_store(deployment.broker)
        recorder = Recorder("w", "smtp")
        recorder.record([outcome(Lane.CRITICAL, 0.0)])
        store.publish_sample(sample_body(recorder.take(), "w", "smtp", 1.0))
        monitor.tick()
        store.close()
        monitor.close()
        client = AppClient(create_app(deployment))
        client.post("/v1/emails", json={})  # one rejected request: its counter gets a sample
        text = client.get("/metrics").text
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter":
                names.add(f"{name}_total")
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_metric_the_rules_and_the_dashboard_name_is_exported(tmp_path: Path) -> None:
    named = set(METRIC.findall(RULES.read_text())) | {
        name for expr in grafana_queries() for name in METRIC.findall(expr)
    }
    exported = exported_metric_names(tmp_path)
    assert named, "no metric names found"
    assert named <= exported, f"not exported: {sorted(named - exported)}"
