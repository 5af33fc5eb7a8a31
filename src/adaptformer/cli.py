"""Command line: ``adaptformer <command> ...``. Each command parses its options and calls library functions
with explicit arguments; user errors print ``error: <one line>`` and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .adapters.adaptmlp import INIT_OPTIONS, LAYERNORM_OPTIONS, PLACEMENTS, parse_scale
from .adapters.methods import METHODS, AdaptConfig
from .adapters.vpt import VPT_MODES
from .errors import AdaptFormerError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help_text, add_arguments, run)
        return run

    return register


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument("--model", default="adaptformer/vit-tiny-cifar10",
                       help="timm model name or embedded backbone (default: %(default)s)")
    group.add_argument("--checkpoint", default=None, help="local weights file (timm, MAE or reference layout)")
    group.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                       help="random backbone weights (for counting parameters or smoke tests)")


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    d = AdaptConfig()
    group = parser.add_argument_group("method")
    group.add_argument("--method", default=d.method, choices=sorted(METHODS))
    group.add_argument("--bottleneck", type=int, default=d.bottleneck, help="adapter width r (default: 64)")
    group.add_argument("--scale", type=parse_scale, default=d.scale, help="a number, or 'learnable' (default: 0.1)")
    group.add_argument("--layernorm", default=d.layernorm, choices=LAYERNORM_OPTIONS)
    group.add_argument("--adapter-dropout", type=float, default=d.dropout)
    group.add_argument("--init", default=d.init, choices=INIT_OPTIONS)
    group.add_argument("--placement", default=d.placement, choices=PLACEMENTS)
    group.add_argument("--layers", default=d.layers, help="all | top:K | bottom:K | 0,1,5 (default: all)")
    group.add_argument("--vpt-tokens", type=int, default=d.vpt_tokens)
    group.add_argument("--vpt-mode", default=d.vpt_mode, choices=VPT_MODES)


def method_config(args: argparse.Namespace) -> AdaptConfig:
    return AdaptConfig(method=args.method, bottleneck=args.bottleneck, scale=args.scale, layernorm=args.layernorm,
                       dropout=args.adapter_dropout, init=args.init, placement=args.placement, layers=args.layers,
                       vpt_tokens=args.vpt_tokens, vpt_mode=args.vpt_mode)


def _params_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_method_arguments(parser)
    parser.add_argument("--num-classes", type=int, default=None, help="classes of the new head")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@command("params", "count total / trainable parameters of a method on a backbone", _params_arguments)
def run_params(args: argparse.Namespace) -> int:
    from .adapters.report import parameter_report
    from .builder import create_model

    model = create_model(args.model, num_classes=args.num_classes, pretrained=args.pretrained,
                         checkpoint=args.checkpoint, config=method_config(args))
    report = parameter_report(model)
    if args.json:
        print(json.dumps({"model": args.model, "method": args.method, **report.to_dict()}))
        return 0
    rows = [("model", args.model), ("method", args.method), ("total", f"{report.total:,}"),
            ("trainable", f"{report.trainable:,}"), ("percent", f"{report.percent:.2f} %"),
            ("  adapters", f"{report.adapters:,}"), ("  prompts", f"{report.prompts:,}"),
            ("  head", f"{report.head:,}"), ("  norms", f"{report.norms:,}"), ("frozen", f"{report.frozen:,}")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value:>14}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptformer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"adaptformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(child)
        child.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except AdaptFormerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
