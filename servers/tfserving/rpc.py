"""What both gRPC services answer when a call fails: a refusal (InputError) with its own status
code, anything else INTERNAL with its type and message; the call's timing record is finished
with that code either way."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import grpc

from servers.shared.errors import one_line
from servers.tfserving.servable import InputError
from servers.tfserving.timing import Timing, TimingLog


def abort(context: grpc.ServicerContext, exc: InputError) -> NoReturn:
    """End the call with the refusal's gRPC code and message."""
    context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


@contextmanager
def answering(log: TimingLog, rec: Timing, context: grpc.ServicerContext) -> Iterator[None]:
    """Run a call's work; a failure ends the call with its code and finishes `rec` with it."""
    try:
        yield
    except InputError as exc:
        log.finish(rec, exc.code)
        abort(context, exc)
    except Exception as exc:
        log.finish(rec, "INTERNAL")
        context.abort(grpc.StatusCode.INTERNAL,
                      f"internal error: {type(exc).__name__}: {one_line(str(exc))}")
