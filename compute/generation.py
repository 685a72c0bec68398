"""The image generation test's heavy part on Ray Data (SPEC.md "Image generation test").

    ray.data.range(cases) -> map_batches(CaseActor) -> driver

For each case id the actor draws a fresh code (a pure function of the test seed and the
id, in a code domain of its own, so no case repeats a training sample), computes w, draws
and scores the base face, assigns its group, and expands it into the schedule's edits
(2 x 5 x 5 = 50 by default) along the group's eyes/mouth/pose directions, applied to w
(v7) or to z and its label (v6). All edits are synthesized and scored in batches inside
the actor; only scores leave it, never images. Several direction sets (the cells of a
grid) can be tested on the same cases in one pass.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from compute.seeding import CASES, draw_codes
from compute.sessions import images_per_batch, make_session, resolve, run_single, synthesize_and_score

EDITED = ("eyes", "mouth", "pose")
GROUPING = ("hair_color", "hair_length", "background_mean")


@dataclass(frozen=True)
class Schedule:
    """Edit weights per property; the test uses every combination (eyes outermost)."""

    eyes: tuple[float, ...] = (-1.2, 1.2)
    mouth: tuple[float, ...] = (-1.8, -0.9, 0.0, 0.9, 1.8)
    pose: tuple[float, ...] = (-1.8, -1.2, -0.6, 0.0, 0.6)

    def __post_init__(self):
        for name in EDITED:
            values = getattr(self, name)
            if len(set(values)) < 2 or not all(np.isfinite(values)):
                raise ValueError(f"the {name} schedule needs at least 2 distinct finite values, got {list(values)}")

    def weights(self) -> np.ndarray:
        """(E, 3) float32: one row (eyes, mouth, pose) per edit."""
        return np.array(list(itertools.product(self.eyes, self.mouth, self.pose)), dtype=np.float32)

    def as_dict(self) -> dict:
        return {name: list(getattr(self, name)) for name in EDITED}


def direction_matrices(directions: dict[tuple[str, str], np.ndarray]) -> dict[str, np.ndarray]:
    """{group: (3, D) float32 rows eyes, mouth, pose} from {(group, property): vector}."""
    groups = sorted({g for g, _ in directions})
    missing = [f"{g}/{p}" for g in groups for p in EDITED if (g, p) not in directions]
    if missing:
        raise ValueError(f"vectors lack directions for {', '.join(missing[:6])}")
    return {g: np.stack([directions[(g, p)] for p in EDITED]).astype(np.float32) for g in groups}


class CaseActor:
    """Callable class for `map_batches`: {"id": case ids} -> base and edit scores per case.

    direction_sets: list of {group: (3, D) matrix}; a set keyed only by "all" (one global
    direction per property) applies to every group. Testable without Ray.
    """

    def __init__(self, graphs: dict, seed: int, z_dim: int, space: str, direction_sets,
                 medians: dict[str, float], score_names: list[str], weights: np.ndarray,
                 threads: int = 1, use_gpu: bool = False, with_truth: bool = False,
                 set_spaces: list[str] | None = None):
        stems = ("mapping", "synthesis", "scorer") + (("truth",) if with_truth else ())
        self.sessions = {s: make_session(resolve(graphs[s]), threads, use_gpu) for s in stems}
        self.seed, self.z_dim, self.space = seed, z_dim, space
        self.sets = resolve(direction_sets)
        self.set_spaces = list(set_spaces or [space] * len(self.sets))  # w or z per direction set
        self.medians = np.array([medians[g] for g in GROUPING], dtype=np.float64)
        self.grouping_cols = [score_names.index(g) for g in GROUPING]
        self.weights = np.asarray(weights, dtype=np.float32)  # (E, 3)

    def _score(self, latents: np.ndarray, space: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (and true parameters) of edited latents (M, D); synthesis in memory-bounded sub-batches."""
        w = run_single(self.sessions["mapping"], latents) if space == "z" else latents
        scores = synthesize_and_score(self.sessions["synthesis"], self.sessions["scorer"], w)
        truths = run_single(self.sessions["truth"], w) if "truth" in self.sessions else None
        return scores, truths

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch["id"], dtype=np.int64)
        z = draw_codes(self.seed, ids, self.z_dim, CASES)
        w = run_single(self.sessions["mapping"], z)
        base = synthesize_and_score(self.sessions["synthesis"], self.sessions["scorer"], w)
        high = base[:, self.grouping_cols] >= self.medians                  # (B, 3)
        groups = np.array(["".join("h" if h else "l" for h in row) for row in high])
        per_set = []
        for s, space in zip(self.sets, self.set_spaces):
            latent = z if space == "z" else w                                # (B, D)
            offsets = np.stack([self.weights @ (s[g] if g in s else s["all"]) for g in groups])  # (B, E, D)
            edited = (latent[:, None, :] + offsets).reshape(-1, latent.shape[1]).astype(np.float32)
            per_set.append(self._score(edited, space))
        shape = (len(ids), len(self.weights), -1)
        out = {"case_id": ids, "z": z, "w": w.astype(np.float32), "group": groups, "base_scores": base,
               "edit_scores": np.stack([sc.reshape(shape) for sc, _ in per_set], axis=1)}  # (B, K, E, P)
        if per_set[0][1] is not None:
            out["edit_truth"] = np.stack([t.reshape(shape) for _, t in per_set], axis=1)
        return out


