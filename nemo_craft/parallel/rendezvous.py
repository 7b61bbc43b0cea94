"""torch.distributed's ``env://`` rendezvous for a process that no launcher started.

``torchrun`` and SLURM set ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; a
command run directly (``nemo-craft train``) is one rank on this machine and picks a free port.
"""

from __future__ import annotations

import os
import socket

__all__ = ["free_port", "single_process_env"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env() -> None:
    """Set the rendezvous variables of a one-rank run, unless a launcher has set them."""
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
