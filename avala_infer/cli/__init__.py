"""The ``avala-infer`` command line: parses, calls the client (or the engine and ``label()`` for one-shot
labeling), formats, and maps errors to exit codes. It never opens the store itself.

One module per command group: ``label``, ``models``, ``projects`` (projects, import, tasks), ``auto_label``,
``export``, ``agents`` (agents, results, task reviews), ``workers`` (worker, dispatcher); ``common`` holds what
they share and ``config_files`` the YAML configs of ``projects create`` and ``auto-label create`` (``--config``).
"""

from avala_infer.cli.app import cli, main

__all__ = ["cli", "main"]
