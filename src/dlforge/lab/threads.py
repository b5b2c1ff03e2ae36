"""Run lab experiments on a fixed number of CPU threads (one by default).

The lab's models are tiny: a second intra-op thread mostly waits on the first, and on a
shared machine it is far slower (measured under load: a 20-layer width-32 MLP took 0.4 s
per 100 steps on one thread and 10 s on two; scikit-learn's logistic regression 0.37 s
against 9 s). One thread also makes the numbers independent of the machine's core count;
the stability test runs a second seed set on two threads to show the verdicts do not
depend on it either.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def limited_threads(threads: int = 1) -> Iterator[None]:
    """``threads`` BLAS threads and ``threads`` torch threads, restored afterwards.

    Example:
        >>> with limited_threads(2):
        ...     torch.get_num_threads()
        2
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def single_thread() -> Iterator[None]:
    """One BLAS thread and one torch thread, restored afterwards.

    Example:
        >>> with single_thread():
        ...     torch.get_num_threads()
        1
    """
    with limited_threads(1):
        yield
