"""``emailq loadtest --fault provider-outage`` (issue 13): the workers deliver through a
chain of two sinks, the first stops mid-run; the run passes its SLOs on the second, and
the report marks the outage and both switches on its plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from emailq.cli import cli
from emailq_loadtest.outage import FAILBACK_S


@pytest.mark.slow
def test_a_provider_outage_mid_run_passes_on_the_second_sink_and_is_marked(
    tmp_path: Path,
) -> None:
    report_dir = tmp_path / "report"
    result = CliRunner().invoke(cli, [
        "loadtest", "--report-dir", str(report_dir), "--no-live", "--scenario", "standard",
        "--duration", "24s", "--rate", "1200",
        "--fault", "provider-outage", "--fault-at", "5s", "--fault-for", "8s",
    ])  # fmt: skip
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    figures = json.loads((report_dir / "report.json").read_text())
    fault = figures["fault"]
    print(f"\nprovider outage: mail through the secondary {fault['switch_after_s']} s after the"
          f" primary stopped, back on the primary {fault['failback_after_s']} s after it came"
          f" back; events {fault['events_s']}")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert figures["passed"] and figures["accounting"]["lost"] == 0
    assert fault["outage_s"] == [5.0, 13.0]
    assert fault["switch_after_s"] is not None  # the secondary took mail
    assert fault["failback_after_s"] is not None and fault["failback_after_s"] >= FAILBACK_S
    page = (report_dir / "report.html").read_text()
    assert "primary down" in page and "← mail through the secondary" in page
    assert "← mail through the primary" in page and "Fault: provider-outage" in page


def test_a_fault_needs_the_embedded_service(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "loadtest", "--report-dir", str(tmp_path), "--target", "http://127.0.0.1:9",
        "--api-key", "k", "--sink-port", "9", "--fault", "provider-outage",
    ])  # fmt: skip
    assert result.exit_code == 2 and "embedded" in result.output
