"""Connecting to Ray (the cluster a job was submitted to, or a private local instance) and
the resource flags of the jobs that run ONNX Runtime actors."""
from __future__ import annotations

import argparse
import logging
import os

from compute.resources import DEFAULT_GPU_SHARE, local_gpu_count


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, as set by `ray job submit`, "
                        "else a local instance on 127.0.0.1)")
    p.add_argument("--num-cpus", type=float, default=None,
                   help="CPUs of a local instance (default: all of this machine's)")
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs of a local instance (default: this machine's, as Ray detects them)")


def add_resource_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=None,
                   help="sample ids per actor call; the actor splits it into inference calls of its "
                        "own size (default: 4096, and at least 4 calls per actor)")
    p.add_argument("--actors", type=int, default=None,
                   help="ONNX Runtime actors (default: GPUs / --gpus-per-actor on a cluster with GPUs, "
                        "else one per CPU)")
    p.add_argument("--cpus-per-actor", type=float, default=None,
                   help="CPUs reserved per actor; also its ONNX Runtime threads (default: leave one CPU "
                        "of the cluster to Ray Data's own tasks)")
    p.add_argument("--gpus-per-actor", type=float, default=None,
                   help=f"GPUs per actor; > 0 runs sessions on CUDAExecutionProvider, 0 on the CPU "
                        f"(default: {DEFAULT_GPU_SHARE:g} where the cluster has GPUs, the measured best "
                        f"on an H200; else 0)")
    p.add_argument("--fp32", action="store_true",
                   help="GPU actors run the float32 graphs (default: float16 with float32 islands)")


def init_ray(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    quiet_routine_warnings()
    if address or os.environ.get("RAY_ADDRESS"):
        # Joining a cluster (e.g. under `ray job submit`): its addresses are its own.
        ray.init(address=address, log_to_driver=True)
        return
    stay_on_loopback()
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1", include_dashboard=False)


class _DropRoutine(logging.Filter):
    """Drops Ray log records that every job would print and no user can act on."""

    ROUTINE = ("Specifying both num_cpus and num_gpus for map tasks is experimental",  # GPU actors need both
               "Token authentication is enabled for this Ray cluster")  # Ray's default, said on every start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.ROUTINE)


def quiet_routine_warnings() -> None:
    for name in ("ray.data._internal.execution.operators.map_operator",
                 "ray._private.authentication.authentication_token_setup"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRoutine) for f in logger.filters):
            logger.addFilter(_DropRoutine())


def start(args):
    """Connect to Ray as the job's flags say and plan the actor resources. On a local
    instance the plan is checked before Ray starts (its CPUs are known in advance)."""
    from compute.resources import plan_resources
    from jobs.cli import UsageError

    if args.num_cpus is not None and not args.num_cpus > 0:
        raise UsageError(f"--num-cpus must be > 0, got {args.num_cpus:g}")
    if args.num_gpus is not None and not args.num_gpus >= 0:
        raise UsageError(f"--num-gpus must be >= 0, got {args.num_gpus:g}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    options = dict(fp16=not args.fp32)
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        # The local instance's resources are known before it starts: plan, and refuse, now.
        gpus = args.num_gpus if args.num_gpus is not None else local_gpu_count()
        plan_resources(args.actors, args.cpus_per_actor, args.gpus_per_actor,
                       totals={"CPU": args.num_cpus or os.cpu_count() or 1, "GPU": gpus}, **options)
    init_ray(args.address, args.num_cpus, args.num_gpus)
    return plan_resources(args.actors, args.cpus_per_actor, args.gpus_per_actor, **options)


def stay_on_loopback() -> None:
    """Make a local Ray instance use 127.0.0.1 for every address, with no usage reporting.

    On Linux Ray replaces a loopback node address by the machine's network address so that
    other nodes could join; a single-machine instance has no other nodes, so keep it on
    loopback. Child processes read the environment; this process reads the constant.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
