"""Connecting to Ray: the cluster a job was submitted to, or a private local instance."""
from __future__ import annotations

import argparse
import os


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, as set by `ray job submit`, "
                        "else a local instance on 127.0.0.1)")
    p.add_argument("--num-cpus", type=float, default=None,
                   help="CPUs of a local instance (default: all of this machine's)")


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
