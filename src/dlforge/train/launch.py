"""``python -m dlforge.train.launch TORCHRUN_ARGS...``: torchrun, as ``dlforge train --nproc N``
starts it, with a plain exit status instead of torchrun's traceback and log lines (each rank
has already printed its own error). Not imported by :mod:`dlforge.train`, so it runs as a module.

Example:
    >>> from dlforge.train.distributed import torchrun_command
    >>> torchrun_command(["train", "c.yaml"], nproc=2)[1:3]
    ['-m', 'dlforge.train.launch']
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence


def launch(args: Sequence[str]) -> int:
    """torchrun with ``args``, returning the exit status of the first rank that failed (0 when
    all succeeded) instead of torchrun's traceback: each rank has already printed its own error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(list(args)))
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code = failure.exitcode
        if code < 0:  # killed by a signal: say so, the rank could not
            print(f"error: rank {rank} was stopped by signal {-code}", file=sys.stderr)
        return code if 0 < code < 256 else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(launch(sys.argv[1:]))
