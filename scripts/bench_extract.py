"""Benchmark featcache's extraction against its two reference points, in one run.

What: on the same images, model, batch size and precision, this measures

1. the model-only ceiling: featcache's own frozen module (``load_backbone`` + ``FeatureExtractor``,
   with its on-device normalisation, channels_last conversion and pooling) on uint8 batches that are
   already decoded in memory, under ``torch.inference_mode()`` and featcache's autocast, after warm-up;
   also at fp32, so the precision effect shows separately from the pipeline's;
2. featcache end to end (image files -> HDF5) through ``featcache.extract`` into a fresh cache
   directory: images/s = rows / total_s of the ``timings`` the cache records (the loop, excluding
   model load and tracing, which is reported as setup seconds), with its breakdown
   (data wait / compute / queue wait / write);
3. the plain loop a user writes by hand: torchvision ``ImageFolder`` + ``Resize``/``CenterCrop``/
   ``ToTensor``/``Normalize``, ``DataLoader`` with default settings (no workers), fp32, the same
   network with its classifier replaced by ``Identity``, features kept in a list, saved with np.save.

Why: featcache exists because running the frozen base is the expensive part; the pipeline around it
(decode, resize, transfer, write) should cost almost nothing. Absolute figures vary from run to
run and machine to machine, so only ratios measured in one run mean anything. Targets (issue 4):
featcache >= 0.85x the ceiling at the same precision, and >= 3x the plain fp32 loop.

The image set is generated (once, reused from ``--workdir``): real photographs (scikit-learn's
bundled sample images ``china.jpg`` and ``flower.jpg``) randomly cropped, scaled, flipped and
tone-jittered into ~320x240 JPEGs (quality 90) in 10 class folders, so decode cost is realistic.

Other modes:

* ``--memory``: featcache extraction over 1k and 10k small (160x120) images, each in its own
  subprocess, printing each one's peak RSS; peak memory should be flat in N (within 10%).
* ``--sweep-workers``: featcache end to end for every DataLoader worker count x torch intra-op
  thread count (``torch.set_num_threads`` set in this process before ``featcache.extract``, which
  runs in-process), to choose the default thread/worker rule.

The last line printed is always one JSON object with every figure.

    python scripts/bench_extract.py                         # defaults: efficientnet_lite0, 96 px, 1000 images
    python scripts/bench_extract.py --memory                # peak RSS at 1k vs 10k images
    python scripts/bench_extract.py --sweep-workers         # workers 0,1,2 x threads 1,2
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "featcache-bench"
N_CLASSES = 10
TARGET_VS_CEILING = 0.85
TARGET_VS_NAIVE = 3.0
MEMORY_TOLERANCE = 0.10
BUSY_LIMIT = 0.10  # a measurement during which other processes used more CPU than this is "busy"


def say(msg: str = "") -> None:
    print(msg, flush=True)


class Contention:
    """Share of the machine's CPU time used by *other* processes while a measurement ran.

    Busy time of all CPUs (``/proc/stat``) minus this process's and its reaped children's CPU time
    (``os.times``). Figures taken while something else keeps the cores busy are not comparable.
    """

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return float("nan")
        # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user]
        busy = sum(fields[0:3]) + sum(fields[5:8])
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def other_share(self) -> float:
        wall = time.perf_counter() - self.t0
        other = (self._busy() - self.busy0) - (self._own() - self.own0)
        return max(0.0, other / (wall * (os.cpu_count() or 1)))


def wait_quiet(max_wait: float, limit: float = 0.05) -> None:
    """On a shared machine, wait (up to ``max_wait`` s) for a second in which others use < ``limit`` CPU."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait:
        c = Contention()
        time.sleep(1.0)
        if c.other_share() < limit:
            return
    say(f"  (machine still busy after waiting {max_wait:.0f} s; measuring anyway)")


def busy_note(share: float) -> str:
    return f"other processes {100 * share:.0f}% CPU" + (" (BUSY MACHINE: not comparable)" if share > BUSY_LIMIT else "")


