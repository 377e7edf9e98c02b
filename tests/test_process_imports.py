"""What each kind of process loads: a worker the delivery path only, the supervisor no
email stack at all. Checked in a fresh interpreter (``sys.modules``), not timed: a module
that comes back into these paths costs every worker start and every supervisor memory."""

from __future__ import annotations

import json
import subprocess
import sys

# Never needed to deliver mail: the HTTP API and its server, templates, terminal tables,
# the command line, the HTTP client (Resend and the monitor's notices load it when used),
# the load-test tool, the SMTP sink.
NOT_FOR_DELIVERY = {
    "fastapi", "starlette", "uvicorn", "jinja2", "rich", "click", "httpx",
    "emailq_loadtest", "aiosmtpd", "emailq.api", "emailq.cli", "emailq.demo",
    "emailq.sink", "emailq.client", "emailq.keys", "emailq.webhooks.service",
}  # fmt: skip
# Loaded when needed: Redis by a Redis broker, AES by sealed payloads, address checks by
# intake (a worker reads trusted payloads), the settings sources by `Settings.load` (a
# worker is handed its settings).
ON_DEMAND = {"redis", "cryptography", "email_validator", "pydantic_settings"}
EMAIL_STACK = {"pydantic", "emailq.settings", "emailq.broker", "emailq.worker", "aiosmtplib",
               "asyncio", "prometheus_client"}  # fmt: skip


def modules_after_importing(module: str) -> set[str]:
    """Top-level packages and emailq modules a fresh interpreter holds after ``module``."""
    code = f"import json, sys\nimport {module}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    loaded = set(json.loads(out.stdout))
    return {name.split(".")[0] for name in loaded} | {n for n in loaded if n.startswith("emailq")}


def test_a_worker_process_imports_the_delivery_path_only() -> None:
    loaded = modules_after_importing("emailq.worker_process")
    assert {"emailq.worker", "emailq.mime", "emailq.broker", "emailq.settings"} <= loaded
    assert loaded & NOT_FOR_DELIVERY == set()
    assert loaded & ON_DEMAND == set()


def test_the_monitor_a_worker_may_run_adds_no_http_client_or_tables() -> None:
    loaded = modules_after_importing("emailq.worker_process, emailq.monitor.runner")
    assert "emailq.monitor.runner" in loaded
    assert loaded & (NOT_FOR_DELIVERY | ON_DEMAND) == set()


def test_the_supervisor_imports_no_email_stack() -> None:
    loaded = modules_after_importing("emailq.supervisor")
    assert "emailq.supervisor" in loaded
    assert loaded & (EMAIL_STACK | NOT_FOR_DELIVERY | ON_DEMAND) == set()


def test_the_emailq_package_loads_its_parts_when_asked() -> None:
    assert modules_after_importing("emailq") & {"emailq.deployment", "pydantic"} == set()
    code = "import emailq\nprint(emailq.Deployment.__module__, emailq.Lane.CRITICAL.value)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    assert out.stdout.split() == ["emailq.deployment", "critical"]


def test_a_worker_loads_its_own_broker_backend_only(broker_url: str) -> None:
    """What a worker opens before its first delivery (the broker, the monitor's store)
    loads the backend it uses, not the other one."""
    code = (
        "import json, sys\nimport emailq.worker_process\n"
        "from emailq.broker import open_broker\nfrom emailq.monitor.store import open_store\n"
        f"with open_broker({broker_url!r}) as broker:\n    open_store(broker).close()\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    loaded = set(json.loads(out.stdout))
    other = "emailq.broker.redis" if broker_url.startswith("sqlite") else "emailq.broker.sqlite"
    assert other not in loaded
