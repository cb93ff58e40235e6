"""One source per setting: nested frozen config dataclasses and their flat, command-line view.

A setting is declared once, as a field of a frozen dataclass: its name, type and default in the field, its
help in the class docstring (a ``name: text`` line, or ``name, other: text`` for several), its validation in
``__post_init__`` (a ``ValueError`` naming the field as ``name=value``, or as `` `name` `` where no value
belongs; the command line spells either ``--name``, :func:`flag_message`). An experiment's config nests the
configs of what it builds -- ``model: TransformerConfig``, ``moe: MoEConfig``, ``diloco: DiLoCoConfig`` --
through :func:`group`, which says how the nested fields are spelled flat: with no prefix (``num_layers``)
or with one (``moe_top_k``).

:func:`flat_fields` lists the flat settings of a config class (what ``scripts/`` turns into absl flags,
with the old spellings of renamed ones as aliases), :func:`from_flat` builds a config from flat values
(re-raising a nested config's error with the flat name of the field), :func:`to_flat` is the inverse (what
checkpoints record, so resuming compares like with like), and :func:`help_texts` reads the docstrings. A
class attribute ``RENAMED = {old: new}`` keeps an earlier release's spelling of a flat setting working.
A notebook can use any of the three forms: ``TrainLMConfig(model=TransformerConfig(num_layers=2))``,
``from_flat(TrainLMConfig, {"num_layers": 2})`` or ``dataclasses.replace``.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import typing
from typing import Any, Callable, Iterable

def group(factory: Callable[[], Any], *, prefix: str = "", exclude: Iterable[str] = (),
          optional_by: str | None = None, optional: bool = False) -> dataclasses.Field:
    """A nested config field.

    ``prefix`` is put before the nested fields' names in the flat view; ``exclude`` names nested fields
    that are derived by the outer config (not settings of their own). ``optional_by`` names a nested
    integer field whose 0 means "no such part" (the field is then ``None``; e.g. ``moe`` is ``None`` for a
    dense model when ``moe_num_experts=0``); ``optional`` makes the default ``None``.
    """
    meta = {"group": True, "prefix": prefix, "exclude": tuple(exclude), "optional_by": optional_by}
    if optional:
        return dataclasses.field(default=None, metadata={**meta, "group_factory": factory})
    return dataclasses.field(default_factory=factory, metadata={**meta, "group_factory": factory})


@dataclasses.dataclass(frozen=True)
class FlatField:
    """One flat setting: its flat name, Python type, default and help, and where it lives."""
    name: str
    type: type
    default: Any
    help: str
    path: tuple[str, ...]  # attribute path from the outer config, e.g. ("moe", "top_k")


def _group_class(field: dataclasses.Field, owner: type) -> type | None:
    if not field.metadata.get("group"):
        return None
    hint = _type_hints(owner)[field.name]
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    factory = field.metadata["group_factory"]
    return factory if isinstance(factory, type) else type(factory())


@functools.cache
def _type_hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _scalar_type(hint) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:  # Optional[str], str | None
        hint = args[0]
    if hint in (bool, int, float, str):
        return hint
    raise TypeError(f"setting of type {hint!r} has no flat form (bool, int, float or str)")


@functools.cache
def help_texts(cls: type) -> dict[str, str]:
    """``{field: help}`` from the docstrings of ``cls`` and its bases (``name: text`` or ``a, b: text``)."""
    texts: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = klass.__dict__.get("__doc__") or ""
        current: list[str] = []
        indent = None
        for line in doc.splitlines():
            m = re.match(r"^(\s*)([a-z_][a-z0-9_]*(?:\s*,\s*[a-z_][a-z0-9_]*)*)\s*:\s+(\S.*)$", line)
            if m and (indent is None or len(m.group(1)) <= indent):
                indent = len(m.group(1))
                current = [n.strip() for n in m.group(2).split(",")]
                for n in current:
                    texts[n] = m.group(3).strip()
            elif current and line.strip() and indent is not None and len(line) - len(line.lstrip()) > indent:
                for n in current:
                    texts[n] += " " + line.strip()
            else:
                current = []
    return texts


@functools.cache
def flat_fields(cls: type) -> tuple[FlatField, ...]:
    """The flat settings of config class ``cls``, nested groups expanded (ValueError on a name clash)."""
    out: list[FlatField] = []
    defaults = cls()
    _expand(cls, defaults, "", (), (), out)
    seen: dict[str, FlatField] = {}
    for f in out:
        if f.name in seen:
            raise ValueError(f"{cls.__name__}: flat setting {f.name!r} is both {seen[f.name].path} and {f.path}")
        seen[f.name] = f
    return tuple(out)


def _expand(cls, default_obj, prefix, path, exclude, out) -> None:
    texts = help_texts(cls)
    for field in dataclasses.fields(cls):
        if field.name in exclude or not field.init:
            continue
        value = getattr(default_obj, field.name) if default_obj is not None else None
        sub = _group_class(field, cls)
        if sub is not None:
            meta = field.metadata
            sub_default = value if value is not None else sub()
            start = len(out)
            _expand(sub, sub_default, prefix + meta["prefix"], path + (field.name,), meta["exclude"], out)
            if value is None and meta["optional_by"]:  # absent by default: its switch defaults to 0
                for i in range(start, len(out)):
                    if out[i].path[-1] == meta["optional_by"]:
                        out[i] = dataclasses.replace(out[i], default=0)
            continue
        kind = _scalar_type(_type_hints(cls)[field.name])
        default = value
        if default is None and kind is str:
            default = ""
        out.append(FlatField(prefix + field.name, kind, default, texts.get(field.name, field.name.replace("_", " ")),
                             path + (field.name,)))


def to_flat(config) -> dict[str, Any]:
    """``{flat name: value}`` of a config instance (an absent optional group gives its switch 0)."""
    flat = {}
    for f in flat_fields(type(config)):
        obj = config
        for part in f.path:
            obj = None if obj is None else getattr(obj, part)
        flat[f.name] = obj if obj is not None else (f.default if len(f.path) > 1 else None)
    return flat


def renamed(cls: type) -> dict[str, str]:
    """``{old flat name: current flat name}`` of settings an earlier release spelled differently (the class
    attribute ``RENAMED``); the command line accepts both spellings, checkpoints are read through it."""
    return dict(getattr(cls, "RENAMED", {}))


def absent_means(cls: type) -> dict[str, Any]:
    """``{flat name: value}`` that a checkpoint recording no such setting stands for (the class attribute
    ``ABSENT_MEANS``): a setting added later, whose behaviour before it existed was this value, not its
    default -- so resuming such a checkpoint with the new default is refused, naming the setting."""
    return dict(getattr(cls, "ABSENT_MEANS", {}))


def upgrade_flat(cls: type, flat: dict[str, Any]) -> dict[str, Any]:
    """A flat config recorded by an earlier release, with renamed settings under their current names."""
    names = renamed(cls)
    return {names.get(k, k): v for k, v in flat.items()}


def from_flat(cls: type, values: dict[str, Any]):
    """Builds ``cls`` from flat values (defaults for the rest). A nested config's ValueError is re-raised
    with its fields' flat names, so the message names what the user typed."""
    values = upgrade_flat(cls, values)
    known = {f.name for f in flat_fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}")
    return _build(cls, values, "", ())


