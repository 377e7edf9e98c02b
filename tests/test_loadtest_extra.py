"""The load-test tool is the `loadtest` extra: emailq works without it, and `emailq loadtest`
says how to install it. Each run is a fresh interpreter in which no import finder answers
for `emailq_loadtest`, so Python itself raises the ModuleNotFoundError an image without the
extra would."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import emailq

# Wraps every finder on sys.meta_path (the path finder, any editable-install hook) so that
# none of them finds emailq_loadtest; every other lookup goes to the finder as before.
HIDE_LOADTEST = """
import importlib.util
import sys

assert importlib.util.find_spec("emailq_loadtest") is not None, "the extra is not installed"


class Hiding:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "emailq_loadtest":
            return None
        find_spec = getattr(self.finder, "find_spec", None)
        return find_spec(name, path, target) if find_spec else None

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]
assert importlib.util.find_spec("emailq_loadtest") is None
"""


def run_hidden(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HIDE_LOADTEST + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_loadtest_without_the_extra_says_how_to_install_it() -> None:
    result = run_hidden(
        "from emailq.cli import main\nsys.argv = ['emailq', 'loadtest', '--no-live']\nmain()\n"
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        "Error: emailq loadtest needs the load-test extra: pip install 'emailq[loadtest]'"
    )
    assert "Traceback" not in result.stderr


def test_every_emailq_module_imports_without_the_extra() -> None:
    result = run_hidden(
        "import pkgutil, importlib, emailq\n"
        "for module in pkgutil.walk_packages(emailq.__path__, 'emailq.'):\n"
        "    if module.name != 'emailq.__main__':\n"
        "        importlib.import_module(module.name)\n"
        "assert 'emailq_loadtest' not in sys.modules\n"
        "print('imported')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"


def test_only_the_cli_imports_the_load_test_tool() -> None:
    package = Path(emailq.__file__).parent
    importers = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name.partition(".")[0] == "emailq_loadtest" for name in names):
                importers.add(source.relative_to(package).as_posix())
    assert importers == {"cli.py"}
