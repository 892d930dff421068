"""Every field of a config dataclass as a command-line flag: ``--ppo.lr 3e-5``, ``--data.train_per_family 50``.

A nested dataclass's fields take its field's name as a prefix; underscores may also be written as dashes
(``--base-model``). A value that does not parse as the field's type is refused by argparse, which names
the flag and says what it expected.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path


def _parser(kind, name: str):
    """An argparse ``type`` for a field annotated ``kind``; its error message says what was expected."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        parse_inner = _parser(inner, name)
        return lambda text: None if text.lower() == "none" else parse_inner(text)
    if typing.get_origin(kind) is typing.Literal:

        def literal(text: str):
            if text not in args:
                raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, args))}; got {text!r}")
            return text

        return literal
    if kind is bool:

        def boolean(text: str) -> bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")

        return boolean
    if kind in (int, float):

        def number(text: str):
            try:
                return kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
                ) from None

        return number
    if kind in (str, Path):
        return kind
    raise TypeError(f"config field {name} has a type the command line cannot set: {kind}")


def _fields(cls, default, prefix: str = ""):
    """(flag name, annotated type, default value) of every leaf field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], value, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, hints[f.name], value


def add_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), types_: dict | None = None) -> None:
    """One flag per leaf field of ``cls`` (``--sft.lr``), grouped by the dataclass it belongs to, except the
    names in ``skip``. ``types_`` replaces the parser of a flag (to check more than the type)."""
    groups = {}
    for name, kind, default in _fields(cls, cls()):
        if name in skip:
            continue
        section = name.rpartition(".")[0]
        if section not in groups:
            groups[section] = parser.add_argument_group(f"--{section}.* settings" if section else "settings")
        options = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        groups[section].add_argument(
            *options,
            dest=name,
            default=argparse.SUPPRESS,
            metavar=_metavar(kind),
            type=(types_ or {}).get(name, _parser(kind, name)),
            help=f"default: {default}",
        )


def _metavar(kind) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(kind))) + "}"
    return getattr(kind, "__name__", str(kind)).upper().replace(" ", "")


def build(cls, args: argparse.Namespace):
    """An instance of ``cls`` with its defaults, and every field the command line set."""
    config = cls()
    for name, _, _ in _fields(cls, config):
        if hasattr(args, name):
            config = _replaced(config, name.split("."), getattr(args, name))
    return config


def _replaced(config, path: list[str], value):
    head, *rest = path
    return dataclasses.replace(config, **{head: _replaced(getattr(config, head), rest, value) if rest else value})
