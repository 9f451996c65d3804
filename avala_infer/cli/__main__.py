"""``python -m avala_infer.cli``: the ``avala-infer`` command."""

from avala_infer.cli import main

main()
