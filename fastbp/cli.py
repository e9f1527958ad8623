"""The ``fastbp`` command line: ``fastbp train``, ``verify``, ``bench`` and ``run``.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status). Building the parser imports those modules, so they keep
heavy imports (PyTorch, matplotlib, scikit-learn, tqdm) inside ``run``.
"""

import argparse
import importlib
import sys

from fastbp._version import __version__

SUBCOMMANDS = {
    "train": ("fastbp.training", "train one of the nets on handwritten digits (the main job)"),
    "verify": ("fastbp.verify", "check kernels against the NumPy reference on this machine"),
    "bench": ("fastbp.bench", "time reference, kernels and PyTorch side by side"),
    "run": ("fastbp.bookrun", "run a book script with fastbp serving its common package"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastbp",
        description="Fast, verified layers from Deep Learning from Scratch, chapters 5-8.",
    )
    parser.add_argument("--version", action="version", version=f"fastbp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, summary) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            p.set_defaults(_missing=True)
    return parser


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) > 1 and argv[0] == "run" and not argv[1].startswith("-"):
        # fastbp run SCRIPT ARGS...: ARGS go to the script untouched, as python SCRIPT ARGS
        # gives them (argparse would drop a '--' and read options meant for the script).
        args = parser.parse_args(argv[:2])
        args.args = argv[2:]
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"fastbp {args.command}: not available in this build", file=sys.stderr)
        return 2
    return importlib.import_module(args._module).run(args)


if __name__ == "__main__":
    sys.exit(main())
