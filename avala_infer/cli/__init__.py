"""The ``avala-infer`` command line: parses, calls the client (or the engine and ``label()`` for one-shot
labeling), formats, and maps errors to exit codes. It never opens the store itself.

One module per command group: ``label``, ``models``, ``projects`` (projects, import, tasks), ``auto_label``,
``export``, ``agents`` (agents, results, task reviews), ``workers`` (worker, dispatcher); ``common`` holds what
they share and ``config_files`` the YAML configs of ``projects create`` and ``auto-label create`` (``--config``).

:func:`main` (the console script) restarts a command that runs models with its malloc settings (``allocator``)
before the commands are imported: the restarted process imports them once, not twice (~0.3 s of every model
command's start-up here). ``cli`` (the click group) is imported on first use.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["cli", "main"]


def main() -> None:
    """The ``avala-infer`` console script (and ``python -m avala_infer.cli``)."""
    from avala_infer.cli.allocator import restart_for_models

    restart_for_models(sys.argv[1:])
    from avala_infer.cli.app import main as run

    run()


def __getattr__(name: str) -> Any:
    if name == "cli":
        from avala_infer.cli.app import cli

        return cli
    raise AttributeError(f"module 'avala_infer.cli' has no attribute {name!r}")
