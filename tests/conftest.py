"""Test-wide settings: one torch thread per test process, chosen on purpose.

Two torch processes that each use every core stall each other many times over on small
machines; the suite runs in two worker processes (`make test`: pytest-xdist, one per core) with one
torch thread each (the accelerate test starts two more processes with one thread each).
"""

import os

os.environ.setdefault("DEBIAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
