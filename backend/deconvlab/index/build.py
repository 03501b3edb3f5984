"""Building the top-k index: one pass over a data split, sharded over processes, resumable (Fig. 2).

How it is built (:func:`build_index`)
    The split streams through the model in batches (a DataLoader whose
    workers read, hash, decode, :func:`deconvlab.data.resize_crop` and
    normalise; :class:`_SplitImages`). :func:`.scan.scan_values` reduces each
    layer's activation to its max per unit and image; the argmax is taken
    (:func:`.scan.argmax_positions`) only for the few (unit, image) pairs that
    enter a top-k, which keeps the scan close to a plain forward pass. A
    graph-engine net (a ResNet, a user's module) is scanned by the streaming
    run of :mod:`.scan_graph` instead (its layers: that module's rule; each
    value freed after its last reader; the argmax taken as it goes). A
    :class:`.tracker.TopK` holds the running top-k; :func:`.store.write_index`
    commits it.

Processes
    Under ``torchrun --nproc_per_node N`` (one node or several; gloo on the
    CPU, nccl on GPUs) rank r scans batches ``r, r + N, r + 2N, ...`` of the
    listing (:func:`shard_batches`: no padding, no duplicates, unlike
    ``DistributedSampler``); the per-rank top-k are gathered and merged exactly
    (:meth:`.tracker.TopK.merge`) and rank 0 writes the index. Because each
    batch holds the same images as in a one-process build, the builds are
    bit-identical for the same batch size, whatever the number of processes
    or loader workers. (A CPU convolution may round differently for another
    batch shape, so a different ``batch_size`` can change values in the last
    bit and, with them, the order of near-ties. Thread counts can matter for
    the same reason; the test runs one thread per process.)

Resuming
    Every ``checkpoint_every`` batches each rank writes its tracker to
    ``<out>/partial/`` (:class:`_Checkpoint`; the files are described in
    :mod:`.store`). A build that finds a checkpoint made with the same
    settings (weights, listing, split, k, batch size, rank, world size, units,
    layers, input size) resumes after it; any other checkpoint is ignored.

Errors (``ValueError``): k, batch size or checkpoint interval below 1; an empty
split; ``out`` naming a file; an image that cannot be decoded (named, and the
folder keeps its last committed index). ``RuntimeError`` when the ranks see
other weights or listings.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .._util import atomic_json, atomic_npz
from ..data import Split, list_split, resize_crop, to_rgb
from .scan import LayerInfo, argmax_positions, index_layers, scan_values
from .store import (ARRAY_ROLES, FORMAT, VERSION, default_index_path, model_sha256, remove_file,
                    remove_old_files, write_index)
from .tracker import TopK

__all__ = ["build_index", "shard_batches"]


# ------------------------------------------------------------------ data

def _sha_u64(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big")


class _SplitImages(torch.utils.data.Dataset):
    """Image ``i`` of a split as a normalised tensor, with its index and content-hash prefix.

    Runs in the DataLoader's workers: read the file once, hash its bytes,
    decode, resize the shorter side and centre-crop to ``size``, normalise.
    """

    def __init__(self, split: Split, size: int, mean, std, channels: int = 3):
        self.split, self.size, self.channels = split, size, int(channels)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        i = int(i)
        data = self.split.path(i).read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.seek(0)
                rgb = to_rgb(im)
        except Exception as e:  # noqa: BLE001 -- name the file, keep the cause
            raise ValueError(f"cannot decode data-set image {self.split.files[i]}: {e}") from e
        im = resize_crop(rgb, self.size)
        im = im.convert("L") if self.channels == 1 else im  # a one-channel model: as Net.preprocess does
        a = np.asarray(im, dtype=np.float32) / 255.0
        a = a[:, :, None] if a.ndim == 2 else a
        x = ((torch.from_numpy(a).permute(2, 0, 1) - self.mean) / self.std).contiguous()
        sha = np.uint64(_sha_u64(hashlib.sha256(data).digest())).view(np.int64)  # torch has no uint64
        return x, i, int(sha)


def _net_parts(net):
    """(model, module, meta, device) of a ``Net`` (or a model name/path, loaded with ``deconvlab.load``).

    ``model`` is what the scan loop runs: the flat Sequential of a sequential-engine net (or of
    anything with ``module``, ``meta`` and ``device``), the ``Net`` itself on the graph engine."""
    if isinstance(net, (str, Path)):
        from .. import load
        net = load(str(net))
    module, meta = net.module, net.meta
    device = getattr(net, "device", None)
    if device is None:
        p = next(module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    model = net if getattr(net, "engine", None) == "graph" else module
    return model, module, meta, torch.device(device)


# ------------------------------------------------------------------ processes

class _Dist:
    """torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a single process."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist = dist
        self.owned = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if dist.is_available() and not dist.is_initialized() and world > 1:
            if device.type == "cuda":
                torch.cuda.set_device(device)  # the collectives use the rank's own GPU
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owned = True
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def gather(self, obj) -> list:
        if not self.on:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.on:
            self.dist.barrier()

    def close(self) -> None:
        if self.owned:
            self.dist.destroy_process_group()


