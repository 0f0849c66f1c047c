"""`imprag serve`: one loaded model and index behind an OpenAI-compatible HTTP API.

`engine` owns the model in one worker thread and batches concurrent requests into shared generate calls;
`stream` turns a row's growing tokens into text deltas; `schemas` are the request bodies; `app` is the
FastAPI application (routes, errors in OpenAI's shape, limits, auth, metrics); `playground.html` is the
page served at `/`. FastAPI and uvicorn are imported only here, so the library works without them.
"""

from imprag.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(*args, **kwargs):
    """`imprag.serve.app.create_app` (imported on first use: it needs FastAPI)."""
    from imprag.serve.app import create_app as create

    return create(*args, **kwargs)
