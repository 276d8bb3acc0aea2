"""The CLI's shape: each command group owns its commands (defined in the group's own module,
or in a module the group's module imports and adds itself), and no command is wrapped from
outside. So reading one module tells the next person everything a group does."""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from fs_consent.cli import main


def walk(group: click.Group, path=()):
    for name, command in group.commands.items():
        yield path + (name,), group, command
        if isinstance(command, click.Group):
            yield from walk(command, path + (name,))


def defining_module(obj) -> str:
    return inspect.unwrap(obj.callback).__module__


def test_every_group_defines_or_adds_its_own_commands():
    for path, group, command in walk(main):
        if group is main or command.callback is None:
            continue
        owner = inspect.getmodule(inspect.unwrap(group.callback))
        module = defining_module(command)
        assert module == owner.__name__ or command in vars(owner).values(), (
            f"`fs-consent {' '.join(path)}` is defined in {module} and added to a group of {owner.__name__} "
            "from outside")


def test_no_command_callback_is_wrapped_after_the_fact():
    """Every layer of a callback (click's pass decorators aside) is code of the command's own module."""
    click_dir = Path(click.__file__).parent
    for path, _group, command in walk(main):
        if command.callback is None:
            continue
        own_file = inspect.getsourcefile(inspect.unwrap(command.callback))
        layer = command.callback
        while layer is not None:
            code_file = Path(layer.__code__.co_filename)
            assert click_dir in code_file.parents or str(code_file) == own_file, (
                f"`fs-consent {' '.join(path)}` is wrapped by code in {code_file}")
            layer = getattr(layer, "__wrapped__", None)


def test_the_tree_has_the_commands_users_rely_on():
    names = {" ".join(path) for path, _g, _c in walk(main)}
    for expected in ("serve", "keys init", "keys signing-key", "subject export", "recordings play", "withdraw",
                     "audit verify", "compliance", "report", "purge", "requests add", "check"):
        assert expected in names
