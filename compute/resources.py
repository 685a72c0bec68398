"""The resources the ONNX Runtime actors get: the plan (how many actors, and the CPUs, GPUs
and threads of each), the engine an actor of that plan builds, and this machine's GPUs.

The jobs plan a local Ray instance before it starts; reading the GPUs with Ray's own
accelerator manager (NVML through Ray's vendored pynvml, capped by CUDA_VISIBLE_DEVICES)
makes that plan agree with the instance Ray then starts. Planning with 0 GPUs made every
GPU job warn that "actors wait until GPU nodes join", and refused one actor per GPU because
it planned one actor per CPU instead.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vectors.errors import InputError

if TYPE_CHECKING:
    from compute.bundle import Bundle
    from compute.engine import EngineSpec

log = logging.getLogger(__name__)

# Two actors per GPU: on an H200 (`python -m jobs.benchmark gpu`, docs/gpu.md) the pipeline
# then ran as fast as one process alone (1,258 vs 1,182-1,209 images/s after start-up) with the
# GPU busy nearly all the time; one actor per GPU was not measured against it. Four actors
# of 0.25 ran 296 images/s before the engine existed.
DEFAULT_GPU_SHARE = 0.5


class ResourceError(InputError):
    """A plan of actors that cannot run."""


def engine_spec(bundle: Bundle, resources: Resources) -> EngineSpec:
    """The engine an actor of these resources builds for this bundle."""
    from compute.engine import EngineSpec  # onnxruntime: not for the jobs that only plan

    return EngineSpec(z_dim=bundle.z_dim, w_dim=bundle.w_dim, num_ws=bundle.num_ws, resolution=bundle.resolution,
                      scores=len(bundle.score_names), use_gpu=resources.gpus_per_actor > 0,
                      threads=resources.threads, fp16=resources.fp16, gpu_share=min(1.0, resources.gpus_per_actor),
                      call_images=resources.call_images, cuda_graph=resources.cuda_graph)


@dataclass(frozen=True)
class Resources:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int
    fp16: bool = True                # GPU actors only: fp16 graphs with fp32 islands
    call_images: int | None = None   # images per inference call; None: the device's measured default
    cuda_graph: bool = False


def plan_resources(actors: int | None = None, cpus_per_actor: float | None = None,
                   gpus_per_actor: float | None = None, totals: dict | None = None, *, fp16: bool = True,
                   call_images: int | None = None, cuda_graph: bool = False) -> Resources:
    """Defaults that use the cluster without starving Ray Data's own tasks.

    Actors that take every CPU deadlock the pipeline (its read tasks never get one), so the
    actors together must leave one CPU free (half of a one-CPU cluster); a plan that does
    not is refused rather than left to wait forever. ONNX Runtime gets one intra-op thread
    per whole CPU of the actor, at least one. `gpus_per_actor` None means: the measured
    share (DEFAULT_GPU_SHARE) where the cluster has GPUs, else CPU actors; GPU
    actors number GPUs / share. `totals` ({"CPU": n, "GPU": m}) defaults to the connected
    cluster's resources; jobs pass a local instance's before starting it.
    """
    if totals is None:
        import ray

        totals = ray.cluster_resources()
    cpus, gpus = float(totals.get("CPU", 1)), float(totals.get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = DEFAULT_GPU_SHARE if gpus > 0 else 0.0
    if gpus_per_actor < 0 or (cpus_per_actor is not None and cpus_per_actor <= 0):
        raise ResourceError("CPUs per actor must be > 0 and GPUs per actor >= 0")
    if gpus_per_actor > 0 and gpus < gpus_per_actor:
        log.warning("asked for %s GPU per actor but the cluster has %s GPUs: actors wait until "
                    "GPU nodes join (the cluster autoscaler may add them)", gpus_per_actor, gpus)
    if actors is None:
        actors = max(1, int(gpus // gpus_per_actor + 1e-9)) if gpus_per_actor > 0 and gpus else max(1, int(cpus))
    if actors < 1:
        raise ResourceError(f"the actor count must be >= 1, got {actors}")
    if cpus_per_actor is None:
        cpus_per_actor = max(0.25, min(1.0, (cpus - 1) / actors)) if cpus > 1 else 0.5
    reserve = min(1.0, cpus / 2)
    if cpus - actors * cpus_per_actor < reserve - 1e-9:
        most = max(0.0, (cpus - reserve) / actors)
        raise ResourceError(f"{actors} actors x {cpus_per_actor:g} CPUs leave Ray Data less than {reserve:g} of the "
                            f"cluster's {cpus:g} CPUs for its own tasks, and the pipeline would wait forever; "
                            f"use fewer actors or at most {most:g} CPUs per actor")
    if call_images is not None and call_images < 1:
        raise ResourceError(f"images per call must be >= 1, got {call_images}")
    threads = max(1, int(cpus_per_actor))
    return Resources(actors, float(cpus_per_actor), float(gpus_per_actor), threads, fp16, call_images, cuda_graph)


def local_gpu_count() -> int:
    """GPUs a local Ray instance started by this process would get (Ray's own detection)."""
    try:
        from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager
    except ImportError:  # another Ray layout: no detection, as on a machine without GPUs
        return 0
    try:
        count = NvidiaGPUAcceleratorManager.get_current_node_num_accelerators()
        visible = NvidiaGPUAcceleratorManager.get_current_process_visible_accelerator_ids()
    except Exception:  # NVML present but broken: Ray itself would see none
        return 0
    return min(count, len(visible)) if visible is not None else count


def gpu_memory_bytes() -> int | None:
    """Total memory of the first GPU this process may use (Ray sets CUDA_VISIBLE_DEVICES in
    each GPU actor); None where NVML cannot tell."""
    try:
        import ray._private.thirdparty.pynvml as pynvml
    except ImportError:
        return None
    first = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
    try:
        pynvml.nvmlInit()
        try:
            handle = (pynvml.nvmlDeviceGetHandleByIndex(int(first)) if first.isdigit()
                      else pynvml.nvmlDeviceGetHandleByUUID(first.encode()))
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, or a device NVML does not know
        return None
