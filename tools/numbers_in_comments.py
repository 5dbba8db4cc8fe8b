"""Lists comment and docstring lines of the product code that quote a measured number: a number
followed by a unit (ms, µs, %, x, MB, RSUM, items/s ...). Measured numbers and history belong in
docs/results.md and docs/benchmarks.md, where they are dated and reproducible; code comments say
why the code is as it is (docs/architecture.md). Lines that need such a number (a constant's
meaning, a format) are allowed by name in ALLOWED.

    python tools/numbers_in_comments.py        # prints path:line: text; exit 1 if any
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "export", "train", "demo")
UNIT = re.compile(
    r"(?<![\w.])\d[\d,.]*\s?(ms|µs|%|x|×|MB|GB|MiB|GiB|RSUM|items/s|texts/s|images/s|steps/s)(?![\w/])"
)
# (path, a substring of the line): numbers that define something rather than report a measurement
ALLOWED = {
    ("runtime/config.py", "interval (100 ms)"),  # the fsync policy's period
    ("runtime/config.py", "gRPC itself refuses > 2x"),  # gRPC's rule
    ("export/outliers.py", "exceeds 4x the median"),  # OUTLIER_RATIO's meaning
    ("export/onnx.py", "(B, 3, S, S)"),  # a shape comment
    ("train/data/shapes.py", "4x supersampling"),  # the renderer's factor
    ("train/data/shapes.py", "(4 kinds x 8 colours x 3 sizes)"),
    ("export/quantize.py", "2·255·128"),  # arithmetic of the int16 saturation
    ("runtime/tensorrt.py", "TensorRT 8.6-10.x"),  # the versions it supports
}


def text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every comment and every docstring line in `path`."""
    source = path.read_text(encoding="utf-8")
    out = [(t.start[0], t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline)
           if t.type == tokenize.COMMENT]  # fmt: skip
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and node.body:
                first = node.body[0].lineno
                out += [(first + i, line) for i, line in enumerate(doc.splitlines())]
    return out


def offenders(root: Path = ROOT) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if "/proto/" in rel:
                continue
            for number, line in text_lines(path):
                if UNIT.search(line) and not any(rel == p and s in line for p, s in ALLOWED):
                    found.append(f"{rel}:{number}: {line.strip()}")
    return found


if __name__ == "__main__":
    lines = offenders()
    print("\n".join(lines))
    sys.exit(1 if lines else 0)