@dataclass
class CaseResults:
    """Everything the actors returned, in case-id order. K = direction sets, E = edits."""

    case_id: np.ndarray       # (N,)
    z: np.ndarray             # (N, z_dim)
    w: np.ndarray             # (N, w_dim)
    group: np.ndarray         # (N,) '<U3'
    base_scores: np.ndarray   # (N, P)
    edit_scores: np.ndarray   # (N, K, E, P)
    edit_truth: np.ndarray | None = field(default=None)  # (N, K, E, T) on the synthetic world


def run_cases(bundle, cases: int, seed: int, space: str, direction_sets: list[dict[str, np.ndarray]],
              medians: dict[str, float], schedule: Schedule, resources, cases_per_batch: int | None = None,
              progress: bool = True, set_spaces: list[str] | None = None, on_batch=None) -> CaseResults:
    """Run the generation test's synthesis and scoring for case ids 0..cases-1 on Ray.

    set_spaces gives each direction set its own space (default: `space` for all);
    on_batch(cases_done) is called as results arrive (progress reporting)."""
    import ray

    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    set_spaces = list(set_spaces or [space] * len(direction_sets))
    if cases_per_batch is None:
        # About one ORT sub-batch of edits per actor call: big enough to amortise the call,
        # small enough that the last calls spread evenly over the actors.
        cases_per_batch = max(1, min(8, images_per_batch(bundle.resolution) // (len(direction_sets) * len(schedule.weights()))))
    for s, set_space in zip(direction_sets, set_spaces):
        dim = bundle.z_dim if set_space == "z" else bundle.w_dim
        for g, m in s.items():
            if m.shape != (3, dim):
                raise ValueError(f"directions of group {g} have shape {m.shape}, expected (3, {dim}) for space {set_space}")
    with_truth = bundle.has_graph("truth")
    graphs = {stem: ray.put(bundle.graph_bytes(stem))
              for stem in ("mapping", "synthesis", "scorer") + (("truth",) if with_truth else ())}
    ds = ray.data.range(cases, override_num_blocks=max(1, -(-cases // cases_per_batch))).map_batches(
        CaseActor, batch_size=cases_per_batch, batch_format="numpy",
        fn_constructor_kwargs=dict(graphs=graphs, seed=seed, z_dim=bundle.z_dim, space=space,
                                   direction_sets=ray.put(direction_sets), medians=medians,
                                   score_names=bundle.score_names, weights=schedule.weights(),
                                   threads=resources.threads, use_gpu=resources.gpus_per_actor > 0,
                                   with_truth=with_truth, set_spaces=set_spaces),
        compute=ray.data.ActorPoolStrategy(size=resources.actors),
        num_cpus=resources.cpus_per_actor, num_gpus=resources.gpus_per_actor or None,
    )
    ray.data.DataContext.get_current().enable_progress_bars = progress
    parts, done = [], 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if len(batch["case_id"]):
            parts.append(batch)
            done += len(batch["case_id"])
            if on_batch is not None:
                on_batch(done)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["case_id"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    return CaseResults(merged["case_id"], merged["z"], merged["w"], merged["group"].astype("<U3"),
                       merged["base_scores"], merged["edit_scores"], merged.get("edit_truth"))
