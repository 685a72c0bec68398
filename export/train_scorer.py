"""Train the synthetic world's Property Score CNN and write the shipped weights.

    python -m export.train_scorer [--steps 2400] [--out export/assets/synthetic_scorer.pt]

Every batch is freshly rendered from the world (no fixed data set, so no over-fitting to
it). Half of each batch is pushed along the parameter directions, so the scorer also
sees the large edits of the generation test (up to about 4 standard deviations). Ends by
printing held-out R^2 per score on fresh renders of the natural distribution.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from export.render import FaceRenderer
from export.scorer import SCORER_RESOLUTION, WEIGHTS, ScoreCNN
from export.world import LABEL_DIM, SCORED, Z_DIM, build_world

# Held-out targets of the foundation issue, checked by the tests on the shipped weights.
R2_TARGETS = {"eyes": 0.95, "mouth": 0.95, "pose": 0.95,
              "hair_color": 0.90, "hair_length": 0.90, "background_mean": 0.90}


class WorldSampler:
    """Seeded batches of (image, true scores) from the synthetic world."""

    def __init__(self, resolution: int = SCORER_RESOLUTION, world=None):
        self.mapping, self.readout = world or build_world()
        self.renderer = FaceRenderer(resolution)

    @torch.no_grad()
    def batch(self, generator: torch.Generator, size: int, spread: float = 0.0):
        z = torch.randn(size, Z_DIM + LABEL_DIM, generator=generator)
        w = self.mapping(z)
        if spread > 0:
            # Push half the batch along the parameter directions to cover edited faces.
            push = torch.randn(size, self.readout.directions.shape[1], generator=generator) * spread
            push[: size // 2] = 0
            w = w + push @ self.readout.directions.T
        params = self.readout(w)
        return self.renderer(params), params[:, : len(SCORED)]


@torch.no_grad()
def heldout_r2(model: ScoreCNN, sampler: WorldSampler, n: int = 2000, seed: int = 1) -> dict[str, float]:
    """R^2 of the model's scores against the true parameters on n fresh natural renders."""
    generator = torch.Generator().manual_seed(seed)
    preds, truth = [], []
    for start in range(0, n, 250):
        images, target = sampler.batch(generator, min(250, n - start))
        preds.append(model(images))
        truth.append(target)
    pred, true = torch.cat(preds).numpy(), torch.cat(truth).numpy()
    r2 = 1 - ((pred - true) ** 2).mean(0) / true.var(0)
    return {name: float(v) for name, v in zip(SCORED, r2)}


def train(steps: int, batch_size: int, lr: float, seed: int, log_every: int = 100) -> ScoreCNN:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    sampler = WorldSampler()
    model = ScoreCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    started, running = time.time(), 0.0
    for step in range(1, steps + 1):
        images, target = sampler.batch(generator, batch_size, spread=1.0)
        loss = torch.nn.functional.mse_loss(model.train()(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        running += loss.item()
        if step % log_every == 0 or step == steps:
            elapsed = time.time() - started
            print(f"step {step}/{steps}  loss {running / log_every:.4f}  "
                  f"{elapsed:.0f}s elapsed, ~{elapsed / step * (steps - step):.0f}s left", flush=True)
            running = 0.0
    return model.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args(argv)
    if args.steps <= 0 or args.batch_size < 2:
        parser.error("--steps must be > 0 and --batch-size >= 2")
    torch.set_num_threads(args.threads)
    model = train(args.steps, args.batch_size, args.lr, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from compute.files import atomic_file

    with atomic_file(args.out, "wb") as f:  # a fresh temp file renamed over --out, never a fixed .tmp name
        torch.save(model.state_dict(), f)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    r2 = heldout_r2(model, WorldSampler())
    print("held-out R^2 on 2,000 fresh renders:")
    for name, value in r2.items():
        flag = "ok" if value >= R2_TARGETS[name] else f"BELOW target {R2_TARGETS[name]}"
        print(f"  {name:16s} {value:.4f}  {flag}")


if __name__ == "__main__":
    main()
