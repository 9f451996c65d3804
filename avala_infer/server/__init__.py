"""The HTTP API for the official Avala SDK, its ``avala`` CLI and avala-agents: ``/api/v1`` served by
``avala-infer serve`` (FastAPI + uvicorn, the ``server`` extra). Routes are thin: they parse, call the local
:class:`~avala_infer.client.Avala` client, and shape its objects as the SDK's models read them.

Only this package imports the web framework (fastapi, starlette, uvicorn); import :func:`create_app` from
:mod:`avala_infer.server.app`.
"""
