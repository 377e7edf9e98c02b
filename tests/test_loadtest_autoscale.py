"""`emailq loadtest --autoscale MIN:MAX`: a real run whose worker pool emailq's autoscaler
sizes (worker processes, sink processes, SMTP), on both brokers, and its report."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import REDIS_URL, require_redis
from emailq.cli import cli
from emailq_loadtest import report
from test_loadtest import assert_consistent, loadtest


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_an_autoscaled_run_grows_its_pool_passes_and_counts_worker_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker: str
) -> None:
    # Assume 20 emails/s per worker: 6,000/min (100/s, ×0.8 at first) asks for more than 2.
    monkeypatch.setenv("EMAILQ_AUTOSCALE_WORKER_RATE", "20")
    args = ["--scenario", "wedding-day", "--duration", "10s", "--rate", "6000"]
    if broker == "redis":
        require_redis()
        args += ["--broker-url", REDIS_URL]
    code, figures, output = loadtest(tmp_path, *args, "--autoscale", "2:4")
    assert code == 0, output
    assert_consistent(figures, tmp_path)
    workers = figures["workers"]
    assert (workers["mode"], workers["min"], workers["max"]) == ("autoscaled", 2, 4)
    pools = [pool for _, _, pool in workers["timeline"]]
    assert pools[0] == 2 and max(pools) > 2, workers["timeline"]
    assert workers["decisions"]["up"] >= 1
    assert "scaling up 2 →" in workers["changes"][0][2]
    fixed = 4 * workers["span_s"] / 60
    assert workers["fixed_pool_of_max_worker_minutes"] == pytest.approx(fixed, abs=0.01)
    assert 2 * workers["span_s"] / 60 * 0.9 <= workers["worker_minutes"] <= fixed
    assert "worker-minutes" in output and "for a fixed pool of 4" in output
    page = (tmp_path / "report" / "report.html").read_text()
    assert "worker processes" in page and "Worker pool" in page


def test_a_fixed_run_states_its_worker_minutes_too() -> None:
    timeline = [[0.0, 2, 2], [180.0, 2, 2]]
    pool = {"mode": "fixed", "worker_minutes": 6.0, "span_s": 180.0, "peak_running": 2}
    figures = {"workers": {**pool, "timeline": timeline}}
    assert report.pool_summary(figures) == (
        "worker pool: fixed, 2 processes: 6.0 worker-minutes over 180 s"
    )


def test_bad_autoscale_flags_are_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, says in (
        (["--autoscale", "5:2"], "the minimum 5 is above the maximum 2"),
        (["--autoscale", "two"], "is not MIN:MAX"),
        (["--autoscale", "2:4", "--target", "http://127.0.0.1:9", "--api-key", "k",
          "--sink-port", "2525"], "--autoscale sizes the workers this run starts"),
    ):  # fmt: skip
        result = runner.invoke(cli, ["loadtest", "--report-dir", str(tmp_path), *args])
        assert result.exit_code == 2, (args, result.output)
        assert says in result.output, result.output
