"""Models saved as programs (no source code needed): ``torch.export`` archives and TorchScript.

What each loader can be made to run, read from torch 2.14's sources and PyTorch's SECURITY.md:

| file | what loading it runs | here |
|---|---|---|
| ``.pt2`` (``torch.export.save``): a zip of JSON (the graph) and raw tensor bytes | (1) ``torch.load(weights_only=False)`` on pickled payloads (tensor subclasses, legacy ``weights/*.pt``), ``pickle.loads`` on opaque constants, torchbind's unpickler on custom objects; (2) the sample inputs through ``torch.load(weights_only=True)`` that *falls back to* ``weights_only=False`` when that fails; (3) ``sympy.sympify`` (an ``eval``) on shape expressions; (4) ``exec`` of the ``guards_code`` strings when ``.module()`` is called; (5) FX codegen that pastes parameter names into Python source; (6) any ``torch.*`` attribute named as a node target (``torch.os.system``) when the program runs; (7) AOTInductor's compiled libraries | loaded only when ``audit_pt2`` finds none of (1)-(7) beyond plain data: no pickled payload, sample inputs that ``weights_only=True`` reads, expressions and guards in a small sympy/guard vocabulary, dotted-word names, ``torch.ops.aten`` / ``_operator`` / ``torch.sym_*`` / ``math`` targets, no AOTInductor; else refused, saying which |
| TorchScript (``torch.jit.save``): a zip of TorchScript code and C++ pickles | a Turing-complete program: its ``__setstate__`` runs at load, its code can call any registered operator, and the C++ unpickler is not hardened against crafted input; PyTorch: "There is no safe mode for jit.load", "TorchScript models should be treated the same way as locally executable code" | refused unless ``trust=True`` (the user vouches for the file) |
| a ``torch.save``'d whole module | Python's unpickler importing the model's classes | refused (``weights.read_state_dict`` says so) |

The archive is read into memory once: the audit and the loader see the same bytes.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
import zipfile
from pathlib import Path

import torch
from torch import nn

PT2_SUFFIXES = (".pt2",)
TORCHSCRIPT_SUFFIXES = (".ts", ".pts", ".torchscript", ".jit")
NAME_KEYS = ("parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn", "name")
DOTTED = re.compile(r"[A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
SAFE_TARGET = re.compile(r"torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|torch\.sym_[a-z_]+|math\.[a-z_]+"
                         r"|_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|pos|pow|eq|ne|lt|le|gt|ge"
                         r"|and_|or_|not_|abs)")
SYMPY_NAMES = {"Symbol", "Integer", "Rational", "Float", "True", "False", "positive", "integer", "nonnegative",
               "real", "finite", "Add", "Mul", "Pow", "Max", "Min", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And",
               "Or", "Not", "oo", "floor", "ceiling", "Abs", "FloorDiv", "ModularIndexing", "Where", "PythonMod",
               "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator",
               "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural",
               "IntTrueDiv", "FloatTrueDiv", "OpaqueUnaryFn_sqrt", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or"}
GUARD_NAMES = {"L", "size", "stride", "storage_offset", "math", "isnan", "inf", "and", "or", "not", "True", "False"}
SAFE_OPS = {"(", ")", ",", "+", "-", "*", "/", "//", "%", "**", "=", "==", "!=", "<", "<=", ">", ">="}


def _tokens_ok(text: str, names: set[str], ops: set[str], string: re.Pattern) -> bool:
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False
    for t in toks:
        if t.type == tokenize.NAME and t.string not in names and not re.fullmatch(r"[a-z]{1,3}\d+", t.string):
            return False
        if t.type == tokenize.OP and t.string not in ops:
            return False
        if t.type == tokenize.STRING and not string.fullmatch(t.string):
            return False
        if t.type not in (tokenize.NAME, tokenize.OP, tokenize.STRING, tokenize.NUMBER, tokenize.NEWLINE,
                          tokenize.NL, tokenize.ENDMARKER):
            return False
    return True


def _walk(obj, found: list[str], at: str = "") -> None:
    """Every problem in the serialized program's JSON (targets, expressions, names)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, str):
                if "\r" in v or "\x00" in v:
                    found.append(f"{at}.{k}: a line break or NUL inside a string")
                if k == "target" and (not SAFE_TARGET.fullmatch(v) or "from_file" in v):  # aten::from_file reads files
                    found.append(f"operator {v!r}: expected torch.ops.aten.*, _operator.*, torch.sym_* or math.*")
                elif k == "expr_str" and not _tokens_ok(v, SYMPY_NAMES, SAFE_OPS, re.compile(r"'[a-z]{1,3}\d+'")):
                    found.append(f"shape expression {v!r}: not in the sympy vocabulary that is safe to eval")
                elif k in NAME_KEYS and not DOTTED.fullmatch(v):
                    found.append(f"name {v!r}: expected dotted words (FX pastes it into Python source)")
            else:
                _walk(v, found, f"{at}.{k}")
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, found, at)


def _guards(guards: list, found: list[str]) -> None:
    ops = SAFE_OPS | {"[", "]", "."}
    for g in guards:
        if not isinstance(g, str) or not _tokens_ok(g, GUARD_NAMES, ops, re.compile(r"'[A-Za-z_][A-Za-z0-9_]*'")):
            found.append(f"guard {g!r}: .module() would exec it; expected comparisons of input sizes")


def _root_of(names: list[str], marker: str) -> str | None:
    for n in names:
        if n == marker or n.endswith("/" + marker):
            return n[: len(n) - len(marker)]
    return None


