"""The image generation test's heavy part on Ray Data (method, "image generation test").

    ray.data.range(cases) -> map_batches(CaseActor) -> driver

For each case id the actor draws a fresh code (a pure function of the test seed and the
id, in a code domain of its own, so no case repeats a training sample), computes w, draws
and scores the base face, assigns its group, and expands it into the method's edits along
the group's directions (vectors.edits), applied to w (v7) or to the full z (v6). All
edits are synthesized and scored in batches inside the actor; only scores leave it, never
images. Several direction sets (the cells of a grid), each with its own space and group
medians, can be tested on the same cases in one pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compute.seeding import CASES, draw_codes
from compute.sessions import images_per_batch, make_session, num_ws, resolve, run_single, synthesize_and_score
from vectors.edits import apply_edits, case_directions, layer_codes
from vectors.errors import InputError
from vectors.groups import groups_of_matrix
from vectors.method import split_space


@dataclass(frozen=True)
class DirectionSet:
    """One set of directions to test: {group: (P, D)} in a space (w, z or w:A-B), grouped with
    these medians."""

    matrices: dict[str, np.ndarray]
    space: str
    medians: dict[str, float]


class CaseActor:
    """Callable class for `map_batches`: {"id": case ids} -> base and edit scores per case.

    Testable without Ray: `CaseActor(graphs={stem: bytes}, ...)({"id": ids})`.
    """

    def __init__(self, graphs: dict, seed: int, z_dim: int, direction_sets, group_by: list[str],
                 score_names: list[str], weights: np.ndarray, threads: int = 1, use_gpu: bool = False):
        self.sessions = {s: make_session(resolve(graphs[s]), threads, use_gpu) for s in graphs}
        self.seed, self.z_dim = seed, z_dim
        self.sets: list[DirectionSet] = resolve(direction_sets)
        self.group_by, self.score_names = list(group_by), list(score_names)
        self.weights = np.asarray(weights, dtype=np.float32)  # (E, P)

    def _score(self, latents: np.ndarray, latent: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (and true parameters) of edited latents (M, D) or per-layer codes (M, L, D);
        synthesis in memory-bounded sub-batches."""
        w = run_single(self.sessions["mapping"], latents) if latent == "z" else latents
        scores = synthesize_and_score(self.sessions["synthesis"], self.sessions["scorer"], w)
        truths = run_single(self.sessions["truth"], w) if "truth" in self.sessions else None
        return scores, truths

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch["id"], dtype=np.int64)
        z = draw_codes(self.seed, ids, self.z_dim, CASES)
        w = run_single(self.sessions["mapping"], z)
        base = synthesize_and_score(self.sessions["synthesis"], self.sessions["scorer"], w)
        groups, per_set = [], []
        for s in self.sets:
            g = groups_of_matrix(base, self.score_names, self.group_by, s.medians)     # (B,)
            latent, layers = split_space(s.space)
            edited = apply_edits(z if latent == "z" else w, case_directions(s.matrices, g), self.weights)
            if layers is not None:
                edited = layer_codes(w, edited, layers, num_ws(self.sessions["synthesis"]))  # (B, E, L, D)
            groups.append(g)
            per_set.append(self._score(edited.reshape(-1, *edited.shape[2:]), latent))
        shape = (len(ids), len(self.weights), -1)
        out = {"case_id": ids, "z": z, "w": w.astype(np.float32), "base_scores": base,
               "group": np.stack(groups, axis=1).astype(str),                          # (B, K)
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
    group: np.ndarray         # (N, K) str: each case's group under each set's medians
    base_scores: np.ndarray   # (N, P)
    edit_scores: np.ndarray   # (N, K, E, P)
    edit_truth: np.ndarray | None = field(default=None)  # (N, K, E, T) on the synthetic world


def run_cases(bundle, cases: int, seed: int, direction_sets: list[DirectionSet], group_by, weights: np.ndarray,
              resources, cases_per_batch: int | None = None, progress: bool = True, on_batch=None) -> CaseResults:
    """Run the generation test's synthesis and scoring for case ids 0..cases-1 on Ray.

    on_batch(cases_done) is called as results arrive (progress reporting)."""
    import ray

    if cases < 1:
        raise InputError(f"the test needs at least 1 case, got {cases}")
    if cases_per_batch is None:
        # About one ORT sub-batch of edits per actor call: big enough to amortise the call,
        # small enough that the last calls spread evenly over the actors.
        cases_per_batch = max(1, min(8, images_per_batch(bundle.resolution) // (len(direction_sets) * len(weights))))
    for s in direction_sets:
        latent, layers = split_space(s.space)
        dim = bundle.z_dim if latent == "z" else bundle.w_dim
        if layers is not None and not (bundle.num_ws and layers[1] < bundle.num_ws):
            raise InputError(f"space {s.space} needs a synthesis with per-layer codes and at least "
                             f"{layers[1] + 1} layers; this bundle's has {bundle.num_ws or 'one code per image'}")
        for g, m in s.matrices.items():
            if m.shape != (weights.shape[1], dim):
                raise InputError(f"directions of group {g} have shape {m.shape}, expected "
                                 f"({weights.shape[1]}, {dim}) for space {s.space} of this bundle")
    stems = ("mapping", "synthesis", "scorer") + (("truth",) if bundle.has_graph("truth") else ())
    graphs = {stem: ray.put(bundle.graph_bytes(stem)) for stem in stems}
    ds = ray.data.range(cases, override_num_blocks=max(1, -(-cases // cases_per_batch))).map_batches(
        CaseActor, batch_size=cases_per_batch, batch_format="numpy",
        fn_constructor_kwargs=dict(graphs=graphs, seed=seed, z_dim=bundle.z_dim,
                                   direction_sets=ray.put(direction_sets), group_by=list(group_by),
                                   score_names=bundle.score_names, weights=weights,
                                   threads=resources.threads, use_gpu=resources.gpus_per_actor > 0),
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
    return CaseResults(merged["case_id"], merged["z"], merged["w"], merged["group"].astype(str),
                       merged["base_scores"], merged["edit_scores"], merged.get("edit_truth"))
