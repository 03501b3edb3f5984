"""Publish a training run as a registered model: weights, snapshots, model card, registry entry.

``publish(run_dir, name)`` copies the run's exported checkpoint and its
snapshots into ``models/<name>/``, evaluates the model on the val split,
writes ``MODEL_CARD.md`` and ``card.json`` (architecture, recipe, wall time,
val top-1, per-class accuracy, sha256 of every file, the command that
reproduces it) and adds the model to ``models/registry.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .._util import atomic_json
from ..data import file_digest
from .evaluate import evaluate_model
from .train import read_metrics
from ..nets import load_checkpoint, models_dir, save_checkpoint


def register(name: str, entry: dict, root: Path | None = None, default: bool = False) -> None:
    """Add or replace ``name`` in ``registry.json``."""
    root = root or models_dir()
    path = root / "registry.json"
    reg = json.loads(path.read_text()) if path.is_file() else {"default": name, "models": {}}
    reg["models"][name] = entry
    if default:
        reg["default"] = name
    atomic_json(path, reg, indent=2)


def stored_half(path: Path) -> bool:
    """Whether a safetensors checkpoint stores its floating-point tensors in fp16 (``load_checkpoint``
    gives float32 either way, so a re-saved copy must ask the file)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    return "F16" in dtypes


def publish(run_dir: str | Path, name: str, root: Path | None = None, data: str | None = None,
            command: str = "", default: bool = False, progress: bool = True,
            input_size: int | None = None) -> dict:
    """``input_size``: serve (and evaluate) the model at another size than it was trained at; a
    net with a global pool trained on random-resized crops often does better a little larger
    (Touvron et al., "Fixing the train-test resolution discrepancy", NeurIPS 2019). The card says so."""
    run = Path(run_dir)
    root = root or models_dir()
    dest = root / name
    (dest / "snapshots").mkdir(parents=True, exist_ok=True)
    if input_size:
        model, meta = load_checkpoint(run / "model.safetensors")  # as float32, whatever the file holds
        meta.input_size = int(input_size)
        save_checkpoint(dest / "model.safetensors", model, meta, half=stored_half(run / "model.safetensors"))
    else:
        shutil.copy2(run / "model.safetensors", dest / "model.safetensors")
    snaps = sorted((run / "snapshots").glob("epoch-*.safetensors"))
    names = {s.name for s in snaps}
    for stale in (dest / "snapshots").glob("epoch-*.safetensors"):  # a model published here before
        if stale.name not in names:
            stale.unlink()
    for snap in snaps:
        shutil.copy2(snap, dest / "snapshots" / snap.name)
    register(name, {"checkpoint": f"{name}/model.safetensors", "snapshots": f"{name}/snapshots",
                    "card": f"{name}/MODEL_CARD.md"}, root, default=default)
    _, meta = load_checkpoint(dest / "model.safetensors")
    config = json.loads((run / "config.json").read_text())
    log = read_metrics(run)
    ev = evaluate_model(str(dest / "model.safetensors"), data=data or config["data"], split="val",
                        progress=progress)
    files = sorted(p for p in dest.rglob("*.safetensors"))
    card = {
        "name": name,
        "architecture": {"arch": meta.arch, **meta.config},
        "recipe": {k: v for k, v in config.items() if k not in ("data", "out", "progress")},
        "command": command,
        "wall_time_s": round(sum(r["epoch_s"] for r in log), 1),
        "served_input_size": meta.input_size,
        "trained_input_size": config.get("input_size"),
        "epochs": log,
        "val_top1": ev["top1"],
        "val_images": ev["n"],
        "per_class": dict(zip(ev["classes"], ev["per_class"])),
        "confusion": ev["confusion"],
        "classes": meta.classes,
        "class_ids": meta.class_ids,
        "sha256": {str(p.relative_to(dest)): file_digest(p) for p in files},
    }
    atomic_json(dest / "card.json", card, indent=2)
    (dest / "MODEL_CARD.md").write_text(render_card(card))
    return card


