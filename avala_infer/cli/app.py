"""The ``avala-infer`` command group: global options (``-v``, ``--version``), the status line on stderr, and every
command, each from its module of ``avala_infer/cli/``. ``main`` is the console script's entry point
(``avala_infer.cli:main``). Importing the CLI imports no torch: commands import what they run when they run.

Exit codes (``avala_infer.cli.common``): 0 done; 1 an error stopped the command; 2 a usage error (click's
convention); 3 finished with something left undone (failed items, a cancelled job, sources not imported);
130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import logging
import sys

import click

from avala_infer.cli import agents, auto_label, export, keys, label, models, projects, serve, workers
from avala_infer.cli.allocator import restart_for_models


class StatusLine(logging.Handler):
    """Shows the ``avala_infer.status`` logger on stderr as one line per step: a step that starts
    ("loading yolo11n on cpu ...") is finished on the same line by the record that ends it ("done in 0.4 s")."""

    def __init__(self, stream=None) -> None:
        super().__init__(logging.INFO)
        self.stream = stream
        self.open = False  # a started line waits for its end

    def emit(self, record: logging.LogRecord) -> None:
        stream = self.stream or sys.stderr
        try:
            kind = getattr(record, "status", None)
            if kind == "done" and self.open:
                text = f" done in {record.s:.1f} s\n" if hasattr(record, "s") else " done\n"
            else:
                text = ("\n" if self.open else "") + record.getMessage() + ("" if kind == "start" else "\n")
            self.open = kind == "start"
            stream.write(text)
            stream.flush()
        except Exception:
            self.handleError(record)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="avala-infer")
def cli(verbose: int) -> None:
    """avala-infer: local auto-labeling on your own GPU hosts."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    status = logging.getLogger("avala_infer.status")  # "loading yolo11n on cpu ... done in 0.4 s"
    if not any(isinstance(h, StatusLine) for h in status.handlers):
        status.addHandler(StatusLine())
    status.setLevel(logging.INFO)
    status.propagate = False


for command in (
    label.label_command,
    models.models_group,
    projects.projects_group,
    projects.import_command,
    projects.tasks_group,
    auto_label.auto_label_group,
    export.export_command,
    agents.agents_group,
    agents.results_group,
    workers.worker_command,
    workers.dispatcher_command,
    serve.serve_command,
    keys.keys_group,
):
    cli.add_command(command)
for command in (agents.task_complete, agents.task_review, agents.task_reject):  # the human side of `tasks`
    projects.tasks_group.add_command(command)


def main() -> None:
    """The ``avala-infer`` console script. A command that runs models first restarts this process once with
    glibc malloc settings that spare large activations their page faults (``allocator``)."""
    restart_for_models(sys.argv[1:])
    cli()