def _build(cls, values, prefix, exclude, base=None):
    """``base`` (default ``cls()``) with the settings found in ``values`` replaced, groups recursively."""
    base = cls() if base is None else base
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name in exclude or not field.init:
            continue
        sub = _group_class(field, cls)
        if sub is None:
            if prefix + field.name in values:
                kwargs[field.name] = values[prefix + field.name]
            continue
        meta = field.metadata
        sub_prefix = prefix + meta["prefix"]
        current = getattr(base, field.name)
        switch = meta["optional_by"]
        if switch and not values.get(sub_prefix + switch, 0 if current is None else getattr(current, switch)):
            kwargs[field.name] = None
            continue
        try:
            kwargs[field.name] = _build(sub, values, sub_prefix, meta["exclude"], current)
        except ValueError as e:
            names = {f.name: sub_prefix + f.name for f in dataclasses.fields(sub) if f.name not in meta["exclude"]}
            raise ValueError(rename_fields(str(e), names)) from None
    return dataclasses.replace(base, **kwargs)


def rename_fields(message: str, names: dict[str, str]) -> str:
    """``message`` with each setting it names spelled ``names[field]`` instead: ``field=value`` (optionally
    ``Class.field=``) and, where a message names a setting without a value, a quoted `` `field` ``."""
    for name, flat in sorted(names.items(), key=lambda kv: -len(kv[0])):
        message = re.sub(rf"(?<![\w.-])(?:[A-Z]\w*\.)?{re.escape(name)}(?==)", flat, message)
        message = re.sub(rf"`(?:[A-Z]\w*\.)?{re.escape(name)}`", f"`{flat}`", message)
    return message


def flag_message(message: str, names: Iterable[str]) -> str:
    """``message`` in the command-line layer's words: every flat setting ``name=`` spelled ``--name=`` and
    every `` `name` `` spelled ``--name``. Library messages name settings; only this adds the ``--``."""
    message = rename_fields(message, {name: f"--{name}" for name in names})
    return re.sub(r"`(--\w+)`", r"\1", message)
