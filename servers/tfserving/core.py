"""What one TF-Serving-compatible server process holds: options, the model, the timing log and
gRPC's health, shared by the REST and the gRPC side."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2

from servers.shared.model import forward, load_model
from servers.tfserving.servable import OUTPUT_NAME, Options, Servable, unavailable
from servers.tfserving.timing import TimingLog

PROG = "servers.tfserving"
HEALTH_SERVICES = ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
                   "inference.GRPCInferenceService")


class Core:
    """Everything one server process holds: options, the model, the timing log, gRPC."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.servable: Servable | None = None
        self.timings = TimingLog(opts.timing_dir)
        self.grpc_health = health.HealthServicer()
        self.grpc_server: grpc.Server | None = None
        self.rest_port = 0
        self.grpc_port = 0

    def servable_or_unavailable(self) -> Servable:
        if self.servable is None:
            raise unavailable("the model is still loading")
        return self.servable

    def load(self) -> None:
        started = time.perf_counter()
        s = self.opts.settings
        loaded = load_model(s.model_path, s.input_size)
        servable = Servable(self.opts, loaded)
        warm = np.zeros((1, *servable.shape), dtype=np.float32)
        servable.classes = int(forward(loaded, warm, self.opts.call, servable.pad_to).shape[-1])
        self.servable = servable
        for service in HEALTH_SERVICES:
            self.grpc_health.set(service, health_pb2.HealthCheckResponse.SERVING)
        print(f"{PROG}: model {servable.name!r} version {servable.version} = {loaded.name} "
              f"({loaded.kind}, {servable.size}x{servable.size}x{servable.channels}, input "
              f"{servable.input_name!r}) loaded and warmed in "
              f"{time.perf_counter() - started:.1f} s; call={self.opts.call} "
              f"timings={self.timings.path or 'off'} pid={os.getpid()}",
              file=sys.stderr, flush=True)

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """The model is loaded already (main); Uvicorn accepts connections after this."""
        if self.opts.settings.thread_limit is not None:
            # Must run inside the event loop: the limiter belongs to the running loop.
            limiter = anyio.to_thread.current_default_thread_limiter()
            limiter.total_tokens = self.opts.settings.thread_limit
        try:
            yield
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop gRPC (in-flight calls get a grace period) and write the last timings."""
        self.grpc_health.enter_graceful_shutdown()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=3.0).wait(timeout=5.0)
            self.grpc_server = None
        self.timings.close()

    def health(self) -> dict[str, Any]:
        s = self.opts.settings
        servable = self.servable
        return {
            "status": "ok" if servable is not None else "loading", "pid": os.getpid(),
            "model": self.opts.model_name, "version": self.opts.model_version,
            "model_file": servable.loaded.name if servable else None,
            "input_size": servable.size if servable else None,
            "channels": servable.channels if servable else None,
            "input_name": servable.input_name if servable else None, "output_name": OUTPUT_NAME,
            "call": self.opts.call, "rest_port": self.rest_port, "grpc_port": self.grpc_port,
            "grpc_threads": self.opts.grpc_threads, "thread_limit": s.thread_limit,
            "max_images": s.max_images, "max_body_bytes": s.max_body_bytes,
            "timings": str(self.timings.path) if self.timings.path else None,
        }


