"""``python -m emailq`` is the ``emailq`` command."""

from emailq.cli import main

main()
