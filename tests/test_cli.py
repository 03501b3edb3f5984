"""The ``deconvlab`` command's frame: ``--version``, ``--help``, and ``COMMANDS`` as the one list of subcommands.

The subcommands' work is tested where their library is (tests/analyses, tests/training,
tests/index); here only what holds for all of them:

* ``deconvlab --version`` and ``python -m deconvlab --version`` print ``deconvlab.__version__``;
  the ``deconvlab`` console script is ``deconvlab.cli:main``.
* ``python -m deconvlab --help`` and ``python -m deconvlab.cli --help`` list every name of
  ``COMMANDS``, in its order, and every subcommand's ``--help`` exits 0.
* The parser's subcommands are exactly ``COMMANDS`` (in order), and every ``Command`` written in
  a ``deconvlab.cli`` module is in ``COMMANDS`` (none defined and forgotten).
* A command added to ``COMMANDS`` alone runs, shows in ``--help``, and gets ``main``'s error
  handling and its environment defaults.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import deconvlab
import deconvlab.cli
from deconvlab.cli.main import COMMANDS, build_parser, main
from deconvlab.cli.options import Command

ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, env=ENV, timeout=120)


def _listed(help_text: str) -> list[str]:
    """The subcommand names of a ``--help`` text, from its ``{a,b,...}`` choice list."""
    m = re.search(r"\{([a-z_,-]+)\}", help_text)
    assert m, help_text
    return m.group(1).split(",")


def test_version_from_main(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"deconvlab {deconvlab.__version__}"


def test_top_level_help_and_version_load_no_torch():
    code = ("import sys\nfrom deconvlab.cli import main\nfor argv in (['--help'], ['--version']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "print('torch loaded:', 'torch' in sys.modules)")
    r = _run(sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith("torch loaded: False"), r.stdout


def test_console_script_is_main_and_prints_the_version():
    (ep,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "deconvlab"]
    assert ep.load() is deconvlab.cli.main
    script = Path(sys.executable).with_name("deconvlab")
    if not script.is_file():
        pytest.skip(f"no deconvlab script beside {sys.executable} (entry point checked above)")
    r = _run(str(script), "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"deconvlab {deconvlab.__version__}", r.stderr


@pytest.mark.parametrize("module", ["deconvlab", "deconvlab.cli"])
def test_python_m_help_lists_every_command_in_order(module):
    r = _run(sys.executable, "-m", module, "--help")
    assert r.returncode == 0, r.stderr
    assert _listed(r.stdout) == list(COMMANDS)
    for name, command in COMMANDS.items():  # each with its one-line help
        assert re.search(rf"^\s+{name}\s+{re.escape(command.help[:30])}", r.stdout, re.M), (name, r.stdout)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_subcommand_help_exits_0(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: deconvlab {name} ")


def test_the_parser_has_exactly_the_commands_of_COMMANDS():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == list(COMMANDS)
    for name, command in COMMANDS.items():
        assert sub.choices[name].get_default("func") is command.run
    assert _listed(parser.format_help()) == list(COMMANDS)


def test_every_command_written_in_the_cli_package_is_in_COMMANDS():
    written = {}
    for info in pkgutil.iter_modules(deconvlab.cli.__path__):
        if info.name.startswith("__"):
            continue
        module = importlib.import_module(f"deconvlab.cli.{info.name}")
        written.update({f"{info.name}.{k}": v for k, v in vars(module).items() if isinstance(v, Command)})
    listed = list(COMMANDS.values())
    assert len(written) >= len(COMMANDS)
    assert [k for k, v in written.items() if not any(v is c for c in listed)] == []


def test_a_command_added_to_COMMANDS_alone_runs_and_gets_mains_handling(monkeypatch, capsys):
    def options(p):
        p.add_argument("--who", default="world")

    def run(args):
        if args.who == "nobody":
            raise ValueError(f"--who: expected someone, got {args.who!r}")
        print(f"hello {args.who} {os.environ['DECONVLAB_TEST_HELLO']}")
        return 0

    monkeypatch.setenv("DECONVLAB_TEST_HELLO", "")  # recorded, so that the undo removes what main sets
    monkeypatch.delenv("DECONVLAB_TEST_HELLO")
    monkeypatch.setitem(COMMANDS, "hello", Command("say hello", options, run, env={"DECONVLAB_TEST_HELLO": "set"}))
    assert main(["hello", "--who", "you"]) == 0
    assert capsys.readouterr().out == "hello you set\n"
    assert main(["hello", "--who", "nobody"]) == 2
    assert capsys.readouterr().err == "deconvlab hello: error: --who: expected someone, got 'nobody'\n"
    assert _listed(build_parser().format_help())[-1] == "hello"
