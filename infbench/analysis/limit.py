"""The machine's limit: how many images/s this machine's cores could serve at best, and how much
of it each step reached.

Serving efficiency (infbench/analysis/trust.py) divides by decode + model run one after the
other on one thread: a reference, not a bound. A server that decodes in other threads while the
model runs beats it on a machine with more than one core. What the cores can do is set by the
CPU each image costs, both measured by the model-alone child (servers/image/model_alone.py,
process CPU time, every thread, not wall time):

  cpu_ms_per_image   decode alone + the model alone, CPU ms per image, at the batch where that
                     sum is smallest (the best batch the profile measured)
  usable_cores       the cores the child could be scheduled on (CPU affinity) capped by its
                     cgroup's CPU quota; the servers the harness starts inherit both
  images_per_s       usable_cores * 1000 / cpu_ms_per_image: every usable core doing nothing
                     but decoding and running the model at the best batch

A step's own limit divides by the decode of the images that step sends and the model at its
cheapest batch: the load sends the first `batch` sample images in every request and the model
alone decodes the same ones at that batch, and their decode costs differ (a small first image
decodes faster than the first ten on average), while a server may batch any number of requests
into one model call. So a step's `images_per_s` may differ from the variant's headline figure.

What it leaves out: HTTP, multipart parsing, JSON answers and the event loop (the server's own
overhead, which is what the fraction shows), and everything else on the same cores: the load
generator above all. Per step, where Locust's CPU was measured (`*_loadgen.csv`, all its
processes), `images_per_s_net` is the limit of the cores left to the server
((usable_cores - loadgen cores) * 1000 / cpu_ms_per_image), and `fraction_net` the share of it
served. `server_cpu_ms_per_image` is the server's own CPU per image in the step (cpu_io, every
service summed): above cpu_ms_per_image by what serving adds (`beyond_model_cpu_ms_per_image`);
`main_thread_cpu_ms_per_image` the part of it on the processes' main threads (an asyncio
server's event loop: HTTP, multipart, the app's coroutines, the answers).

What stops a step short of the limit splits in two, each from the run's own CPU figures:
served ~ server cores * 1000 / server CPU per image, so fraction ~ cores_share * cpu_share with

  cores_share   server cores / usable cores: how much of the machine the server kept busy (low:
                too little work in flight for its threads, the cores taken by someone else, the
                load generator included; cpu_io's wait_share says which)
  cpu_share     cpu_ms_per_image / server_cpu_ms_per_image: how much of the server's CPU an
                image would cost the model alone at its best batch (low: HTTP, multipart,
                the event loop and small batches cost the rest)

A fraction above 1 is possible where the server runs a larger batch than any the profile
measured, or where the model alone's CPU was inflated (thread pools spinning on a busy machine).
"""

from __future__ import annotations

from typing import Any

NOT_MEASURED = "not measured"
# Decoding one request's JPEGs runs on one thread and never waits: alone on a core it keeps that
# core busy (CPU / wall ~1). Below this, the model alone shared its cores with someone else.
QUIET_DECODE_CORES = 0.8


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def machine_limit(alone: dict[str, Any] | None) -> dict[str, Any] | None:
    """The limit from model_alone.json (None: the run did not measure the model alone; a dict
    with `images_per_s` None and `why` where the file cannot give one)."""
    if alone is None:
        return None
    if alone.get("error"):
        return {"images_per_s": None, "why": str(alone["error"])}
    cores = alone.get("cores") or {}
    usable = _num(cores.get("usable"))
    per_batch: list[dict[str, Any]] = []
    for b in alone.get("batches") or []:
        if not isinstance(b, dict) or not b.get("batch"):
            continue
        decode = _num(b.get("decode_cpu_ms_per_image"))
        model = _num(b.get("model_cpu_ms_per_image"))
        if decode is None or model is None or decode + model <= 0:
            continue
        cpu = decode + model
        per_batch.append({"batch": int(b["batch"]), "decode_cpu_ms_per_image": decode,
                          "model_cpu_ms_per_image": model, "cpu_ms_per_image": round(cpu, 4),
                          "model_cores": _num(b.get("model_cores")),
                          "images_per_s": round(usable * 1000.0 / cpu, 1) if usable else None})
    if not per_batch:
        return {"images_per_s": None,
                "why": "the model alone measured no CPU per image (model_alone.json from "
                       "before version 2)"}
    if not usable or usable <= 0:
        return {"images_per_s": None, "why": "the model alone did not record its usable cores",
                "batches": per_batch}
    best = min(per_batch, key=lambda r: r["cpu_ms_per_image"])
    model_best = min(per_batch, key=lambda r: r["model_cpu_ms_per_image"])
    decode_cores = [c for b in alone.get("batches") or [] if isinstance(b, dict)
                    and (c := _num(b.get("decode_cores"))) is not None]
    busy = None
    if decode_cores and min(decode_cores) < QUIET_DECODE_CORES:
        busy = (f"the model alone ran on a busy machine: decoding, one thread that never waits, "
                f"kept {min(decode_cores):.2f} of a core busy (~1 alone); its rates and its "
                "CPU per image (thread pools spin while a descheduled thread holds them up), "
                "and so the limit, are not this machine's own")
    return {"images_per_s": best["images_per_s"], "usable_cores": usable,
            "cores_from": cores.get("source"), "affinity": cores.get("affinity"),
            "cgroup_quota": cores.get("cgroup_quota"), "best_batch": best["batch"],
            "decode_cpu_ms_per_image": best["decode_cpu_ms_per_image"],
            "model_cpu_ms_per_image": best["model_cpu_ms_per_image"],
            "cpu_ms_per_image": best["cpu_ms_per_image"],
            "model_best_batch": model_best["batch"],
            "model_best_cpu_ms_per_image": model_best["model_cpu_ms_per_image"],
            "batches": per_batch, "why": None, "busy": busy}


