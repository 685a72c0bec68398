"""Connecting to Ray (the cluster a job was submitted to, or a private local instance) and
the resource flags of the jobs that run ONNX Runtime actors."""
from __future__ import annotations

import argparse
import os


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, as set by `ray job submit`, "
                        "else a local instance on 127.0.0.1)")
    p.add_argument("--num-cpus", type=float, default=None,
                   help="CPUs of a local instance (default: all of this machine's)")


def add_resource_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=None,
                   help="sample ids per actor call (default: up to 2048 at 64 px, 128 at 256 px, "
                        "and at least 4 calls per actor)")
    p.add_argument("--actors", type=int, default=None,
                   help="ONNX Runtime actors (default: one per GPU when --gpus-per-actor > 0, else one per CPU)")
    p.add_argument("--cpus-per-actor", type=float, default=None,
                   help="CPUs reserved per actor; also its ONNX Runtime threads (default: leave one CPU "
                        "of the cluster to Ray Data's own tasks)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0,
                   help="GPUs per actor; > 0 runs sessions on CUDAExecutionProvider")


def init_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        # Joining a cluster (e.g. under `ray job submit`): its addresses are its own.
        ray.init(address=address, log_to_driver=True)
        return
    stay_on_loopback()
    ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False)


def start(args):
    """Connect to Ray as the job's flags say and plan the actor resources. On a local
    instance the plan is checked before Ray starts (its CPUs are known in advance)."""
    from compute.sampling import plan_resources

    from jobs.cli import UsageError

    if args.num_cpus is not None and not args.num_cpus > 0:
        raise UsageError(f"--num-cpus must be > 0, got {args.num_cpus:g}")
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        plan_resources(args.actors, args.cpus_per_actor, args.gpus_per_actor,
                       totals={"CPU": args.num_cpus or os.cpu_count() or 1, "GPU": 0})
    init_ray(args.address, args.num_cpus)
    return plan_resources(args.actors, args.cpus_per_actor, args.gpus_per_actor)


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