# --- the image set --------------------------------------------------------------------------------

def make_images(folder: Path, n: int, size: tuple, seed: int = 0, quality: int = 90) -> Path:
    """``n`` JPEGs of ``size`` (landscape; ~1 in 5 portrait) cut from real photos, in class folders.

    Reused when ``folder`` already holds a complete set (a ``.complete`` marker is written last).
    """
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    from PIL import Image, ImageEnhance
    from sklearn.datasets import load_sample_image

    if folder.exists():
        shutil.rmtree(folder)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for c in range(N_CLASSES):
        (tmp / f"class_{c:02d}").mkdir(parents=True)
    w_out, h_out = size
    for i in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        out = (w_out, h_out) if rng.random() < 0.8 else (h_out, w_out)
        aspect = out[0] / out[1]
        W, H = photo.size
        # a random window of 25-100% of the largest window of this aspect ratio
        max_w = min(W, H * aspect)
        scale = float(np.sqrt(rng.uniform(0.25, 1.0)))
        cw = max(8, int(max_w * scale))
        ch = max(8, int(cw / aspect))
        left = int(rng.integers(0, W - cw + 1))
        top = int(rng.integers(0, H - ch + 1))
        img = photo.crop((left, top, left + cw, top + ch)).resize(out, Image.BILINEAR, reducing_gap=3.0)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.7, 1.3)))
        img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.7, 1.3)))
        img.save(tmp / f"class_{i % N_CLASSES:02d}" / f"img_{i:06d}.jpg", quality=quality)
    (tmp / ".complete").write_text(f"{n} {size} seed={seed} q={quality}\n")
    os.replace(tmp, folder)
    say(f"generated {n} JPEGs ({w_out}x{h_out}, q{quality}) in {folder} in {time.perf_counter() - t0:.1f} s")
    return folder


def image_folder(workdir: Path, n: int, size: tuple, seed: int) -> Path:
    return make_images(workdir / f"images-{n}-{size[0]}x{size[1]}-s{seed}", n, size, seed)


# --- featcache pieces -----------------------------------------------------------------------------

def featcache_model(args, device):
    """featcache's own module: the backbone it loads and the FeatureExtractor it runs (its default layers)."""
    from featcache import models
    from featcache.config import ExtractConfig

    cfg = ExtractConfig(model=args.model, image_size=args.image_size, batch_size=args.batch_size,
                        precision=args.precision)
    backbone = models.load_backbone(cfg)
    layers = models.default_layers(backbone, models.graph_node_names(backbone.module))
    fx = models.FeatureExtractor(backbone, layers, "avg").to(device)
    return backbone, layers, fx


def decode_all(folder: Path, pre):
    """Every image of ``folder``, decoded by featcache's own decoder, as one uint8 NCHW tensor."""
    import torch

    from featcache import decode, sources

    src = sources.open_source(str(folder))
    arrs = [decode.decode_sample(src, i, pre.resize_size, pre.crop_size) for i in range(len(src))]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_ceiling(fx, images, batch_size: int, device, precision: str, repeats: int, warmup: int) -> dict:
    """Model only: uint8 batches already in memory (on the device), featcache's autocast, no writes."""
    import torch

    from featcache.runtime import autocast

    batches = [images[i:i + batch_size].to(device) for i in range(0, len(images), batch_size)]
    n = len(images)

    def one(b):
        with torch.inference_mode(), autocast(device, precision):
            out = fx(b)
            return {k: v.float() for k, v in out.items()}

    sync(device)
    t = time.perf_counter()
    one(batches[0])
    sync(device)
    cold_s = time.perf_counter() - t
    for i in range(warmup):
        one(batches[i % len(batches)])
    sync(device)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for b in batches:
            one(b)
        sync(device)
        rates.append(n / (time.perf_counter() - t))
    return {"img_s": statistics.median(rates), "runs_img_s": [round(r, 1) for r in rates],
            "cold_first_batch_s": round(cold_s, 3), "threads": torch.get_num_threads()}


