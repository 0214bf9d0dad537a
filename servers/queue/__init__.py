"""The queue study: two HTTP APIs (FastAPI, Flask) and the model worker, over Redis."""
