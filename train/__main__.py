"""`python -m train --config CONFIG [--set key=value ...] [--out DIR] [--resume CKPT | --init CKPT]`

CONFIG is a file or a name in train/configs/ ({configs}). Under `torchrun`,
every rank runs this same command; rank 0 writes OUT/metrics.jsonl and the checkpoints.
`--resume` continues a run exactly; `--init` starts a new run (new config, optimiser, schedule and
locks) from a checkpoint's weights — fine-tuning a trained model, or the second stage of a
linear-probe-then-fine-tune recipe (docs/results.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

from train.config import ConfigError, config_keys, load_train_config, to_dict

CONFIGS = Path(__file__).with_name("configs")


def main(argv: list[str] | None = None) -> int:
    names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.toml")))
    parser = argparse.ArgumentParser(
        prog="python -m train", description=__doc__.split("\n\n")[1].format(configs=names)
    )
    parser.add_argument("--config", help=f"a TOML file, or a name in train/configs/: {names}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, repeatable (see --keys)")  # fmt: skip
    parser.add_argument("--keys", action="store_true", help="list every config key, its type and default")
    parser.add_argument("--eval-only", metavar="CKPT", help="print a checkpoint's recalls (no training)")
    parser.add_argument("--split", default="dev", help="with --eval-only: dev, or test (the held-out split)")
    parser.add_argument("--out", help="run directory (default: runs/CONFIG-NAME)")
    parser.add_argument("--resume", help="a checkpoint (e.g. OUT/last.pt) to continue exactly from")
    parser.add_argument("--init", help="a checkpoint whose weights a new run starts from (same shapes)")
    args = parser.parse_args(argv)
    if args.keys:
        for key, kind, default in config_keys():
            print(f"{key} = {default!r}  ({kind})")
        return 0
    if importlib.util.find_spec("torch") is None:
        print('error: training needs the train extra: pip install -e ".[train]"', file=sys.stderr)
        return 2
    if args.eval_only:
        from train.evaluate import evaluate_checkpoint

        try:
            metrics = evaluate_checkpoint(args.eval_only, args.split)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps({"checkpoint": args.eval_only, "split": args.split,
                          **{k: round(v, 2) for k, v in metrics.items()}}))  # fmt: skip
        return 0
    if not args.config:
        parser.error("--config is required")
    logging.basicConfig(
        level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.resume and args.init:
        print("error: --resume continues a run and --init starts one: pass one of them", file=sys.stderr)
        return 2
    try:
        cfg = load_train_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    if args.resume is None and (out / "last.pt").exists():
        print(
            f"error: {out} already holds a run; pass --resume {out / 'last.pt'} or another --out",
            file=sys.stderr,
        )
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))

    from train.loop import train  # torch is imported only once the arguments are good

    metrics = train(cfg, out, args.resume, init=args.init)
    if metrics and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"out": str(out), **{k: round(v, 2) for k, v in metrics.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