def measure_ceiling_streams(fx, images, batch_size: int, device, precision: str, repeats: int,
                            streams: int = 2) -> dict:
    """Model only, ``streams`` Python threads each running whole batches with 1 intra-op thread.

    On small CPUs one intra-op thread per stream can beat one stream over all cores; if it does,
    that is the real ceiling for a pipeline that runs several batches at once.
    """
    import threading

    import torch

    from featcache.runtime import autocast

    batches = [images[i:i + batch_size].to(device) for i in range(0, len(images), batch_size)]
    before = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(part):
        for b in part:
            with torch.inference_mode(), autocast(device, precision):
                {k: v.float() for k, v in fx(b).items()}

    try:
        run(batches[:2])
        rates = []
        for _ in range(repeats):
            ts = [threading.Thread(target=run, args=(batches[i::streams],)) for i in range(streams)]
            t = time.perf_counter()
            for th in ts:
                th.start()
            for th in ts:
                th.join()
            rates.append(len(images) / (time.perf_counter() - t))
    finally:
        torch.set_num_threads(before)
    return {"img_s": statistics.median(rates), "runs_img_s": [round(r, 1) for r in rates]}


def read_timings(path) -> dict:
    import featcache

    fs = featcache.load(path)
    try:
        t = fs.meta.get("timings", {})
    finally:
        fs.close()
    if isinstance(t, bytes):
        t = t.decode()
    return json.loads(t) if isinstance(t, str) else dict(t)


def run_featcache(folder: Path, args, num_workers=None, threads=None) -> dict:
    """featcache end to end into a fresh cache dir; throughput from its own loop timings."""
    import torch

    import featcache

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=args.workdir))
    try:
        t = time.perf_counter()
        # The same layers as the ceiling's module (featcache's defaults, resolved the same way).
        path = featcache.extract(str(folder), model=args.model, image_size=args.image_size,
                                 layers=getattr(args, "layers", None) or (), batch_size=args.batch_size,
                                 precision=args.precision, device=args.device, cache_dir=str(cache_dir),
                                 progress=False, num_workers=num_workers)
        wall = time.perf_counter() - t
        threads_after = torch.get_num_threads()
        timings = read_timings(path)
        if args.keep_features:
            fs = featcache.load(path)
            feats = {"X": fs.X.copy(), "paths": list(fs.paths)}
            fs.close()
        else:
            feats = None
    finally:
        torch.set_num_threads(before)
        shutil.rmtree(cache_dir, ignore_errors=True)
    rows, total = timings.get("rows", 0), timings.get("total_s", float("nan"))
    return {"img_s": rows / total if total else float("nan"), "wall_s": wall, "setup_s": wall - total,
            "wall_img_s": rows / wall, "timings": timings, "threads_set": threads or before,
            "threads_after": threads_after, "features": feats}


def run_naive(folder: Path, args, device, out_dir: Path) -> dict:
    """What a user writes by hand: ImageFolder + torchvision transforms, default DataLoader, fp32."""
    import torch
    from torch import nn
    from torchvision import datasets, transforms

    from featcache import models
    from featcache.config import ExtractConfig

    backbone = models.load_backbone(ExtractConfig(model=args.model, image_size=args.image_size))
    model = backbone.module
    head = models.load.classifier_name(model)  # the final nn.Linear (``_fc`` in EfficientNet-Lite0)
    parent = model.get_submodule(head.rpartition(".")[0]) if "." in head else model
    setattr(parent, head.rpartition(".")[2], nn.Identity())
    model = model.eval().to(device)
    pre = backbone.preprocess
    tf = transforms.Compose([
        transforms.Resize(pre.resize_size),
        transforms.CenterCrop(pre.crop_size),
        transforms.ToTensor(),
        transforms.Normalize(pre.mean, pre.std),
    ])
    dataset = datasets.ImageFolder(str(folder), transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size)
    feats = []
    t = time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            feats.append(model(x.to(device)).cpu().numpy())
    X = np.concatenate(feats)
    np.save(out_dir / "naive_features.npy", X)
    total = time.perf_counter() - t
    return {"img_s": len(dataset) / total, "total_s": total, "X": X,
            "paths": [Path(p).relative_to(folder).as_posix() for p, _ in dataset.samples],
            "threads": torch.get_num_threads()}