def _architecture(a: dict, r: dict) -> list[str]:
    if a.get("arch") == "resnet18":
        w = a.get("width", 1.0)
        return [
            f"- torchvision's ResNet-18 topology (He et al. 2016; `torchvision.models.resnet.ResNet` with "
            f"`BasicBlock`, the same module names and forward code) at width {w}: stages of "
            f"{', '.join(str(max(1, round(c * w))) for c in (64, 128, 256, 512))} channels, "
            f"{a['num_classes']}-way fc; input {r['input_size']} px (any size works: a global average pool).",
            "- Batch norm is kept (not folded): the graph engine treats it, in eval mode, as the linear "
            "map it is. Each block's last batch norm started at zero (zero-init residual).",
            "- Layers are named by module path (`layer3.1`, `layer1.0.conv1`) and torch.fx op names "
            "(`layer1.0.add`, `layer1.0.relu_1`).",
        ]
    return [
        f"- ZFNet topology at width {a['width']} (conv filters "
        f"{', '.join(str(max(1, round(f * a['width']))) for f in (96, 256, 384, 384, 256))}), "
        f"fc6/fc7 {a['fc_size']} units, fc8 {a['num_classes']}-way; input {a['input_size']} px; "
        f"conv1 {a['conv1_kernel']}x{a['conv1_kernel']} stride {a['conv1_stride']}.",
        "- Feature maps at 224 px: 110, 55, 26, 13, 13, 13 and 6 pixels across, as in the paper.",
        "- Trained with batch norm after each conv; the checkpoint has it folded into the conv "
        "weights and biases (`norm: none`), so the deconvnet transposes plain filters. No LRN.",
        "- Adaptive average pooling to 6x6 before fc6: the identity at 224 px; it lets the early "
        "epochs run at smaller sizes (progressive resizing).",
    ]


def render_card(c: dict) -> str:
    a, r = c["architecture"], c["recipe"]
    what = "A ResNet-18" if a.get("arch") == "resnet18" else "A ZFNet (Zeiler & Fergus 2013, Fig. 3)"
    lines = [
        f"# {c['name']}",
        "",
        f"{what} trained with deconvlab on Imagenette. **Val top-1: {c['val_top1'] * 100:.2f}%** on all "
        f"{c['val_images']} val images.",
        "",
        f"**It knows {len(c['classes'])} classes**, and only these: {', '.join(c['classes'])}. "
        "Any other picture is still given one of them.",
        "",
        "## Architecture",
        *_architecture(a, r),
        "",
        "## Recipe",
        f"- SGD, momentum {r['momentum']} (Nesterov: {r['nesterov']}), weight decay {r['weight_decay']}, "
        f"batch {r['batch_size']}, {r['epochs']} epochs, one-cycle schedule peaking at lr {r['lr']} "
        f"({r['warmup'] * 100:.0f}% warm-up).",
        (f"- The paper's filter renormalisation after every step (conv filter RMS capped at {r['renorm_rms']}), "
         f"initial conv weights N(0, {r.get('init_std', 0.01)}), fc weights N(0, 0.01), biases 0, dropout 0.5 "
         "before fc6 and fc7." if r.get("arch", "zfnet") == "zfnet" else
         "- torchvision's initialisation (Kaiming normal convs); no filter renormalisation (batch norm "
         "makes a filter's scale irrelevant)."),
        f"- Label smoothing {r['label_smoothing']}; random-resized crops (area {r['crop_scale']}..1) "
        "and horizontal flips; images decoded once into memory.",
        f"- Progressive resizing: `{r['sizes']}` (px:fraction of epochs), the rest at {r['input_size']} px.",
        f"- Seed {r['seed']}; snapshots at epochs {r['snapshots']} and the last (for feature evolution).",
        "",
        "## Result",
        f"- Wall time of the training epochs: {c['wall_time_s'] / 60:.1f} min on this project's 2-core CPU machine.",
        f"- Val top-1: {c['val_top1'] * 100:.2f}%, at {c.get('served_input_size', r['input_size'])} px "
        f"(the size the model is served at; trained at up to {r['input_size']} px).",
        *([f"- The val top-1 of the epochs below is on a fixed random {r['val_limit']} of the val images "
           f"(`--val-limit`), at the training size; the figure above is on all of them."]
          if r.get("val_limit") else []),
        "",
        f"| epoch | size | train loss | train acc | val top-1{' (subset)' if r.get('val_limit') else ''} "
        "| epoch time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for e in c["epochs"]:
        v = f"{e['val_top1'] * 100:.1f}%" if "val_top1" in e else ""
        lines.append(f"| {e['epoch']} | {e['size']} | {e['train_loss']:.3f} | {e['train_acc'] * 100:.1f}% "
                     f"| {v} | {e['epoch_s']:.0f} |")
    lines += ["", "Per-class val accuracy:", "", "| class | accuracy |", "|---|---|"]
    lines += [f"| {k} | {v * 100:.1f}% |" for k, v in c["per_class"].items()]
    lines += ["", "## Reproduce", "", "```sh", c["command"] or "make train", "```", "",
              "## Files (sha256)", ""]
    lines += [f"- `{k}`: `{v}`" for k, v in c["sha256"].items()]
    return "\n".join(lines) + "\n"
