"""Every family of the families table exported in both formats with AdaptFormer (tiny configurations, random
weights): OK with the largest difference from eager, or the one-line refusal. The test suite traces one family of
each kind (``tests/test_export.py``); this is the whole table.

    python benchmarks/export_families.py [--formats torch-export onnx] [--method adaptformer]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "backbones")]  # the tests' tiny builders

import test_discovered as discovered  # noqa: E402
import test_families as families  # noqa: E402

import adaptformer  # noqa: E402
from adaptformer import AdaptFormerError  # noqa: E402
from adaptformer.export import export_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=["torch-export", "onnx"])
    parser.add_argument("--method", default="adaptformer")
    args = parser.parse_args()
    builders = {**{n: families for n in families.FAMILIES}, **{n: discovered for n in discovered.FAMILIES}}
    with tempfile.TemporaryDirectory() as scratch:
        for format in args.formats:
            for name, module in builders.items():
                started = time.perf_counter()
                model = adaptformer.adapt(module.make(name), args.method, num_classes=3)
                spec = model.input_spec().replace(size=module.inputs(name, 1).shape[-1])
                try:
                    exported = export_model(model, Path(scratch) / f"{format}-{name}", format, spec)
                except AdaptFormerError as error:
                    print(f"{format:12s} {name:34s} refused: {error}")
                    continue
                worst = max(exported.manifest["check"]["max_abs_difference"].values())
                print(f"{format:12s} {name:34s} OK  max |diff| {worst:.1e}  {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
