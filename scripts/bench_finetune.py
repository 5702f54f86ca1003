"""Benchmark of featcache.finetune (not a test): training the top blocks from the cache vs running the frozen bottom
every epoch. Prints both wall times, the ratio and the test accuracies, and, last, one JSON line.

Both sides train the same top (the pretrained layers after ``--node``) and the same new linear head, with the same
optimiser (fused AdamW, lr 1e-4 for the top and 1e-3 for the head, weight decay 0.01), batch size, epochs, seed,
training precision (bf16 autocast where the CPU runs it fast), channels-last layout and 1x1 convolutions computed as
matrix products:

- cached: ``featcache.extract --layer NODE --pool none --dtype float16`` once (timed), then ``TopClassifier.fit``
  for ``--epochs`` epochs reading minibatches from the HDF5 cache;
- end to end (the usual partial fine-tune): every epoch decodes the training images and runs the frozen bottom up
  to NODE (under ``inference_mode``, at the cache's precision), then the same top + head step.

    python scripts/bench_finetune.py                         # data/digits, efficientnet_lite0, _blocks.14.add
    python scripts/bench_finetune.py --node _blocks.10.add --epochs 3 --train-blocks 1
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def bench(images: Path, node: str = "_blocks.14.add", model: str = "efficientnet_lite0", epochs: int = 5,
          train_blocks="all", batch_size: int = 32, seed: int = 0, image_size=None) -> dict:
    """Time ``epochs`` epochs of training the top after ``node`` from the cache and end to end; returns the figures."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    import featcache
    from featcache import decode, models, sources
    from featcache.cache import Rows
    from featcache.finetuning import split_for
    from featcache.learn.top import TopClassifier, top_blocks, unfreeze_last
    from featcache.learn.training import adamw
    from featcache.models.cuts import with_pointwise_as_linear
    from featcache.runtime import autocast

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cache = featcache.extract(images, model=model, layers=[node], pool="none", dtype="float16", cache_dir=tmp,
                                  image_size=image_size, progress=False)
        t_extract = time.perf_counter() - t
        fs = featcache.load(cache, lazy=True)
        train, test = np.flatnonzero(fs.split == "train"), np.flatnonzero(fs.split == "test")
        names = np.asarray(fs.classes, dtype=object)
        node = fs.layers[0]  # the cache's name for it: a block's last node is stored as the block (_blocks.14)
        top, backbone = split_for(fs.meta, cache, node)
        shape = fs.features[node].shape[1:]
        print(f"[finetune] {model}, top after {node} ({len(top_blocks(top))} blocks, "
              f"{sum(p.numel() for p in top.parameters()):,} parameters), train_blocks={train_blocks}; "
              f"{len(train)} train / {len(test)} test images, activations {'x'.join(map(str, shape))} float16; "
              f"extraction {t_extract:.1f} s, precision {fs.meta['config']['precision']}", flush=True)
        est = TopClassifier(top=top, train_blocks=train_blocks, epochs=epochs, batch_size=batch_size,
                            early_stopping=False, random_state=seed)
        t, c = time.perf_counter(), time.process_time()
        est.fit(Rows(cache, [node], train, maps=True), names[fs.y[train]])
        t_cached, c_cached = time.perf_counter() - t, time.process_time() - c
        acc_cached = float(np.mean(est.predict(Rows(cache, [node], test, maps=True)) == names[fs.y[test]]))
        fs.close()
    print(f"[finetune] cached: {epochs} epochs {t_cached:.1f} s wall, {c_cached:.1f} s CPU "
          f"({t_cached / epochs:.2f} s/epoch), test accuracy {acc_cached:.4f}; training precision {est.precision_}",
          flush=True)

    # End to end: the same top and head, the bottom run on freshly decoded images every epoch.
    record = fs.meta["config"]
    pre = record["preprocess"]
    torch.manual_seed(seed)
    bottom = models.FeatureExtractor(backbone, [node], "none").eval()
    # The top trains exactly as TopClassifier trains it: 1x1 convs as matrix products, channels-last, its
    # precision, fused AdamW. Only where its input comes from differs.
    net = with_pointwise_as_linear(copy.deepcopy(top)).eval().to(memory_format=torch.channels_last)
    trainable = unfreeze_last(net, train_blocks)
    with torch.no_grad():
        dim = net(torch.zeros((1,) + tuple(shape))).shape[1]
    head = nn.Sequential(nn.Dropout(0.0), nn.Linear(dim, len(fs.classes)))
    opt = adamw([{"params": list(head.parameters()), "lr": 1e-3}] + ([{"params": trainable, "lr": 1e-4}]
                                                                     if trainable else []), 1e-2)
    cpu = torch.device("cpu")
    source = sources.open_source(images)
    dtype = torch.bfloat16 if record["precision"] == "bf16" else None

    def loader(rows, shuffle):
        def collate(batch):
            arrays = [decode.decode_sample(source, i, pre["resize_size"], pre["crop_size"]) for i in batch]
            return torch.from_numpy(np.stack(arrays)), torch.from_numpy(source.labels[batch])
        # Decoding in this process, so its CPU time is counted (on 2 cores a worker overlaps little anyway).
        return torch.utils.data.DataLoader(list(rows), batch_size=batch_size, shuffle=shuffle, collate_fn=collate)

    def activations(images_):
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = bottom(images_)[node].float()
        return out.clone()  # made outside inference mode: a tensor autograd may save

    # The cache's rows are the source's rows (no file failed), so its split selects the same images.
    src_train = np.flatnonzero(np.asarray(source.splits) == "train")
    t, c = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        head.train()
        for images_, labels in loader(src_train, True):
            x = activations(images_).contiguous(memory_format=torch.channels_last)
            with autocast(cpu, est.precision_):
                logits = head(net(x))
            loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    t_e2e, c_e2e = time.perf_counter() - t, time.process_time() - c
    head.eval()
    correct = 0
    src_test = np.flatnonzero(np.asarray(source.splits) == "test")
    with torch.no_grad():
        for images_, labels in loader(src_test, False):
            correct += int((head(net(activations(images_))).argmax(1) == labels).sum())
    acc_e2e = correct / len(src_test)
    print(f"[finetune] end to end: {epochs} epochs {t_e2e:.1f} s wall, {c_e2e:.1f} s CPU "
          f"({t_e2e / epochs:.2f} s/epoch), test accuracy {acc_e2e:.4f}")
    ratio, ratio_cpu, ratio_all = t_e2e / t_cached, c_e2e / c_cached, t_e2e / (t_cached + t_extract)
    print(f"[finetune] end to end / cached: {ratio:.2f}x wall ({ratio_cpu:.2f}x CPU) training only, {ratio_all:.2f}x "
          f"wall counting the one extraction; the bottom + decoding cost {(t_e2e - t_cached) / epochs:.2f} s "
          f"more per epoch", flush=True)
    return {"model": model, "node": node, "train_blocks": train_blocks, "epochs": epochs, "images_train": len(train),
            "extract_s": round(t_extract, 2), "cached_s": round(t_cached, 2), "e2e_s": round(t_e2e, 2),
            "cached_cpu_s": round(c_cached, 2), "e2e_cpu_s": round(c_e2e, 2), "ratio": round(ratio, 2),
            "ratio_cpu": round(ratio_cpu, 2), "ratio_with_extract": round(ratio_all, 2),
            "test_acc_cached": round(acc_cached, 4), "test_acc_e2e": round(acc_e2e, 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=REPO / "data" / "digits",
                   help="labelled images with train/ and test/ splits (default: data/digits)")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--node", default="_blocks.14.add", help="where the top starts (default: _blocks.14.add)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-blocks", default="all", help="how many of the top's last blocks train (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, help="input size of the network (default: the model's own)")
    args = p.parse_args()
    if not args.images.is_dir():
        sys.exit(f"{args.images} is missing: python scripts/make_demo_data.py --out {args.images}")
    blocks = args.train_blocks if args.train_blocks == "all" else int(args.train_blocks)
    print(json.dumps(bench(args.images, args.node, args.model, args.epochs, blocks, args.batch_size,
                           image_size=args.image_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
