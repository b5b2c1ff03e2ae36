"""``dlforge registry ...`` and ``dlforge keys ...``: the registry and API keys from the shell.

Two Typer apps that :mod:`dlforge.cli` mounts (``app.add_typer(registry_app, name="registry")``,
``app.add_typer(keys_app, name="keys")``). Every command reads ``--registry`` (or
``$DLFORGE_REGISTRY``) and ``--artifacts`` (or ``$DLFORGE_ARTIFACTS``); commands whose output
is data take ``--json``. Input errors print a message and a hint and exit with status 2.

Example:
    $ dlforge registry register runs/iris-20240101 --name iris
    $ dlforge registry alias iris production 1
    $ dlforge keys create --label ci
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from dlforge.cli._common import err_console, friendly, out_console
from dlforge.cli._common import say as _say
from dlforge.errors import RegistryError

registry_app = typer.Typer(add_completion=False, no_args_is_help=True,
                           help="The versioned model registry: register, list, show, alias, roll back, delete.")
keys_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="API keys for the model server (stored hashed; shown once).")
_EXAMPLE = """'{"owner": "ml"}'"""


def _registry_opt() -> Any:
    return typer.Option(None, "--registry", envvar="DLFORGE_REGISTRY", show_envvar=True,
                        help="database URL or SQLite file [default: sqlite:///registry/registry.db]")


def _artifacts_opt() -> Any:
    return typer.Option(None, "--artifacts", envvar="DLFORGE_ARTIFACTS", show_envvar=True,
                        help="folder of stored artifacts [default: registry/artifacts]")


def _json_opt() -> Any:
    return typer.Option(False, "--json", help="print JSON instead of a table")


@contextmanager
def _open(registry: str | None, artifacts: str | None) -> Iterator[Any]:
    """The registry, closed after use; its errors name its URL in the hint.

    The store's messages say "the registry" only (a server must not show clients its
    database URL); at the shell, which registry was used is the first thing to check.
    """
    from dlforge.registry.store import Registry

    with Registry(registry, artifacts) as reg:
        try:
            yield reg
        except RegistryError as err:
            where = f"registry: {reg.url}"
            raise type(err)(err.message, hint=f"{err.hint}; {where}" if err.hint else where) from None


def _metrics_text(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _short_time(iso: str) -> str:
    return iso[:16].replace("T", " ")  # 2024-01-01 12:00 (stored in UTC)


# ---------------------------------------------------------------- dlforge registry

@registry_app.command()
@friendly
def register(
    model_dir: Path = typer.Argument(..., help="an artifact folder (model/) or a run directory"),
    name: str = typer.Option(..., "--name", help="model name: letters, digits, '.', '_', '-'"),
    metadata: Optional[str] = typer.Option(None, "--metadata", help=f"extra metadata as a JSON object, e.g. {_EXAMPLE}"),
    registry: Optional[str] = _registry_opt(),
    artifacts: Optional[str] = _artifacts_opt(),
    as_json: bool = _json_opt(),
) -> None:
    """Add an artifact as the next version of NAME (no alias moves)."""
    extra = None
    if metadata is not None:
        try:
            extra = json.loads(metadata)
        except json.JSONDecodeError as err:
            raise RegistryError(f"--metadata is not valid JSON: {err}", hint=f"pass an object like {_EXAMPLE}") from None
    with _open(registry, artifacts) as reg:
        mv = reg.register(model_dir, name, metadata=extra)
        store = reg.artifacts
    if as_json:
        print(json.dumps(mv.to_dict()))
        return
    run = f" from run {mv.metadata['run']}" if mv.metadata.get("run") else ""
    _say(out_console, f"registered {mv.name} version {mv.version} (sha256 {mv.sha256[:12]}){run} in the artifact "
                      f"store {store}")
    _say(err_console, f"serve it by pointing an alias at it: dlforge registry alias {mv.name} production {mv.version}")


@registry_app.command("list")
@friendly
def list_models(
    registry: Optional[str] = _registry_opt(),
    artifacts: Optional[str] = _artifacts_opt(),
    as_json: bool = _json_opt(),
) -> None:
    """List the registered models with their latest version (and the run that wrote it) and aliases."""
    with _open(registry, artifacts) as reg:
        models, url = reg.models(), reg.url
    if as_json:
        print(json.dumps(models))
        return
    if not models:
        _say(err_console, f"no models in {url}; add one with: dlforge registry register MODEL_DIR --name NAME")
        return
    table = Table(title=f"models in {url}")
    table.add_column("name", overflow="fold")
    table.add_column("latest", justify="right")
    table.add_column("latest run", overflow="fold")
    table.add_column("versions", justify="right")
    table.add_column("aliases", overflow="fold")
    table.add_column("created (UTC)", no_wrap=True)
    for m in models:
        aliases = " ".join(f"{a}={v}" for a, v in m["aliases"].items())
        table.add_row(Text(m["name"]), str(m["latest_version"]), Text(str(m.get("latest_run") or "-")),
                      str(m["versions"]), Text(aliases), _short_time(m["created"]))
    out_console.print(table)


@registry_app.command()
@friendly
def show(
    name: str = typer.Argument(..., help="model name"),
    registry: Optional[str] = _registry_opt(),
    artifacts: Optional[str] = _artifacts_opt(),
    as_json: bool = _json_opt(),
) -> None:
    """Show a model's versions with the run that wrote each, their metrics, its aliases and its traffic config."""
    with _open(registry, artifacts) as reg:
        versions, aliases, traffic = reg.versions(name), reg.aliases(name), reg.traffic(name)
    if as_json:
        print(json.dumps({"name": name, "aliases": aliases, "traffic": traffic,
                          "versions": [v.to_dict() for v in versions]}))
        return
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    table = Table(title=f"model {name}")
    table.add_column("version", justify="right")
    table.add_column("aliases", overflow="fold")
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("sha256", no_wrap=True)
    table.add_column("task", overflow="fold")
    table.add_column("run", overflow="fold")  # the run directory that wrote the artifact ("-": unknown)
    table.add_column("metrics", overflow="fold")  # wraps on a narrow terminal rather than hiding digits
    for v in versions:
        table.add_row(str(v.version), Text(", ".join(by_version.get(v.version, []))), _short_time(v.created),
                      v.sha256[:12], Text(str(v.metadata.get("task", ""))), Text(str(v.metadata.get("run") or "-")),
                      Text(_metrics_text(v.metrics)))
    out_console.print(table)
    if traffic is not None:
        _say(out_console, json.dumps(traffic), "traffic:")


