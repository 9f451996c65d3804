"""One module per resource group; each has a ``router`` whose paths (under ``/api/v1``) end in ``/``."""
