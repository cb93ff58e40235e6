"""A trained network on disk: ``<stem>.msgpack`` (``flax.serialization`` of the parameters) beside
``<stem>.json`` (its config under ``config_key`` plus provenance), shared by the RL agents' shipped networks
(``rl/jssp/trained``, ``rl/malloc/trained``)."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

import jax


def save(directory, stem: str, params, config_key: str, config, info: dict) -> None:
    """Writes ``<stem>.msgpack`` and ``<stem>.json`` = {config_key: asdict(config), **info}."""
    from flax import serialization

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.msgpack").write_bytes(serialization.to_bytes(jax.device_get(params)))
    (directory / f"{stem}.json").write_text(json.dumps({config_key: dataclasses.asdict(config), **info},
                                                       indent=2, sort_keys=True, default=str) + "\n")


def load(directory, stem: str, config_key: str, build: Callable[[dict], tuple[Any, Any]], trained_by: str):
    """(model, params, info): ``build(config dict) -> (model, parameter template)``; a clear error naming
    ``trained_by`` (the script that writes such a directory) when the files are missing."""
    from flax import serialization

    directory = pathlib.Path(directory)
    weights, meta = directory / f"{stem}.msgpack", directory / f"{stem}.json"
    if not weights.is_file() or not meta.is_file():
        raise ValueError(f"network directory {str(directory)!r} lacks {weights.name} / {meta.name} "
                         f"(train one with {trained_by} --export_dir=...)")
    info = json.loads(meta.read_text())
    model, template = build(info[config_key])
    return model, serialization.from_bytes(template, weights.read_bytes()), info
