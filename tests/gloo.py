"""Joining a torch.distributed job of gloo ranks started by a test (each rank a process)."""

from datetime import timedelta


def join_gloo(rank: int, world: int, init_file: str, deadline_seconds: float) -> None:
    """Join the job whose ranks meet at ``init_file``; its collectives time out 10 s before
    the test's own deadline, so that a hung rank fails the test instead of stalling it."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=deadline_seconds - 10),
    )
