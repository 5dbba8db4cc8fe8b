"""`python -m runtime serve --bundle DIR [...]`: the server. Every flag is also a `TESSERA_*`
environment variable (runtime/config.py); the flag wins.

    python -m runtime serve --bundle runs/bundle --port 50051 --metrics-port 9090
    TESSERA_BUNDLE=runs/bundle TESSERA_MAX_WAIT_MS=2 python -m runtime serve
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import re
import sys
from dataclasses import fields

from runtime.config import BACKENDS, INT8_MODES, ServeConfig, load_config
from runtime.errors import TesseraError


def field_help() -> dict[str, str]:
    """Each ServeConfig field's trailing comment in runtime/config.py: one source of truth for --help."""
    source = inspect.getsource(ServeConfig)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^    (\w+): [^#\n]+#(.*)$", source, re.M)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a bundle over gRPC")
    defaults, helps = ServeConfig(), field_help()
    for f in fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        env = "TESSERA_" + f.name.upper()
        default = getattr(defaults, f.name)
        if f.type in (bool, "bool"):
            s.add_argument(flag, action="store_true", default=None, help=f"{helps.get(f.name, '')} [{env}]")
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        choices = {"backend": BACKENDS, "int8": INT8_MODES}.get(f.name)
        bare = {"nargs": "?", "const": "on"} if f.name == "int8" else {}  # `--int8` alone is `--int8=on`
        s.add_argument(
            flag, type=kind, default=None, choices=choices, **bare,
            help=f"{helps.get(f.name, '')} [{env}, default {default!r}]",
        )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = load_config(vars(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not cfg.bundle:
        print("error: no bundle: pass --bundle DIR or set TESSERA_BUNDLE", file=sys.stderr)
        return 2
    from runtime.server import serve

    try:
        return asyncio.run(serve(cfg))
    except (TesseraError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
