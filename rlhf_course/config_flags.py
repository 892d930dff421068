"""Every field of a config dataclass as a command-line flag: ``--ppo.lr 3e-5``, ``--data.train_per_family 50``.

A nested dataclass's fields take its field's name as a prefix; underscores may also be written as dashes
(``--base-model``). A value that does not parse as the field's type is refused by argparse, which names
the flag and says what it expected. ``--config FILE.json`` reads the same settings from a file (the
``config.json`` a run writes, say); flags given beside it win.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
    names in ``skip``, and ``--config FILE.json``. ``types_`` replaces the parser of a flag (to check more
    than the type)."""
    groups, parsers = {}, {}
    for name, kind, default in _fields(cls, cls()):
        if name in skip:
            continue
        parsers[name] = (types_ or {}).get(name, _parser(kind, name))
        section = name.rpartition(".")[0]
        if section not in groups:
            groups[section] = parser.add_argument_group(f"--{section}.* settings" if section else "settings")
        options = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        groups[section].add_argument(
            *options,
            dest=name,
            default=argparse.SUPPRESS,
            metavar=_metavar(kind),
            type=parsers[name],
            help=f"default: {default}",
        )
    parser.add_argument(
        "--config",
        type=lambda path: _read(path, parsers),
        default={},
        metavar="FILE.json",
        help='settings from a JSON file ({"ppo": {"lr": 3e-5}}, as a run\'s config.json holds them); '
        "flags given beside it win",
    )


def _metavar(kind) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(kind))) + "}"
    return getattr(kind, "__name__", str(kind)).upper().replace(" ", "")


def _read(path: str, parsers: dict) -> dict:
    """The settings in a JSON file, flattened to flag names and parsed as the flags are."""
    try:
        settings = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise argparse.ArgumentTypeError(f"expected a readable JSON file of settings, got {path!r} ({err})") from None
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value

    if not isinstance(settings, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of settings in {path}, got {type(settings).__name__}")
    walk(settings, "")
    values = {}
    for name, value in flat.items():
        if name not in parsers:
            raise argparse.ArgumentTypeError(f"{path}: {name!r} is not a setting this command takes")
        text = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        try:
            values[name] = parsers[name](text)
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"{path}: {name}: {err}") from None
    return values


def build(cls, args: argparse.Namespace):
    """An instance of ``cls`` with its defaults, then the settings of ``--config``, then every flag given."""
    config = cls()
    for name, _, _ in _fields(cls, config):
        if hasattr(args, name):
            config = _replaced(config, name.split("."), getattr(args, name))
        elif name in getattr(args, "config", {}):
            config = _replaced(config, name.split("."), args.config[name])
    return config


def save(config, path: Path, skip: tuple[str, ...] = ()) -> None:
    """``config`` as the JSON file ``--config`` reads (without the fields in ``skip``)."""
    settings = {}
    for name, _, value in _fields(type(config), config):
        if name in skip:
            continue
        *sections, leaf = name.split(".")
        node = settings
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = str(value) if isinstance(value, Path) else value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def _replaced(config, path: list[str], value):
    head, *rest = path
    return dataclasses.replace(config, **{head: _replaced(getattr(config, head), rest, value) if rest else value})
