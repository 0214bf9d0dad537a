"""`infbench export`: a variant's topology as a docker-compose file or Kubernetes manifests
(infbench/launch/export.py), written under build/export/<variant>/ and checked before it is
said to be written. Exit 0 written and checked, 1 an error (what cannot be exported, a check
that failed, a file that could not be written)."""

from __future__ import annotations

import argparse
from pathlib import Path

from infbench import config
from infbench.cli.args import Subparsers, add_model, env
from infbench.launch import export
from infbench.launch.docker.engine import engine_problem
from infbench.launch.docker.image import IMAGE_NAME, Images
from infbench.measure import assets
from infbench.paths import ROOT
from infbench.results.files import mkdir, write_text

NAME = "export"
HOST_PORT_DEFAULT = 8000


def add_parser(sub: Subparsers) -> None:
    x = sub.add_parser(NAME, help="a variant's topology as a docker-compose file or "
                       "Kubernetes manifests (build/export/<variant>/)")
    x.add_argument("variants", nargs=1, metavar="variant")
    x.add_argument("--format", default=env("EXPORT_FORMAT", "compose"), choices=export.FORMATS,
                   help="compose or k8s (env INFBENCH_EXPORT_FORMAT; default compose)")
    x.add_argument("--out", default=env("EXPORT_DIR"),
                   help="the folder (env INFBENCH_EXPORT_DIR; default build/export/<variant>)")
    x.add_argument("--image", default=env("EXPORT_IMAGE"),
                   help="the servers' image (env INFBENCH_EXPORT_IMAGE; default the one "
                        "RUNTIME=docker built from the servers as they are now)")
    x.add_argument("--host-port", type=int, default=int(env("EXPORT_HOST_PORT") or
                                                        HOST_PORT_DEFAULT),
                   help="compose: the entry's port on 127.0.0.1 (env INFBENCH_EXPORT_HOST_PORT; "
                        f"default {HOST_PORT_DEFAULT})")
    add_model(x)


def image_for(given: str) -> str:
    if given:
        return given
    problem = engine_problem()
    found = None if problem else Images().find_image()
    if found:
        return found
    why = problem or "no image built from the servers as they are now"
    print(f"export: {why}: the files name {IMAGE_NAME}:latest; build the image (a "
          "RUNTIME=docker run does) and give its tag with IMAGE=")
    return f"{IMAGE_NAME}:latest"


def run(args: argparse.Namespace) -> int:
    exp = config.load(args.experiments)
    v = exp.variant(args.variants[0])
    fmt = args.format
    export.check_exportable(v, fmt)
    if not 0 < args.host_port < 65536:
        raise config.ConfigError(f"export --host-port: 1..65535, got {args.host_port}")
    m = exp.model_for(v, args.model)
    path = Path(m.path) if m.is_file else assets.model_path(m)
    if any(s.gets_model for s in v.services) and not path.exists():
        print(f"export: model {m.name!r} is not at {path} yet (`make build_{v.name}` "
              "builds it); the files mount its folder")
    image = image_for(args.image)
    model_dir = path.resolve().parent
    out_dir = Path(args.out) if args.out else ROOT / "build" / "export" / v.name
    if fmt == "k8s":
        docs = export.manifests(v, image, model_dir, path.name)
        problems = export.check_manifests(docs)
        text = export.render(fmt, docs)
    else:
        doc = export.compose(v, image, model_dir, path.name, args.host_port)
        problems = export.check_compose(doc)
        text = export.render(fmt, doc)
    if problems:
        raise export.ExportError("export: the files fail their check: " + "; ".join(problems))
    target = out_dir / export.FILE_NAMES[fmt]
    mkdir(out_dir)
    write_text(target, text)
    print(f"{fmt}: {target}")
    return 0
