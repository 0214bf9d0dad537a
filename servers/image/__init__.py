"""The image study: the Starlette, FastAPI and dynamic-batching apps over one service."""
