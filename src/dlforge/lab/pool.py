"""Lab runs spread over worker processes: one (topic, budget, seed) job at a time per worker.

The lab's models are tiny and run on one thread each (:mod:`dlforge.lab.threads`), so two
cores serve two seeds at once. Each worker is a ``python -m dlforge.lab.worker`` process
fed JSON lines (:mod:`dlforge.lab.worker`); a job's finding comes back as JSON, never
pickled. Jobs run in the order they were submitted, each on the first free worker; the
finding does not depend on which worker ran it (every experiment seeds itself).

Example:
    >>> with LabPool(workers=2) as pool:  # doctest: +SKIP
    ...     futures = [pool.submit(3, "quick", seed) for seed in (0, 1, 2)]
    ...     findings = [f.result() for f in futures]
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import Future

from dlforge.lab.finding import Finding


class LabWorkerError(RuntimeError):
    """A lab job failed in its worker process (the worker's traceback is in the message)."""


class LabPool:
    """``workers`` worker processes with ``threads`` CPU threads each, at niceness ``nice``
    (``os.nice``; 19, the lowest priority, lets them use only the CPU time nothing else wants:
    the test suite computes the lab's seeds that way while its other tests run)."""

    def __init__(self, workers: int = 2, threads: int = 1, nice: int = 0) -> None:
        if workers < 1 or threads < 1 or not 0 <= nice <= 19:
            raise ValueError(f"workers and threads must be >= 1 and nice in 0..19, got {workers}, {threads} "
                             f"and {nice}")
        self.workers, self.threads, self.nice = workers, threads, nice
        self._jobs: queue.Queue = queue.Queue()
        self._feeders = [threading.Thread(target=self._feed, daemon=True, name=f"lab-worker-{i}")
                         for i in range(workers)]
        for t in self._feeders:
            t.start()

    def submit(self, topic: int, budget: str, seed: int) -> Future:
        """Queue one seed of ``topic``; the future's result is that seed's :class:`Finding`."""
        future: Future = Future()
        self._jobs.put(({"topic": topic, "budget": budget, "seed": seed}, future))
        return future

    def close(self, cancel_queued: bool = False) -> None:
        """Stop the workers once the queued jobs have finished (``cancel_queued``: once the
        running ones have, the queued ones cancelled)."""
        while cancel_queued:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].cancel()
        for _ in self._feeders:
            self._jobs.put(None)
        for t in self._feeders:
            t.join()

    def __enter__(self) -> LabPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> subprocess.Popen:
        # PASSIVE: an idle OpenMP thread sleeps instead of spinning. Measured under load, a 2-thread
        # seed spinning burned 121 s of CPU where it needed 3; it also steals the other worker's core.
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "OMP_NUM_THREADS": str(self.threads),
               "MKL_NUM_THREADS": str(self.threads)}
        return subprocess.Popen([sys.executable, "-m", "dlforge.lab.worker", "--threads", str(self.threads),
                                 "--nice", str(self.nice)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8",
                                env=env)

    def _feed(self) -> None:
        """One worker's loop: hand it a job, read its answer, settle the job's future."""
        process = None
        try:
            while (item := self._jobs.get()) is not None:
                job, future = item
                if not future.set_running_or_notify_cancel():
                    continue
                process = process if process is not None and process.poll() is None else self._start()
                try:
                    process.stdin.write(json.dumps(job) + "\n")
                    process.stdin.flush()
                    line = process.stdout.readline()
                except OSError as err:
                    line, process = "", None
                    future.set_exception(LabWorkerError(f"topic {job['topic']} seed {job['seed']}: {err}"))
                    continue
                if not line:  # the worker died (killed, out of memory): a fresh one takes the next job
                    future.set_exception(LabWorkerError(
                        f"topic {job['topic']} seed {job['seed']}: the worker process ended without an answer "
                        "(its error output is above; run the topic alone with `dlforge lab run TOPIC --workers 1`)"))
                    process = None
                    continue
                answer = json.loads(line)
                if "error" in answer:
                    future.set_exception(LabWorkerError(
                        f"topic {job['topic']} seed {job['seed']} ({job['budget']}) failed:\n{answer['error']}"))
                else:
                    future.set_result(Finding.from_dict(answer["finding"]))
        finally:
            if process is not None and process.poll() is None:
                process.stdin.close()  # the worker is idle here: end of input ends it
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:  # stuck at exit (seen under heavy load): it has no work left
                    process.kill()
                    process.wait()
