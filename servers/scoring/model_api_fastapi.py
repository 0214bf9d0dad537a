"""A model API, async build: FastAPI on Uvicorn (many requests at a time per worker).

    GET  /health    200 {"status": "ok", "pid", "model", "kind", ...}
    POST /predict   JSON {"features": [numbers]} -> 200 {"score", "model", "elapsed_ms"}
                    bad body 422 (FastAPI's validation), body too large 413,
                    all as {"error": "<one line>"}

The sleep kind awaits asyncio.sleep, so one worker overlaps many requests; the model kind runs
the Keras model in anyio's worker threads (what FastAPI does for a `def` endpoint), never on
the event loop. Configured by the INFBENCH_MODEL_* variables (servers.scoring.common's docstring).

Run: python -m uvicorn servers.scoring.model_api_fastapi:app --host 127.0.0.1 --port PORT \
         --workers W --no-access-log
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio.to_thread
from fastapi import FastAPI
from pydantic import BaseModel, Field, Strict

from servers.scoring.common import (
    HEALTH_PATH,
    PREDICT_PATH,
    Scorer,
    install_fastapi_errors,
    load_model_api_settings,
    prediction,
)
from servers.shared import nodelay
from servers.shared.bodylimit import BodyLimitMiddleware
from servers.shared.headerlimit import HeaderLimitsMiddleware

nodelay.apply_from_env()  # INFBENCH_TCP_NODELAY=1: see servers/shared/nodelay.py
settings = load_model_api_settings()
scorer = Scorer(settings)

# The same rule as servers.scoring.common.check_features (the Flask build), as pydantic types.
Feature = Annotated[float, Strict(), Field(allow_inf_nan=False)]


class PredictRequest(BaseModel):
    features: Annotated[list[Feature], Field(min_length=1, max_length=settings.max_features)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Model kind: load and warm the model before the server accepts connections."""
    await anyio.to_thread.run_sync(scorer.load)
    yield


app = FastAPI(title="infbench model API (FastAPI)", lifespan=lifespan, openapi_url=None,
              docs_url=None, redoc_url=None)
app.add_middleware(HeaderLimitsMiddleware)
# Outside the header limits: it drains a body still coming before any answer.
app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
install_fastapi_errors(app, max_features=settings.max_features)


@app.get(HEALTH_PATH)
async def health() -> dict[str, Any]:
    return scorer.health()


@app.post(PREDICT_PATH)
async def predict(body: PredictRequest) -> dict[str, Any]:
    started = time.perf_counter()
    if settings.kind == "sleep":
        await asyncio.sleep(scorer.delay_s())
        score = scorer.infer(body.features)  # microseconds of numpy: fine on the loop
    else:
        score = await anyio.to_thread.run_sync(scorer.infer, body.features)
    return prediction(settings.name, score, started)
