"""The models a server holds in memory, and the hot swap that changes them without failing a request.

The pool serves, for each model name, every version an alias points at plus the latest
version. :meth:`ModelPool.refresh` reads the registry, loads what is missing (in a thread,
each with its own :class:`DynamicBatcher` and :class:`DriftMonitor`), builds a complete
new routing table and installs it in one assignment: a request sees either the old table
or the new one, never a half-built one. Versions no longer wanted are retired afterwards:
the pool waits until no request holds them, then stops their batchers (which drains their
queues). A poll loop calls ``refresh`` whenever ``registry.revision()`` changes, so an
alias moved by another process (``dlforge registry alias``, another replica) takes
effect within ``poll_interval`` seconds.

A/B records go to the registry database, shared by every replica: a request only queues
its record in memory (:class:`~dlforge.registry.experiments.ExperimentWriter`); a task
that runs beside the poll loop writes the queue every ``FLUSH_INTERVAL_S`` (sooner when a
batch is full), and ``close`` writes what is left.

A version that fails to load (a damaged blob, an artifact from a newer dlforge) is marked
*unhealthy* with the reason and skipped: every other version keeps loading and swapping,
the server still starts, and a request routed to it answers 503 with the reason. The load
is retried only once the registry's revision has changed, not on every refresh.

Example:
    >>> pool = ModelPool(registry, settings, metrics)  # doctest: +SKIP
    >>> await pool.refresh(force=True)                  # doctest: +SKIP
    >>> model, variant, shadow = pool.resolve("iris", version=None, alias=None, sticky_id="u1")  # doctest: +SKIP
    >>> with model.lease():                             # doctest: +SKIP
    ...     out = await model.batcher.submit(x)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError

from dlforge.compress.quantize import quantize_dynamic_int8  # torch only: serve never loads train
from dlforge.errors import DlforgeError, NotFoundError, UnavailableError
from dlforge.registry.artifact import Artifact, load_artifact
from dlforge.registry.experiments import ExperimentWriter, SharedRecords
from dlforge.registry.store import ModelVersion, Registry
from dlforge.serve.batching import DynamicBatcher
from dlforge.serve.inputs import InputSpec
from dlforge.serve.monitor import DriftMonitor, Metrics
from dlforge.serve.routing import Experiment, TrafficConfig, choose_variant
from dlforge.serve.settings import ServeSettings

log = logging.getLogger("dlforge.serve")
RETIRE_TIMEOUT_S = 30.0  # a request holding a retired model longer than this is not waited for
FLUSH_INTERVAL_S = 0.25  # how often queued A/B records are written (what other replicas lag behind by)
SEGMENTATION_DRIFT = ("drift is not tracked for segmentation models: their images come in any size and the "
                      "artifact stores no training reference to compare them with")


@dataclass(eq=False)
class LoadedModel:
    """One version in memory: the artifact, its batcher, its drift monitor and its input rules."""

    name: str
    version: int
    sha256: str
    created: str
    artifact: Artifact
    batcher: DynamicBatcher
    drift: DriftMonitor
    inputs: InputSpec
    active: int = 0  # requests holding this model (it is not stopped while any does)

    @contextlib.contextmanager
    def lease(self) -> Iterator[LoadedModel]:
        """Hold the model for one request; take it right after ``resolve``, with no await between."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def acquire(self) -> None:
        """Hold the model (a hot swap does not stop it until every holder releases it)."""
        self.active += 1

    def release(self) -> None:
        self.active -= 1


@dataclass(frozen=True)
class _Table:
    """The routing table: replaced as a whole, never edited in place."""

    models: dict[str, dict[int, LoadedModel]] = field(default_factory=dict)  # name -> version -> model
    aliases: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> alias -> version
    latest: dict[str, int] = field(default_factory=dict)
    traffic: dict[str, TrafficConfig | None] = field(default_factory=dict)
    missing: tuple[str, ...] = ()  # served names with no loadable version (the pool is not ready)
    unhealthy: dict[str, dict[int, str]] = field(default_factory=dict)  # name -> version -> why it did not load


def _predict_fn(artifact: Artifact, drift: DriftMonitor):
    """What the batcher's worker thread runs on a batch: the model, then the drift window."""
    preprocessing = artifact.preprocessing

    def run(x: torch.Tensor) -> dict[str, Any]:
        with torch.inference_mode():
            outputs = artifact.predict(x)
        out = outputs.get("probabilities", outputs.get("values"))
        if isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
            return outputs  # refused by the route (422); kept out of the drift window
        try:  # monitoring must never fail a prediction
            drift.observe(x, preprocessing, outputs)
        except Exception:
            log.exception("drift monitor failed for %s", artifact.meta.get("arch"))
        return outputs

    return run


