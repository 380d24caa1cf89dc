"""Training speed on this machine: our models against timm's, and multi-scale against fixed-size epochs.

    python benchmarks/train_throughput.py [--img-size 256] [--batch-size 32]
                                          [--json benchmarks/results/train_throughput.json]

1. Training img/s (forward, backward, AdamW step) of mobilevit_{xxs,xs,s} against timm's same model
   with the same optimizer, interleaved in rounds in one process; medians over rounds.
2. One epoch over the same images with the paper's multi-scale variable-batch sampler against a
   fixed-size schedule at --img-size (mobilevit_xxs): optimizer steps, wall time and img/s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

import common
import mobilevit
from mobilevit.data import MultiScaleBatchSampler


def train_step(model, optimizer, images, labels) -> None:
    loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def step_seconds(model, optimizer, images, labels, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, images, labels)
    return (time.perf_counter() - start) / steps


def compare_with_timm(names, batch_size, img_size, rounds, steps) -> list[dict]:
    rows = []
    for name in names:
        models = {"mobilevit": mobilevit.create_model(name), "timm": timm.create_model(name)}
        optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.01) for k, m in models.items()}
        images = torch.rand(batch_size, 3, img_size, img_size)
        labels = torch.randint(0, 1000, (batch_size,))
        for key, model in models.items():  # warm-up
            model.train()
            step_seconds(model, optimizers[key], images, labels, 1)
        times = {k: [] for k in models}
        for _ in range(rounds):
            for key, model in models.items():
                times[key].append(step_seconds(model, optimizers[key], images, labels, steps))
        ips = {k: batch_size / statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "model": name,
                "mobilevit img/s": ips["mobilevit"],
                "timm img/s": ips["timm"],
                "speed vs timm": ips["mobilevit"] / ips["timm"],
            }
        )
    return rows


def epoch_time(sampler: MultiScaleBatchSampler, name: str) -> dict:
    torch.manual_seed(0)
    model = mobilevit.create_model(name).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    steps, images = 0, 0
    start = time.perf_counter()
    for batch in sampler:
        height, width, _ = batch[0]
        train_step(model, optimizer, torch.rand(len(batch), 3, height, width), torch.randint(0, 1000, (len(batch),)))
        steps += 1
        images += len(batch)
    seconds = time.perf_counter() - start
    return {"steps": steps, "images": images, "seconds": seconds}


def compare_samplers(num_images, batch_size, img_size, name) -> list[dict]:
    scale = img_size / 256
    low, high = int(160 * scale), int(320 * scale)
    multi = MultiScaleBatchSampler(
        num_images,
        base_size=img_size,
        base_batch_size=batch_size,
        min_size=low,
        max_size=high,
        divisor=max(8, int(32 * scale)),
    )
    fixed = MultiScaleBatchSampler(
        num_images, base_size=img_size, base_batch_size=batch_size, min_size=img_size, max_size=img_size, num_scales=1
    )
    rows = []
    for label, sampler in ((f"multi-scale ({low}-{high})", multi), (f"fixed {img_size}x{img_size}", fixed)):
        result = epoch_time(sampler, name)
        rows.append(
            {
                "schedule": label,
                "optimizer steps": result["steps"],
                "epoch s": result["seconds"],
                "img/s": result["images"] / result["seconds"],
            }
        )
    return rows


def main() -> None:
    run = common.start_run()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--epoch-images", type=int, default=1024, help="images in the sampler comparison")
    parser.add_argument("--models", nargs="*", default=["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"])
    common.add_json_arg(parser)
    args = parser.parse_args()
    machine = common.measured_on()

    size = f"{args.img_size}x{args.img_size}"
    speed = compare_with_timm(args.models, args.batch_size, args.img_size, args.rounds, args.steps)
    epochs = compare_samplers(args.epoch_images, args.batch_size, args.img_size, "mobilevit_xxs")
    speed_caption = (
        f"Training img/s, batch {args.batch_size}, {size}, fp32, AdamW, medians of {args.rounds} interleaved rounds "
        f"of {args.steps} steps; speed is ours over timm's"
    )
    epoch_caption = f"One epoch of {args.epoch_images} images, mobilevit_xxs, base batch {args.batch_size}"
    speed_units = {"mobilevit img/s": "rate", "timm img/s": "rate", "speed vs timm": "ratio"}
    epoch_units = {"optimizer steps": "count", "epoch s": "rate", "img/s": "rate"}
    tables = [
        common.table("train_speed", speed, speed_units, speed_caption),
        common.table("epoch", epochs, epoch_units, epoch_caption),
    ]
    common.finish(run, args.json, tables, machine)


if __name__ == "__main__":
    main()