@registry_app.command()
@friendly
def alias(
    name: str = typer.Argument(..., help="model name"),
    alias_name: str = typer.Argument(..., metavar="ALIAS", help="alias, e.g. production or staging"),
    version: int = typer.Argument(..., help="the version the alias should point at"),
    registry: Optional[str] = _registry_opt(),
    artifacts: Optional[str] = _artifacts_opt(),
) -> None:
    """Point ALIAS of model NAME at VERSION (undo with rollback)."""
    with _open(registry, artifacts) as reg:
        before = reg.set_alias(name, alias_name, version)
    moved = "new" if before is None else f"was {before}"
    _say(out_console, f"{name} {alias_name} -> version {version} ({moved})")


@registry_app.command()
@friendly
def rollback(
    name: str = typer.Argument(..., help="model name"),
    alias_name: str = typer.Argument(..., metavar="ALIAS", help="the alias to move back"),
    registry: Optional[str] = _registry_opt(),
    artifacts: Optional[str] = _artifacts_opt(),
) -> None:
    """Move ALIAS back to the version it pointed at before its last change."""
    with _open(registry, artifacts) as reg:
        before = reg.aliases(name).get(alias_name)
        restored = reg.rollback(name, alias_name)
    _say(out_console, f"{name} {alias_name} -> version {restored} (was {before})")


@registry_app.command()
@friendly
def delete(
    name: str = typer.Argument(..., help="model name"),
    version: int = typer.Argument(..., help="the version to delete"),
    registry: Optional[str] = _registry_opt(),
    artifacts: Optional[str] = _artifacts_opt(),
) -> None:
    """Delete one version (refused while an alias points at it); its number is never reused."""
    with _open(registry, artifacts) as reg:
        reg.delete(name, version)
    _say(out_console, f"deleted {name} version {version}")


# ---------------------------------------------------------------- dlforge keys

@keys_app.command()
@friendly
def create(
    admin: bool = typer.Option(False, "--admin", help="may also change the registry through the server"),
    label: str = typer.Option("", "--label", help="what the key is for, e.g. ci or frontend"),
    registry: Optional[str] = _registry_opt(),
    artifacts: Optional[str] = _artifacts_opt(),
    as_json: bool = _json_opt(),
) -> None:
    """Create an API key and print it (once: only its hash is stored)."""
    with _open(registry, artifacts) as reg:
        key = reg.create_key(admin=admin, label=label)
    if as_json:
        print(json.dumps({"key": key, "admin": admin, "label": label}))
    else:
        print(key)  # plain stdout, so KEY=$(dlforge keys create) works
    _say(err_console, "store this key now: only its hash is kept, so it cannot be shown again", "note:")


@keys_app.command("list")
@friendly
def list_keys(
    registry: Optional[str] = _registry_opt(),
    artifacts: Optional[str] = _artifacts_opt(),
    as_json: bool = _json_opt(),
) -> None:
    """List API keys (ids, labels, roles; never the keys)."""
    with _open(registry, artifacts) as reg:
        keys = reg.keys()
    if as_json:
        print(json.dumps(keys))
        return
    table = Table(title="API keys")
    table.add_column("id", justify="right")
    table.add_column("label", overflow="fold")
    table.add_column("role")
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("revoked")
    for k in keys:
        table.add_row(str(k["id"]), Text(k["label"]), "admin" if k["admin"] else "predict", _short_time(k["created"]),
                      "yes" if k["revoked"] else "")
    out_console.print(table)


@keys_app.command()
@friendly
def revoke(
    key_id: int = typer.Argument(..., metavar="ID", help="the key's id (see `dlforge keys list`)"),
    registry: Optional[str] = _registry_opt(),
    artifacts: Optional[str] = _artifacts_opt(),
) -> None:
    """Revoke an API key; requests using it are refused from then on."""
    with _open(registry, artifacts) as reg:
        reg.revoke_key(key_id)
    _say(out_console, f"revoked key {key_id}")