class ModelPool:
    """Loaded model versions, the routing table over them and one A/B :class:`Experiment` per name."""

    def __init__(self, registry: Registry, settings: ServeSettings, metrics: Metrics) -> None:
        self.registry, self.settings, self.metrics = registry, settings, metrics
        self.experiments: dict[str, Experiment] = {}
        self.writer = ExperimentWriter(registry.experiments)  # the A/B records' queue, written by poll's flusher
        self._table = _Table()
        self._revision: int | None = None
        self.on_change: Callable[[], None] | None = None  # called when the registry's revision moved
        self._refreshed = False
        self._lock = asyncio.Lock()
        self._rng = random.Random()
        self._loaded_series: set[tuple[str, str, str]] = set()
        # (name, version, sha256) -> (revision it failed at, reason): not retried until the revision moves
        self._failed: dict[tuple[str, int, str], tuple[int, str]] = {}

    # ------------------------------------------------------------------ refresh
    async def refresh(self, force: bool = False) -> None:
        """Bring the loaded set in line with the registry; a no-op when its revision did not change."""
        async with self._lock:
            revision = await asyncio.to_thread(self.registry.revision)
            if not force and revision == self._revision:
                return
            if revision != self._revision and self.on_change is not None:
                self.on_change()  # e.g. forget cached API-key roles: a key may have been revoked
            state = await asyncio.to_thread(self._read_registry)
            old = self._table
            loaded = {name: dict(versions) for name, versions in old.models.items()}
            missing, unhealthy, failed = [], {}, {}
            for name, (versions, aliases, _) in state.items():
                by_number = {mv.version: mv for mv in versions}
                wanted = sorted({*aliases.values(), versions[-1].version} & by_number.keys())
                current = loaded.get(name, {})
                fresh = {}
                for v in wanted:
                    mv = by_number[v]
                    if v in current and current[v].sha256 == mv.sha256:
                        fresh[v] = current[v]
                        continue
                    key = (name, v, mv.sha256)
                    failure = self._failed.get(key)
                    if failure is None or failure[0] != revision:  # retried only once the registry changed
                        try:
                            fresh[v] = await self._load(mv)
                            continue
                        except Exception as err:  # one bad version must not stop the others
                            failure = (revision, self._reason(err, mv))
                            log.error("cannot load %s v%d, marked unhealthy until the registry changes: %s",
                                      name, v, err)
                    failed[key] = failure
                    unhealthy.setdefault(name, {})[v] = failure[1]
                loaded[name] = fresh
                if not fresh:
                    missing.append(name)
            wanted_names = self.settings.models or list(state)
            missing += [n for n in wanted_names if n not in state]
            models = {name: loaded[name] for name in state}
            table = _Table(
                models=models,
                aliases={name: aliases for name, (_, aliases, _) in state.items()},
                latest={name: versions[-1].version for name, (versions, _, _) in state.items()},
                traffic={name: traffic for name, (_, _, traffic) in state.items()},
                missing=tuple(sorted(set(missing))),
                unhealthy=unhealthy,
            )
            self._table, self._failed = table, failed  # the hot swap: one assignment
            self._revision, self._refreshed = revision, True
            self._update_loaded_gauge(table)
            keep = {id(m) for versions in models.values() for m in versions.values()}
            retired = [m for versions in old.models.values() for m in versions.values() if id(m) not in keep]
            if retired:
                log.info("unloading %s", ", ".join(f"{m.name} v{m.version}" for m in retired))
            await asyncio.gather(*(self._retire(m) for m in retired))

    def _read_registry(self) -> dict[str, tuple[list[ModelVersion], dict[str, int], TrafficConfig | None]]:
        """name -> (versions ascending, aliases, traffic config) for every served model (runs in a thread)."""
        names = [m["name"] for m in self.registry.models()]
        if self.settings.models is not None:
            names = [n for n in names if n in self.settings.models]
        state = {}
        for name in names:
            try:
                versions = self.registry.versions(name)
                aliases = self.registry.aliases(name)
                raw = self.registry.traffic(name)
            except NotFoundError:  # deleted between models() and here
                continue
            if not versions:
                continue
            traffic = None
            if raw is not None:
                try:
                    traffic = TrafficConfig.model_validate(raw)
                except ValidationError as err:
                    log.error("ignoring the traffic config of %s: %s", name, err)
            state[name] = (versions, aliases, traffic)
        return state

    async def _load(self, mv: ModelVersion) -> LoadedModel:
        """Load one version and start its batcher; raises whatever loading the artifact raised."""
        started = time.perf_counter()
        artifact = await asyncio.to_thread(load_artifact, mv.path, runtime=self.settings.runtime)
        if self.settings.quantize == "int8" and self.settings.runtime == "torch":  # the stored artifact stays fp32
            artifact.model = await asyncio.to_thread(quantize_dynamic_int8, artifact.model)
        inputs = InputSpec.of(artifact)
        name, version = mv.name, mv.version
        drift = DriftMonitor(
            artifact.meta.get("training", {}).get("reference"),
            window=self.settings.drift_window,
            name=f"{name} v{version}",
            on_report=lambda report: self.metrics.set_drift(name, version, report),
            unsupported=SEGMENTATION_DRIFT if artifact.task == "segmentation" else None,
        )
        batcher = DynamicBatcher(
            _predict_fn(artifact, drift),
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue=self.settings.max_queue,
            observer=self.metrics.observer(name, version),
        )
        await batcher.start()
        log.info("loaded %s v%d in %.2f s", name, version, time.perf_counter() - started)
        return LoadedModel(name=name, version=version, sha256=mv.sha256, created=mv.created,
                           artifact=artifact, batcher=batcher, drift=drift, inputs=inputs)

    def _reason(self, err: Exception, mv: ModelVersion) -> str:
        """Why ``mv`` did not load, fit for a client: storage paths are replaced by file names."""
        if not Path(mv.path).exists():  # not a damaged artifact: this server looks in another store
            return ("its artifact is not in this server's artifact store: serve with the --artifacts folder (or "
                    "$DLFORGE_ARTIFACTS) it was registered into")
        text = err.message if isinstance(err, DlforgeError) else "its model.json or weights are malformed"
        for path, shown in ((mv.path, "the artifact"), (self.registry.artifacts, "the artifacts folder")):
            text = text.replace(f"{path}/", "").replace(str(path), shown)
        return f"its stored artifact does not load: {text}"

    async def _retire(self, model: LoadedModel) -> None:
        """Stop a model once no request holds it; its batcher drains what is queued."""
        deadline = time.monotonic() + RETIRE_TIMEOUT_S
        while model.active > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await model.batcher.stop()
        self.metrics.forget(model.name, model.version)

    async def poll(self) -> None:
        """Refresh whenever the registry's revision changes, and write the queued A/B records
        (run as a task by the app's lifespan)."""
        flusher = asyncio.create_task(self._flush_loop(), name="dlforge-experiment-flush")
        last_error = None
        try:
            while True:
                await asyncio.sleep(self.settings.poll_interval)
                try:
                    await self.refresh()
                    last_error = None
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # a registry hiccup must not end polling; the next round retries
                    if str(err) != last_error:  # once per distinct failure, not every poll_interval
                        log.exception("registry poll failed (logged again only when the error changes)")
                    last_error = str(err)
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher

    async def _flush_loop(self) -> None:
        """Write the queued A/B records every ``FLUSH_INTERVAL_S``, or at once when a batch is full.
        The writer never raises: a failed write is logged and its rows wait for the next round."""
        wake, loop = asyncio.Event(), asyncio.get_running_loop()
        self.writer.on_full = lambda: loop.call_soon_threadsafe(wake.set)
        try:
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), FLUSH_INTERVAL_S)
                wake.clear()
                if len(self.writer):
                    await asyncio.to_thread(self.writer.flush)
        finally:
            self.writer.on_full = None

    async def close(self) -> None:
        """Stop every batcher (draining queued requests), then write the A/B records still queued."""
        async with self._lock:
            table, self._table = self._table, _Table()
            await asyncio.gather(*(m.batcher.stop() for vs in table.models.values() for m in vs.values()))
            self._update_loaded_gauge(self._table)
        await asyncio.to_thread(self.writer.flush)

    # ------------------------------------------------------------------ lookup
    def resolve(
        self, name: str, *, version: int | None, alias: str | None, sticky_id: str | None
    ) -> tuple[LoadedModel, str, LoadedModel | None]:
        """(model that answers, variant label, shadow model or None) for one request.

        An explicit version (label ``"version:N"``) or alias (label: the alias) wins; else
        the model's traffic config picks an alias (sticky per ``sticky_id``); else the
        ``production`` alias; else the latest version (label ``"latest"``). A choice that
        lands on an unhealthy version raises UnavailableError (503) with the reason.
        """
        table = self._table
        versions, unhealthy = table.models.get(name), table.unhealthy.get(name, {})
        if not versions and not unhealthy:
            raise NotFoundError(f"model {name!r} is not served here",
                                hint="GET /v1/models lists the served models")
        versions = versions or {}

        def served(v: int, label: str) -> LoadedModel:
            if v in unhealthy:
                raise UnavailableError(f"version {v} of {name!r} ({label}) cannot be served: {unhealthy[v]}",
                                       hint="point the alias at a version that loads, or register the model "
                                            f"again; GET /v1/models/{name} lists its versions")
            return versions[v]

        aliases = table.aliases.get(name, {})
        if version is not None:
            if version not in versions and version not in unhealthy:
                raise NotFoundError(
                    f"version {version} of {name!r} is not loaded (loaded: {sorted(versions)})",
                    hint="the server loads the latest version and every aliased one: point an alias at it")
            return served(version, f"version:{version}"), f"version:{version}", None
        if alias is not None:
            if alias not in aliases or aliases[alias] not in {*versions, *unhealthy}:
                raise NotFoundError(f"model {name!r} has no alias {alias!r} (aliases: {sorted(aliases)})",
                                    hint="set it with PUT /v1/models/{name}/aliases/{alias}")
            return served(aliases[alias], alias), alias, None
        config = table.traffic.get(name)
        if config is not None:
            chosen = choose_variant(config, name, sticky_id, self._rng)
            if chosen in aliases and aliases[chosen] in {*versions, *unhealthy}:
                model, shadow = served(aliases[chosen], chosen), None
                if config.shadow and aliases.get(config.shadow) in versions and aliases[config.shadow] != aliases[chosen]:
                    shadow = versions[aliases[config.shadow]]
                return model, chosen, shadow
            log.warning("traffic config of %s names alias %r, which is not set; using the default", name, chosen)
        if "production" in aliases and aliases["production"] in {*versions, *unhealthy}:
            return served(aliases["production"], "production"), "production", None
        latest = table.latest.get(name)
        if latest not in {*versions, *unhealthy}:
            latest = max(versions or unhealthy)
        return served(latest, "latest"), "latest", None

    def loaded(self, name: str) -> dict[int, LoadedModel]:
        """version -> loaded model for ``name`` (empty if none)."""
        return dict(self._table.models.get(name, {}))

    def unhealthy(self, name: str) -> dict[int, str]:
        """version -> why it did not load (no paths), for the versions of ``name`` that failed to load.

        Example:
            >>> pool.unhealthy("iris")  # doctest: +SKIP
            {3: 'its stored artifact does not load: model.safetensors is not a readable safetensors file: ...'}
        """
        return dict(self._table.unhealthy.get(name, {}))

    def traffic(self, name: str) -> TrafficConfig | None:
        """The A/B traffic config in force for ``name`` (None: no split)."""
        return self._table.traffic.get(name)

    def experiment(self, name: str) -> Experiment:
        """The A/B experiment of ``name`` (created on first use): its records are in the registry
        database, shared with every replica; this process's are queued until the next flush."""
        if name not in self.experiments:
            self.experiments[name] = Experiment(records=SharedRecords(self.writer, name))
        return self.experiments[name]

    def ready(self) -> bool:
        """True once the first refresh is done and every served model has a loaded version."""
        return self._refreshed and not self._table.missing

    def snapshot(self) -> list[dict[str, Any]]:
        """Per served model: loaded versions (with their aliases and queue), aliases, traffic and
        unhealthy versions with their reasons (no paths)."""
        table = self._table
        out = []
        for name in sorted(table.models):
            aliases = table.aliases.get(name, {})
            traffic = table.traffic.get(name)
            out.append({
                "name": name,
                "latest": table.latest.get(name),
                "aliases": dict(sorted(aliases.items())),
                "traffic": None if traffic is None else traffic.model_dump(),
                "unhealthy": [{"version": v, "reason": r} for v, r in sorted(table.unhealthy.get(name, {}).items())],
                "versions": [
                    {"version": v, "aliases": sorted(a for a, av in aliases.items() if av == v),
                     "latest": v == table.latest.get(name), "task": m.artifact.task,
                     "queue": m.batcher.queue_size, "created": m.created}
                    for v, m in sorted(table.models[name].items())
                ],
            })
        return out

    # ------------------------------------------------------------------ gauges
    def _update_loaded_gauge(self, table: _Table) -> None:
        series = set()
        for name, versions in table.models.items():
            aliases = table.aliases.get(name, {})
            for v in versions:
                labels = [a for a, av in aliases.items() if av == v]
                if v == table.latest.get(name):
                    labels.append("latest")
                series |= {(name, str(v), a) for a in labels or [""]}
        for labels in self._loaded_series - series:
            with contextlib.suppress(KeyError):
                self.metrics.loaded.remove(*labels)
        for labels in series:
            self.metrics.loaded.labels(*labels).set(1)
        self._loaded_series = series
