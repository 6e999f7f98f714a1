"""Choose torch's thread count on purpose.

On small machines two torch processes that each use every core stall each other many times
over, so the thread count is always set explicitly: from ``--threads``, else from the
``DEBIAS_NUM_THREADS`` environment variable, else the number of cores this process may use
divided by the number of local processes (``accelerate launch`` sets ``LOCAL_WORLD_SIZE``).
"""

from __future__ import annotations

import os


def default_threads() -> int:
    env = os.environ.get("DEBIAS_NUM_THREADS")
    if env:
        return max(1, int(env))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1)
    return max(1, cores // max(1, processes))


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (and a single inter-op thread); returns the count used."""
    import torch

    n = threads if threads and threads > 0 else default_threads()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process; harmless
        pass
    return n
