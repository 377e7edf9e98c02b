"""Dependencies point one way: checked on the source, so a shortcut cannot creep back in."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "emailq"


def modules() -> list[tuple[str, ast.Module]]:
    return [
        (str(path.relative_to(SRC)), ast.parse(path.read_text()))
        for path in sorted(SRC.rglob("*.py"))
    ]


def imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = [
        name for name, tree in modules()
        if any(isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv")
               for n in ast.walk(tree))
    ]  # fmt: skip
    assert readers == ["settings.py"]


def test_only_the_cli_starts_the_supervisor() -> None:
    users = [
        name for name, tree in modules()
        if "emailq.supervisor" in imported(tree) and name != "supervisor.py"
    ]  # fmt: skip
    assert users == ["cli.py"]


def test_only_the_cli_reaches_the_load_test_tool() -> None:
    users = [
        name for name, tree in modules()
        if any(m.startswith(("emailq.loadtest", "emailq_loadtest")) for m in imported(tree))
    ]  # fmt: skip
    assert users in ([], ["cli.py"])


def test_the_api_knows_no_worker_internals() -> None:
    for name, tree in modules():
        if name.startswith("api/"):
            assert not imported(tree) & {"emailq.supervisor", "emailq.worker"}, name