def archive_kind(data: bytes | Path) -> str:
    """``"pt2"``, ``"torchscript"``, ``"torch.save"`` or ``"unknown"``, from the zip's contents (bytes or a path)."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    if not zipfile.is_zipfile(src):
        return "unknown"
    names = zipfile.ZipFile(src).namelist()
    if _root_of(names, "archive_format") is not None:
        return "pt2"
    root = _root_of(names, "data.pkl")
    if root is None:
        return "unknown"
    return "torchscript" if any(n.startswith(root + "code/") for n in names) else "torch.save"


def audit_pt2(data: bytes) -> list[str]:
    """What in a ``.pt2`` archive would make ``torch.export.load`` or ``.module()`` run more than data ([] = none)."""
    z = zipfile.ZipFile(io.BytesIO(data))
    names = z.namelist()
    root = _root_of(names, "archive_format")
    if root is None:
        return ["not a pt2 archive (torch < 2.8's format is read with torch.load(weights_only=False))"]
    found: list[str] = []
    if z.read(root + "archive_format").decode(errors="replace").strip() != "pt2":
        found.append("archive_format is not 'pt2'")
    outside = [n for n in names if not n.startswith(root) or n == "version" or "/serialized_" in "/" + n]
    if outside:  # torch.export.load falls back to torch < 2.8's layout, pickles and all, on a RuntimeError
        found.append(f"members of the old torch.export layout or outside the archive's folder: {outside[:4]}")
    rel = [n[len(root):] for n in names if n.startswith(root)]
    for r in rel:
        if r.startswith("data/aotinductor/"):
            found.append(f"{r}: AOTInductor compiled code (a native library that loading would run)")
            break
    for r in rel:
        if r.startswith(("data/weights/", "data/constants/")) and r.endswith(".pt"):
            found.append(f"{r}: a legacy pickled payload")
        elif r.endswith(("_weights_config.json", "_constants_config.json")):
            for fqn, meta in json.loads(z.read(root + r)).get("config", {}).items():
                path = meta.get("path_name", "")
                if meta.get("use_pickle") or path.startswith(("custom_obj_", "opaque_obj_")):
                    found.append(f"{r}: {fqn!r} is a pickled object ({path})")
                if not DOTTED.fullmatch(fqn):
                    found.append(f"{r}: name {fqn!r}: expected dotted words (FX pastes it into Python source)")
        elif r.startswith("data/sample_inputs/") and r.endswith(".pt"):
            try:
                torch.load(io.BytesIO(z.read(root + r)), map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 (any failure here means the loader would unpickle freely)
                found.append(f"{r}: sample inputs that torch.load(weights_only=True) refuses "
                             f"({type(e).__name__}); torch.export.load would retry with weights_only=False")
        elif r.startswith("models/") and r.endswith(".json"):
            program = json.loads(z.read(root + r))
            _walk(program.get("graph_module", {}), found, r)
            _walk(program.get("range_constraints", {}), found, r)
            _guards(program.get("guards_code", []) or [], found)
    return found


def load_program(path: str | Path, trust: bool = False, unflatten: bool = False) -> nn.Module:
    """A ``.pt2`` or TorchScript file -> a callable module (``ExportedProgram.module()`` for ``.pt2``).

    ``.module()`` is one flat ``fx.GraphModule`` of aten ops (``aten.conv2d``, ``aten.relu``), each node's
    ``meta["nn_module_stack"]`` naming the module it came from; ``unflatten=True`` returns
    ``torch.export.unflatten``'s tree instead, whose ``named_modules`` paths are the original model's.
    ``trust=True`` skips the audit and lets TorchScript load: only for files you made or vouch for.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"program file not found: {path}")
    data = path.read_bytes()
    kind = archive_kind(data)
    if kind == "pt2":
        problems = [] if trust else audit_pt2(data)
        if problems:
            raise ValueError(f"refused {path}: loading this torch.export archive would run more than data ("
                             + "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8
                                                          else "") + "). Pass trust=True only if you made the file.")
        ep = torch.export.load(io.BytesIO(data))
        return torch.export.unflatten(ep) if unflatten else ep.module()
    if kind == "torchscript":
        if not trust:
            raise ValueError(
                f"refused {path}: a TorchScript file is a program (its code runs at load, in __setstate__, and "
                f"can call any registered operator) and torch.jit.load has no safe mode (PyTorch's SECURITY.md: "
                f"treat TorchScript as executable code from its author). Pass trust=True if you made the file or "
                f"trust its source, or save the model with torch.export.save as .pt2, which is audited and loaded")
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    if kind == "torch.save":
        raise ValueError(f"refused {path}: a torch.save pickle, not a program; if it is a whole module, it needs "
                         f"its source and Python's unpickler (which can run any code). Save model.state_dict() "
                         f"and use torchvision:<arch> with weights=, or torch.export.save the model as .pt2")
    raise ValueError(f"{path}: expected a torch.export .pt2 archive or a TorchScript zip, got neither")


def example_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    """The (N, C, H, W) a ``.pt2`` program was exported with (-1 where a dimension is dynamic), if 4-D."""
    if not isinstance(module, torch.fx.GraphModule):
        return None
    for node in module.graph.nodes:
        if node.op == "placeholder" and hasattr(node.meta.get("val"), "shape"):
            shape = node.meta["val"].shape
            return tuple(s if isinstance(s, int) else -1 for s in shape) if len(shape) == 4 else None
    return None
