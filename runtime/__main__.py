"""`python -m runtime serve --bundle DIR [...]`: the server. Every flag is also a `TESSERA_*`
environment variable (runtime/config.py); the flag wins.

    python -m runtime serve --bundle runs/bundle --port 50051 --metrics-port 9090
    TESSERA_BUNDLE=runs/bundle TESSERA_MAX_WAIT_MS=2 python -m runtime serve

`python -m runtime keys add|revoke|list --file F` manages API keys (runtime/keys.py).

`python -m runtime check --bundle DIR` runs the check `serve --int8` makes at start — each int8
graph against the bundle's fp32 reference, on this CPU (runtime/selfcheck.py) — prints a line per
graph and exits 1 where one fails: whether a bundle's int8 holds on a machine, without serving.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import re
import sys
from dataclasses import fields

from runtime.config import ENGINE_BACKENDS, INT8_MODES, ServeConfig, load_config
from runtime.errors import TesseraError

CHOICES = {"backend": ENGINE_BACKENDS, "int8": INT8_MODES, "reflection": ("auto", "on", "off")}


def field_help() -> dict[str, str]:
    """Each ServeConfig field's trailing comment in runtime/config.py: one source of truth for --help."""
    source = inspect.getsource(ServeConfig)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^    (\w+): [^#\n]+#(.*)$", source, re.M)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        choices = CHOICES.get(f.name)
        bare = {"nargs": "?", "const": "on"} if f.name == "int8" else {}  # `--int8` alone is `--int8=on`
        s.add_argument(
            flag, type=kind, default=None, choices=choices, **bare,
            help=f"{helps.get(f.name, '')} [{env}, default {default!r}]",
        )  # fmt: skip
    sub.add_parser("keys", help="add, revoke or list API keys (python -m runtime keys add --help)")
    c = sub.add_parser("check", help="check the bundle's int8 graphs on this CPU, as `serve --int8` does")
    c.add_argument("--bundle", default=None, help="the bundle to check [TESSERA_BUNDLE]")
    c.add_argument(
        "--cpu-threads", type=int, default=None, help="ONNX Runtime intra-op threads [default: all]"
    )
    return p


def check(cfg: ServeConfig) -> int:
    """One line per int8 graph; 0 when every one passes."""
    from runtime.bundle import load_bundle
    from runtime.engines import checked_int8, unprovable
    from runtime.selfcheck import load_reference

    bundle = load_bundle(cfg.bundle)
    if (why := unprovable(bundle)) is not None:
        print(f"error: {why}", file=sys.stderr)
        return 1
    reference = load_reference(bundle)
    assert reference is not None  # unprovable() found the manifest naming one
    passed = True
    for modality in ("image", "text"):
        _, _, result = checked_int8(bundle, modality, reference, cfg)
        print(result.describe(), flush=True)
        passed &= result.passed
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:  # API keys: runtime/keys.py has its own parser
        from runtime.keys import main as keys_main

        return keys_main(argv[1:])
    args = parser().parse_args(argv)
    try:
        cfg = load_config({k: v for k, v in vars(args).items() if k != "command"})
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
    try:
        if args.command == "check":
            return check(cfg)
        from runtime.server import serve

        return asyncio.run(serve(cfg))
    except (TesseraError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
