"""Run lab experiments on one CPU thread.

The lab's models are tiny: a second intra-op thread mostly waits on the first, and on a
shared machine it is far slower (measured under load: a 20-layer width-32 MLP took 0.4 s
per 100 steps on one thread and 10 s on two; scikit-learn's logistic regression 0.37 s
against 9 s). One thread also makes the numbers independent of the machine's core count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def single_thread() -> Iterator[None]:
    """One BLAS thread and one torch thread, restored afterwards.

    Example:
        >>> with single_thread():
        ...     torch.get_num_threads()
        1
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)