def shard_batches(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Rank ``rank``'s batches: batches ``rank, rank + world, ...`` of ``0..n-1`` cut in ``batch_size``.

    Every image is in exactly one batch of one rank (no padding, no repeats,
    unlike ``DistributedSampler``), and each batch holds the same images as in
    a one-process build, so the numbers (which a CPU convolution may compute
    differently for different batch shapes) are bit-identical too.
    """
    return [list(range(s, min(s + batch_size, n))) for s in range(rank * batch_size, n, world * batch_size)]


# ------------------------------------------------------------------ checkpoints

class _Checkpoint:
    """One rank's resume point: ``partial/rank{r}-of-{w}.json`` naming ``partial/rank{r}-of-{w}-{n}.npz``."""

    def __init__(self, folder: Path, settings: dict):
        self.folder = folder
        self.settings = dict(settings, format=FORMAT + "-checkpoint", version=VERSION)
        self.json_path = folder / f"rank{settings['rank']}-of-{settings['world_size']}.json"

    def resume(self, units: int, k: int) -> tuple[TopK, int]:
        """The tracker and the number of batches done of a checkpoint with these settings, else (empty, 0)."""
        if self.json_path.is_file():
            saved = json.loads(self.json_path.read_text())
            same = {key: saved.get(key) for key in self.settings} == self.settings
            if same and (self.folder / saved["arrays"]).is_file():
                with np.load(self.folder / saved["arrays"], allow_pickle=False) as z:
                    return TopK.from_arrays({role: z[role] for role in ARRAY_ROLES}), int(saved["batches_done"])
        return TopK(units, k), 0

    def save(self, tracker: TopK, done: int) -> None:
        name = f"{self.json_path.stem}-{done}.npz"
        atomic_npz(self.folder / name, tracker.arrays())
        atomic_json(self.json_path, dict(self.settings, batches_done=done, arrays=name))
        for old in self.folder.glob(f"{self.json_path.stem}-*.npz"):  # older checkpoints of this rank
            if old.name != name:
                remove_file(old)

    def remove(self) -> None:
        remove_file(self.json_path)


# ------------------------------------------------------------------ build

def _scan_shard(model, module, layers: list[LayerInfo], loader, device: torch.device, tracker: TopK, done: int,
                after_batch: Callable[[int, int], None]) -> None:
    """Every batch of ``loader`` into ``tracker``; ``after_batch(batches done, images in it)`` after each."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for x, image, sha in loader:
                values, maps = scan_values(model, x.to(device, non_blocking=True), layers,
                                           floor=tracker.values[:, -1])  # (graph nets: argmax above it only)
                tracker.update(values.numpy(), image.numpy(), partial(argmax_positions, maps, layers),
                               sha.numpy().view(np.uint64))
                del maps  # the activations of this batch
                done += 1
                after_batch(done, len(image))
    finally:
        module.train(was_training)


def _loader(images: _SplitImages, batches: list[list[int]], workers: int | None, device: torch.device):
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    return torch.utils.data.DataLoader(images, batch_sampler=batches, num_workers=workers,
                                       pin_memory=device.type == "cuda")


def _progress_bar(batches: list[list[int]], done: int, desc: str, world: int, show: bool):
    from tqdm import tqdm

    return tqdm(total=sum(len(b) for b in batches), initial=sum(len(b) for b in batches[:done]), unit="img",
                desc=desc + (f" (rank 0 of {world})" if world > 1 else ""), disable=not show, dynamic_ncols=True)


def _index_folder(out: str | Path | None, name: str, data_root: str | Path, split: str) -> Path:
    out = Path(out) if out is not None else default_index_path(name, data_root, split)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: expected a folder for the index, got the file {out}")
    return out


def _check_arguments(k: int, batch_size: int, checkpoint_every: int) -> None:
    if k < 1:
        raise ValueError(f"k: expected a positive number of entries per unit, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive number, got {batch_size}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected a positive number of batches, got {checkpoint_every}")


def _aliases(model, layers: list[LayerInfo]) -> dict[str, list[str]]:
    """A graph net's other names of each indexed layer (``layer1.0`` is ``layer1.0.relu_1``)."""
    if getattr(model, "engine", None) != "graph":
        return {}
    from .scan_graph import aliases

    return aliases(model, [L.name for L in layers])


def _merge_and_write(dist: _Dist, out: Path, tracker: TopK, images_per_s: float, layers, meta, split: Split,
                     model_sha: str, listing_sha: str, batch_size: int, t0: float,
                     aliases: dict | None = None) -> None:
    """Gather the ranks' trackers, check they saw one model and one listing, and let rank 0 commit."""
    parts = dist.gather({"arrays": tracker.arrays(), "model_sha256": model_sha, "listing_sha256": listing_sha,
                         "images_per_s": images_per_s})
    for r, p in enumerate(parts):
        if p["model_sha256"] != model_sha or p["listing_sha256"] != listing_sha:
            raise RuntimeError(f"rank {r} sees other weights or another data listing than rank {dist.rank}")
    if dist.rank == 0:
        merged = TopK.merge(TopK.from_arrays(p["arrays"]) for p in parts) if dist.world > 1 else tracker
        build = {"batch_size": batch_size, "world_size": dist.world,
                 "images_per_s": round(sum(p["images_per_s"] for p in parts), 2),
                 "wall_s": round(time.perf_counter() - t0, 3)}
        write_index(out, merged, layers, meta, split, model_sha, listing_sha, build, aliases)


def build_index(net, data_root: str | Path, split: str = "val", out: str | Path | None = None, k: int = 9,
                batch_size: int = 64, workers: int | None = None, checkpoint_every: int = 20,
                progress: bool = True, on_batch: Callable[[int], None] | None = None) -> Path:
    """Scan one split of ``data_root`` and write its top-``k`` index; returns the index folder.

    ``net`` is a :class:`deconvlab.net.Net` (anything with ``module``, ``meta``
    and ``device``) or a model name/path. ``out`` defaults to
    :func:`.store.default_index_path`. A checkpoint is written every
    ``checkpoint_every`` batches; a build that finds a matching checkpoint
    (same weights, listing, k, batch size, world size) resumes after it.
    ``on_batch(batches_done)`` is called after every batch (and after its
    checkpoint), e.g. to report or to stop. Under torchrun the ranks shard
    the split, their top-k are merged exactly and rank 0 writes.
    """
    t0 = time.perf_counter()
    model, module, meta, device = _net_parts(net)
    _check_arguments(k, batch_size, checkpoint_every)
    listing = list_split(data_root, split)
    if len(listing) == 0:
        raise ValueError(f"{Path(data_root) / split} holds no images")
    name = getattr(meta, "name", "") or "model"
    out = _index_folder(out, name, data_root, split)
    size = int(meta.input_size)
    layers = index_layers(model, size)
    units = sum(L.units for L in layers)
    model_sha, listing_sha = model_sha256(module), listing.listing_hash()
    dist = _Dist(device)
    try:
        rank, world = dist.rank, dist.world
        batches = shard_batches(len(listing), batch_size, rank, world)
        (out / "partial").mkdir(parents=True, exist_ok=True)
        checkpoint = _Checkpoint(out / "partial", {
            "model_sha256": model_sha, "listing_sha256": listing_sha, "split": split, "k": k,
            "batch_size": batch_size, "rank": rank, "world_size": world, "units": units,
            "layers": [L.name for L in layers], "input_size": size})
        tracker, done = checkpoint.resume(units, k)
        if done and progress and rank == 0:
            print(f"index: resuming {out} after {done} of {len(batches)} batches", flush=True)
        channels = getattr(net, "in_channels", 3) if not isinstance(net, (str, Path)) else len(meta.mean)
        loader = _loader(_SplitImages(listing, size, meta.mean, meta.std, channels), batches[done:], workers, device)
        bar = _progress_bar(batches, done, f"index {name} {split}", world, progress and rank == 0)
        scanned, t_scan = [0], time.perf_counter()

        def after_batch(batches_done: int, images: int) -> None:
            scanned[0] += images
            bar.update(images)
            if batches_done % checkpoint_every == 0 and batches_done < len(batches):
                checkpoint.save(tracker, batches_done)
            if on_batch is not None:
                on_batch(batches_done)

        try:
            _scan_shard(model, module, layers, loader, device, tracker, done, after_batch)
        finally:
            bar.close()
        images_per_s = scanned[0] / max(time.perf_counter() - t_scan, 1e-9)
        _merge_and_write(dist, out, tracker, images_per_s, layers, meta, listing, model_sha, listing_sha,
                         batch_size, t0, _aliases(model, layers))
        dist.barrier()
        checkpoint.remove()
        dist.barrier()
        if rank == 0:
            remove_old_files(out)
        return out
    finally:
        dist.close()