def step_cpu_ms_per_image(limit: dict[str, Any], batch: int | None) -> tuple[float, int]:
    """CPU per image the step's limit divides: decode of the images the step sends (the model
    alone decoded the same first `batch` sample images its load sends) and the model at its
    cheapest batch (a server may batch across requests); the decode at the best batch where
    the step's batch was not measured. With the batch it took the decode from."""
    by_batch = {b["batch"]: b for b in limit.get("batches") or []}
    mine = by_batch.get(int(batch)) if batch else None
    if mine is None:
        return float(limit["cpu_ms_per_image"]), int(limit["best_batch"])
    return (round(mine["decode_cpu_ms_per_image"] + limit["model_best_cpu_ms_per_image"], 4),
            mine["batch"])


def server_cpu_ms_per_image(cpu_io: dict[str, Any] | None, index: int,
                            batch: int | None) -> float | None:
    """The servers' CPU per image sent in a step: every service's CPU per request (cpu_io)
    summed, over the images a request carries; None where no service's CPU was measured."""
    rows = [r for r in (cpu_io or {}).get("steps") or [] if r.get("index") == index]
    per_request = [_num(r.get("cpu_ms_per_request")) for r in rows]
    known = [x for x in per_request if x is not None]
    if not known or not batch:
        return None
    return round(sum(known) / batch, 4)


def main_thread_cpu_ms_per_image(cpu_io: dict[str, Any] | None, index: int,
                                 batch: int | None) -> float | None:
    """The services' main threads' CPU per image sent in a step (an asyncio server's event
    loop); None where processes.csv has no main_cpu_s (before version 4)."""
    known = [x for r in (cpu_io or {}).get("steps") or [] if r.get("index") == index
             and (x := _num(r.get("main_thread_cpu_ms_per_request"))) is not None]
    if not known or not batch:
        return None
    return round(sum(known) / batch, 4)


def server_cores(cpu_io: dict[str, Any] | None, index: int) -> float | None:
    """Cores the services kept busy in a step (cpu_io's cpu_pct summed / 100)."""
    pcts = [_num(r.get("cpu_pct")) for r in (cpu_io or {}).get("steps") or []
            if r.get("index") == index]
    known = [x for x in pcts if x is not None]
    return round(sum(known) / 100.0, 3) if known else None


def step_limit(limit: dict[str, Any] | None, step: dict[str, Any],
               cpu_io: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A step against the machine's limit (None without a limit)."""
    if not limit or not limit.get("images_per_s"):
        return None
    served = _num(step.get("images_per_s"))
    cpu, decode_batch = step_cpu_ms_per_image(limit, step.get("batch"))
    full = round(float(limit["usable_cores"]) * 1000.0 / cpu, 1)
    gen = step.get("loadgen") or {}
    gen_pct = _num(gen.get("total_cpu_pct", gen.get("cpu_pct")))
    loadgen_cores = None if gen_pct is None else round(gen_pct / 100.0, 3)
    net = None
    if loadgen_cores is not None:
        left = float(limit["usable_cores"]) - loadgen_cores
        net = round(left * 1000.0 / cpu, 1) if left > 0 else None
    srv_cpu = server_cpu_ms_per_image(cpu_io, step["index"], step.get("batch"))
    srv_cores = server_cores(cpu_io, step["index"])
    return {"images_per_s": full, "cpu_ms_per_image": cpu, "decode_from_batch": decode_batch,
            "model_from_batch": limit["model_best_batch"], "served_images_per_s": served,
            "fraction": round(served / full, 3) if served is not None else None,
            "loadgen_cores": loadgen_cores, "images_per_s_net": net,
            "fraction_net": round(served / net, 3) if served is not None and net else None,
            "server_cores": srv_cores,
            "busy_cores": round(srv_cores + (loadgen_cores or 0.0), 3)
            if srv_cores is not None else None,
            "server_cpu_ms_per_image": srv_cpu,
            "beyond_model_cpu_ms_per_image": round(srv_cpu - cpu, 4)
            if srv_cpu is not None else None,
            "main_thread_cpu_ms_per_image": main_thread_cpu_ms_per_image(
                cpu_io, step["index"], step.get("batch")),
            "cores_share": round(srv_cores / float(limit["usable_cores"]), 3)
            if srv_cores is not None else None,
            "cpu_share": round(cpu / srv_cpu, 3) if srv_cpu else None}


def annotate(steps: list[dict[str, Any]], limit: dict[str, Any] | None,
             cpu_io: dict[str, Any] | None) -> None:
    """Add `limit` to each step of the summary (in place; None without a limit)."""
    for st in steps:
        st["limit"] = step_limit(limit, st, cpu_io)