def cosine_agreement(a: np.ndarray, b: np.ndarray) -> tuple:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(cos.min()), float(cos.mean())


def fmt_timings(t: dict) -> str:
    total = t.get("total_s") or float("nan")
    parts = []
    for k in ("data_wait_s", "compute_s", "queue_wait_s", "write_s"):
        if k in t:
            parts.append(f"{k[:-2]} {t[k]:.2f} s ({100 * t[k] / total:.0f}%)")
    if "streams" in t:
        parts.append(f"{t['streams']} stream(s), times per stream")
    return ", ".join(parts)


# --- modes ----------------------------------------------------------------------------------------

def main_bench(args) -> dict:
    import torch

    from featcache.extraction.loader import default_num_workers
    from featcache.runtime import resolve_device, resolve_precision

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    folder = image_folder(args.workdir, args.n_images, (args.width, args.height), args.seed)
    nw_default = default_num_workers(device)
    num_workers = args.num_workers
    say(f"featcache benchmark: {args.model}, {args.image_size} px, batch {args.batch_size}, precision "
        f"{args.precision} -> {precision}, device {device}, {args.n_images} images, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"featcache default workers {nw_default}")

    backbone, args.layers, fx = featcache_model(args, device)
    t = time.perf_counter()
    images = decode_all(folder, backbone.preprocess)
    say(f"decoded {len(images)} images in memory for the ceiling ({time.perf_counter() - t:.1f} s, "
        f"single process: {len(images) / (time.perf_counter() - t):.0f} img/s decode)")
    # Rounds alternate ceiling and featcache so slow drift (thermal, other load) hits both alike.
    # Every pass is kept with the CPU share other processes took meanwhile; medians use the clean ones.
    ceil_runs, ceil32_runs, ceil2_runs, fc_runs, cold = [], [], [], [], None
    for r in range(args.rounds):
        wait_quiet(args.quiet_wait)
        busy = Contention()
        c = measure_ceiling(fx, images, args.batch_size, device, precision, args.repeats,
                            args.warmup if r == 0 else 1)
        share = busy.other_share()
        cold = c["cold_first_batch_s"] if cold is None else cold
        ceil_runs += [(v, share) for v in c["runs_img_s"]]
        say(f"  round {r + 1}: ceiling {precision} {c['runs_img_s']} img/s ({busy_note(share)})")
        if precision != "fp32":
            wait_quiet(args.quiet_wait)
            busy = Contention()
            c32 = measure_ceiling(fx, images, args.batch_size, device, "fp32", args.repeats,
                                  args.warmup if r == 0 else 1)
            share = busy.other_share()
            ceil32_runs += [(v, share) for v in c32["runs_img_s"]]
            say(f"  round {r + 1}: ceiling fp32 {c32['runs_img_s']} img/s ({busy_note(share)})")
        if args.streams_ceiling and device.type == "cpu":
            wait_quiet(args.quiet_wait)
            busy = Contention()
            cs = measure_ceiling_streams(fx, images, args.batch_size, device, precision, args.repeats)
            share = busy.other_share()
            ceil2_runs += [(v, share) for v in cs["runs_img_s"]]
            say(f"  round {r + 1}: ceiling {precision} 2 streams x 1 thread {cs['runs_img_s']} img/s "
                f"({busy_note(share)})")
        wait_quiet(args.quiet_wait)
        busy = Contention()
        f = run_featcache(folder, args, num_workers)
        f["other_cpu_share"] = busy.other_share()
        fc_runs.append(f)
        say(f"  round {r + 1}: featcache {f['img_s']:.1f} img/s ({fmt_timings(f['timings'])}; "
            f"{busy_note(f['other_cpu_share'])})")
    del fx, images
    contaminated = []

    def clean(runs, what):
        ok = [v for v, sh in runs if sh <= BUSY_LIMIT]
        if not ok:
            contaminated.append(what)
        return ok or [v for v, _ in runs]

    ceil = {"img_s": statistics.median(clean(ceil_runs, "ceiling")), "runs_img_s": [v for v, _ in ceil_runs],
            "cold_first_batch_s": cold}
    ceil32 = ({"img_s": statistics.median(clean(ceil32_runs, "ceiling_fp32")),
               "runs_img_s": [v for v, _ in ceil32_runs]} if ceil32_runs else ceil)
    fc_ok = [f for f in fc_runs if f["other_cpu_share"] <= BUSY_LIMIT] or fc_runs
    if len(fc_ok) == len(fc_runs) and any(f["other_cpu_share"] > BUSY_LIMIT for f in fc_runs):
        contaminated.append("featcache")
    fc = sorted(fc_ok, key=lambda r: r["img_s"])[(len(fc_ok) - 1) // 2]  # median (lower for even)
    t = fc["timings"]
    say(f"ceiling   ({precision}, model only, in-memory uint8): {ceil['img_s']:7.1f} img/s  "
        f"(median of clean passes of {ceil['runs_img_s']}; cold first batch {cold} s)")
    say(f"ceiling   (fp32, model only, in-memory uint8):   {ceil32['img_s']:7.1f} img/s  "
        f"({precision} is {ceil['img_s'] / ceil32['img_s']:.2f}x fp32)")
    ceil2 = statistics.median(clean(ceil2_runs, "ceiling_2streams")) if ceil2_runs else None
    if ceil2:
        say(f"ceiling   ({precision}, 2 streams x 1 intra-op thread, in-memory uint8): {ceil2:7.1f} img/s  "
            f"({ceil2 / ceil['img_s']:.2f}x the single-stream ceiling)")
    # The target compares featcache with the best the model alone reaches, however its batches are run:
    # featcache runs two streams on a CPU, so the two-stream figure counts when it is higher.
    best_ceil = max(ceil["img_s"], ceil2 or 0.0)
    say(f"featcache ({precision}, files -> HDF5, {t.get('num_workers')} workers): {fc['img_s']:7.1f} img/s  "
        f"(median of {len(fc_ok)} clean of {[round(f['img_s'], 1) for f in fc_runs]}: loop "
        f"{t.get('total_s', float('nan')):.2f} s for {t.get('rows')} rows; call wall {fc['wall_s']:.2f} s "
        f"= {fc['wall_img_s']:.1f} img/s incl. setup {fc['setup_s']:.2f} s)")
    say(f"featcache time went to: {fmt_timings(t)}")

    naive = None
    if not args.skip_naive:
        out_dir = Path(tempfile.mkdtemp(prefix="naive-", dir=args.workdir))
        try:
            wait_quiet(args.quiet_wait)
            busy = Contention()
            naive = run_naive(folder, args, device, out_dir)
            naive["other_cpu_share"] = busy.other_share()
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        say(f"naive     (fp32, ImageFolder + transforms, DataLoader defaults, list + np.save): "
            f"{naive['img_s']:7.1f} img/s  ({naive['total_s']:.2f} s; {busy_note(naive['other_cpu_share'])})")
        if fc["features"] is not None:
            order = {p: i for i, p in enumerate(fc["features"]["paths"])}
            idx = [order[p] for p in naive["paths"]]
            cmin, cmean = cosine_agreement(fc["features"]["X"][idx], naive["X"])
            say(f"sanity: featcache vs naive features, cosine min {cmin:.4f} mean {cmean:.4f} "
                f"(same network; {precision} vs fp32, PIL-draft vs torchvision resize)")

    if naive and naive["other_cpu_share"] > BUSY_LIMIT:
        contaminated.append("naive")
    if contaminated:
        say(f"WARNING: no clean measurement (other processes > {100 * BUSY_LIMIT:.0f}% CPU) for "
            f"{', '.join(contaminated)}: those figures are not comparable; rerun on a quiet machine")
    vs_ceiling = fc["img_s"] / best_ceil
    vs_naive = fc["img_s"] / naive["img_s"] if naive else None
    say(f"{'PASS' if vs_ceiling >= TARGET_VS_CEILING else 'MISS'}: featcache / best ceiling ({precision}, "
        f"{best_ceil:.1f} img/s) = {vs_ceiling:.2f} (target >= {TARGET_VS_CEILING}); vs the single-stream ceiling "
        f"{fc['img_s'] / ceil['img_s']:.2f}")
    if naive:
        say(f"{'PASS' if vs_naive >= TARGET_VS_NAIVE else 'MISS'}: featcache / naive fp32 loop = "
            f"{vs_naive:.2f} (target >= {TARGET_VS_NAIVE})")
    return {
        "featcache_img_s": round(fc["img_s"], 1),
        "naive_img_s": round(naive["img_s"], 1) if naive else None,
        "ceiling_img_s": round(best_ceil, 1),
        "ceiling_1stream_img_s": round(ceil["img_s"], 1),
        "ceiling_fp32_img_s": round(ceil32["img_s"], 1),
        "ceiling_2streams_img_s": round(ceil2, 1) if ceil2 else None,
        "vs_ceiling_2streams": round(fc["img_s"] / ceil2, 3) if ceil2 else None,
        "vs_naive": round(vs_naive, 3) if naive else None,
        "vs_ceiling": round(vs_ceiling, 3),
        "pass_vs_ceiling": vs_ceiling >= TARGET_VS_CEILING,
        "pass_vs_naive": (vs_naive >= TARGET_VS_NAIVE) if naive else None,
        "model": args.model,
        "precision": precision,
        "device": str(device),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "n_images": args.n_images,
        "image_wh": [args.width, args.height],
        "num_workers": t.get("num_workers"),
        "featcache_setup_s": round(fc["setup_s"], 3),
        "featcache_wall_s": round(fc["wall_s"], 3),
        "featcache_timings": t,
        "ceiling_runs_img_s": ceil["runs_img_s"],
        "ceiling_fp32_runs_img_s": ceil32["runs_img_s"],
        "featcache_runs_img_s": [round(r["img_s"], 1) for r in fc_runs],
        "contaminated": contaminated,
        "other_cpu_share_max": round(max([r["other_cpu_share"] for r in fc_runs]
                                         + ([naive["other_cpu_share"]] if naive else [])), 3),
        "ceiling_cold_first_batch_s": ceil["cold_first_batch_s"],
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def sweep(args) -> dict:

    from featcache.runtime import resolve_device, resolve_precision

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    folder = image_folder(args.workdir, args.n_images, (args.width, args.height), args.seed)
    workers = [int(w) for w in args.workers.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    say(f"sweep: {args.model}, {args.image_size} px, batch {args.batch_size}, {precision}, {args.n_images} images; "
        f"workers {workers} x torch threads {threads} (set before featcache.extract)")
    rows = []
    for nw in workers:
        for th in threads:
            wait_quiet(args.quiet_wait)
            busy = Contention()
            r = run_featcache(folder, args, nw, th)
            other = busy.other_share()
            t = r["timings"]
            say(f"workers {nw} threads {th}: {r['img_s']:7.1f} img/s  ({fmt_timings(t)}; {busy_note(other)})"
                + (f"  [featcache left torch threads at {r['threads_after']}]" if r["threads_after"] != th else ""))
            rows.append({"num_workers": nw, "threads": th, "img_s": round(r["img_s"], 1),
                         "threads_after": r["threads_after"], "other_cpu_share": round(other, 3),
                         **{k: round(v, 3) if isinstance(v, float) else v for k, v in t.items()}})
    best = max(rows, key=lambda r: r["img_s"])
    say(f"best: workers {best['num_workers']} threads {best['threads']} -> {best['img_s']} img/s")
    return {"sweep": rows, "best": best, "model": args.model, "precision": precision, "device": str(device),
            "image_size": args.image_size, "batch_size": args.batch_size, "n_images": args.n_images,
            "cpus": os.cpu_count()}


def memory(args) -> dict:
    size = (args.memory_width, args.memory_height)
    results = []
    for n in args.memory_sizes:
        folder = image_folder(args.workdir, n, size, args.seed)
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", str(folder),
               "--workdir", str(args.workdir), "--model", args.model, "--image-size", str(args.image_size),
               "--batch-size", str(args.batch_size), "--precision", args.precision, "--device", args.device]
        if args.num_workers is not None:
            cmd += ["--num-workers", str(args.num_workers)]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"memory child for {n} images failed (exit {proc.returncode})")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["n_images"] = n
        results.append(r)
        say(f"{n:>6} images: peak RSS main {r['peak_rss_mb']:.0f} MB (before extract {r['rss_before_mb']:.0f} MB), "
            f"largest worker {r['peak_rss_children_mb']:.0f} MB; {r['img_s']:.0f} img/s, {r['num_workers']} workers")
    peaks = [r["peak_rss_mb"] for r in results]
    spread = (max(peaks) - min(peaks)) / min(peaks)
    ok = spread <= MEMORY_TOLERANCE
    say(f"{'PASS' if ok else 'MISS'}: peak RSS spread across {args.memory_sizes} images = {100 * spread:.1f}% "
        f"(target <= {100 * MEMORY_TOLERANCE:.0f}%)")
    return {"memory": results, "peak_rss_spread": round(spread, 4), "pass_memory": ok, "model": args.model,
            "image_size": args.image_size, "batch_size": args.batch_size, "image_wh": list(size)}


def memory_child(args) -> None:
    """One extraction in a fresh process; prints its peak RSS (self and largest reaped worker) as JSON."""
    for name in ("torch", "featcache"):  # imports count toward the baseline
        importlib.import_module(name)

    def rss_now_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    before = rss_now_mb()
    r = run_featcache(Path(args.memory_child), args, args.num_workers)
    print(json.dumps({
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "rss_before_mb": before,
        "img_s": r["img_s"],
        "num_workers": r["timings"].get("num_workers"),
        "timings": r["timings"],
    }))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=96, help="crop size fed to the model (px)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=None,
                   help="featcache DataLoader workers (default: featcache's rule)")
    p.add_argument("--n-images", type=int, default=1000)
    p.add_argument("--width", type=int, default=320, help="generated JPEG width (landscape)")
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="generated images are kept and reused here")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of (ceiling, featcache), alternated; medians are reported")
    p.add_argument("--repeats", type=int, default=2, help="timed passes of the ceiling per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up batches before the ceiling")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--no-streams-ceiling", dest="streams_ceiling", action="store_false",
                   help="skip the extra CPU ceiling with 2 streams x 1 intra-op thread")
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="before each measurement wait up to this many seconds for other processes to go "
                        "quiet (0: don't wait); each figure also reports the CPU share others used")
    p.add_argument("--memory", action="store_true", help="peak RSS of featcache at --memory-sizes images")
    p.add_argument("--memory-sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--memory-width", type=int, default=160)
    p.add_argument("--memory-height", type=int, default=120)
    p.add_argument("--sweep-workers", action="store_true", help="featcache at every --workers x --threads")
    p.add_argument("--workers", default="0,1,2", help="worker counts for --sweep-workers")
    p.add_argument("--threads", default="1,2", help="torch intra-op thread counts for --sweep-workers")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.keep_features = not (args.memory or args.memory_child or args.sweep_workers or args.skip_naive)
    args.workdir = args.workdir.expanduser()
    args.workdir.mkdir(parents=True, exist_ok=True)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.memory:
        result = memory(args)
    elif args.sweep_workers:
        result = sweep(args)
    else:
        result = main_bench(args)
    print(json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
