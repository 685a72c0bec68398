"""This machine's GPUs, read the way Ray reads them, and the sampling defaults on a GPU.

The jobs plan a local Ray instance before it starts; reading the GPUs with Ray's own
accelerator manager (NVML through Ray's vendored pynvml, capped by CUDA_VISIBLE_DEVICES)
makes that plan agree with the instance Ray then starts. Planning with 0 GPUs made every
GPU job warn that "actors wait until GPU nodes join", and refused one actor per GPU because
it planned one actor per CPU instead.
"""
from __future__ import annotations

import os

# Two actors per GPU: on an H200 (`python -m jobs.benchmark gpu`, docs/gpu.md) the pipeline
# then ran as fast as one process alone (1,258 vs 1,182-1,209 images/s after start-up) with the
# GPU busy nearly all the time; one actor per GPU was not measured against it. Four actors
# of 0.25 ran 296 images/s before the engine existed.
DEFAULT_GPU_SHARE = 0.5


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
