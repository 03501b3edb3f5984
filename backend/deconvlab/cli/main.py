"""The ``deconvlab`` command: small subcommands over library functions.

``COMMANDS`` is the one list of subcommands, in the order ``--help`` shows
them; each is a ``Command`` (``cli.options``) kept in the module of its group:

==================  =====================================================================
module              subcommands
==================  =====================================================================
``cli.training``    ``train``, ``evaluate``, ``publish``
``cli.index``       ``index``
``cli.analyses``    ``filters``, ``evolution``, ``invariance``, ``correspondence``,
                    ``ablation``, ``transfer``
``cli.faithfulness``  ``faithfulness``
``cli.sanity``      ``sanity``
``cli.compare``     ``compare``, ``region``
``cli.report``      ``report``
``cli.register``    ``register``
``cli.serve``       ``serve``
==================  =====================================================================

A new subcommand is a ``Command`` in a module of its own (or of its group) and
one line here. Only the subcommand that runs adds its options (some import
torch to read their defaults), so ``deconvlab --help`` and ``--version`` stay
quick. Errors the library raises for bad input (``FileNotFoundError``,
``KeyError``, ``ValueError``) end the command with ``deconvlab <command>:
error: <message>`` on stderr and exit status 2, as argparse's own do.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from . import analyses, compare, index, register, report, serve, training
from .faithfulness import FAITHFULNESS
from .options import Command
from .sanity import SANITY

COMMANDS: dict[str, Command] = {
    "train": training.TRAIN,
    "evaluate": training.EVALUATE,
    "publish": training.PUBLISH,
    "filters": analyses.FILTERS,
    "index": index.INDEX,
    "evolution": analyses.EVOLUTION,
    "invariance": analyses.INVARIANCE,
    "correspondence": analyses.CORRESPONDENCE,
    "ablation": analyses.ABLATION,
    "transfer": analyses.TRANSFER,
    "faithfulness": FAITHFULNESS,
    "sanity": SANITY,
    "compare": compare.COMPARE, "region": compare.REGION,
    "report": report.REPORT,
    "register": register.REGISTER,
    "serve": serve.SERVE,
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``deconvlab`` parser: ``--version`` and one subparser per entry of ``COMMANDS``, each with
    its options (``only``: just that command's, so ``deconvlab --help`` and ``--version`` load no torch)."""
    parser = argparse.ArgumentParser(prog="deconvlab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help)
        if only is None or name == only:
            command.options(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    name = words[0] if words and words[0] in COMMANDS else ""  # the subcommand argparse will run, if any
    if name:
        for key, value in COMMANDS[name].env.items():
            os.environ.setdefault(key, value)
    args = build_parser(only=name).parse_args(argv)
    try:
        return args.func(args) or 0
    except (FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"deconvlab {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
