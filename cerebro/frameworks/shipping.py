"""Shipping the user's code to workers: by reference when a worker can import it, else by value.

A model's spec is pickled with cloudpickle in the driver and read in the workers.  cloudpickle
always pickles what is defined in ``__main__`` (a script, ``python -``, a notebook) by value; a
class or function from a module that a fresh worker process could not import by name (a file
imported by path, a module next to a notebook that is not on the workers' ``sys.path``) would
be pickled by reference and fail there with ``ModuleNotFoundError``.  :func:`shipped_by_value`
registers such modules with cloudpickle for the duration of the dump.  Used by every adapter.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import os
import sys
from typing import Any, Iterable, Iterator, Mapping

import cloudpickle

__all__ = ["module_names", "unimportable_modules", "shipped_by_value"]

#: Modules every worker has: never shipped by value (``__main__`` is by value already).
SKIP_MODULES = ("__main__", "builtins", "torch", "keras", "tensorflow", "numpy", "cerebro", "functools", "typing",
                "collections")


def module_names(objects: Iterable[Any]) -> set[str]:
    """The modules that define ``objects`` (or their classes), looking into lists, tuples and dicts."""
    names: set[str] = set()

    def add(obj: Any) -> None:
        for name in (getattr(obj, "__module__", None), getattr(type(obj), "__module__", None)):
            if isinstance(name, str):
                names.add(name)

    for obj in objects:
        if obj is None:
            continue
        if isinstance(obj, (list, tuple)):
            names |= module_names(obj)
        elif isinstance(obj, Mapping):
            names |= module_names(obj.values())
        else:
            add(obj)
    return names


def _importable_by_name(name: str) -> bool:
    """Whether a fresh process with this ``sys.path`` would import the same module as ``name``."""
    top = name.partition(".")[0]
    if top in sys.builtin_module_names:
        return True
    found = importlib.machinery.PathFinder.find_spec(top)
    if found is None:
        return False
    top_file = getattr(sys.modules.get(top), "__file__", None)
    if top_file and found.origin and found.origin not in ("namespace", "built-in", "frozen"):
        return os.path.realpath(found.origin) == os.path.realpath(top_file)
    return True


def unimportable_modules(objects: Iterable[Any]) -> list[Any]:
    """Modules of the user's classes/functions that a worker could not import by name."""
    out = []
    for name in sorted(module_names(objects)):
        if name.partition(".")[0] in SKIP_MODULES:
            continue
        module = sys.modules.get(name)
        if module is not None and not _importable_by_name(name):
            out.append(module)
    return out


@contextlib.contextmanager
def shipped_by_value(objects: Iterable[Any]) -> Iterator[None]:
    """While inside, cloudpickle pickles the code of ``objects`` by value when a worker could not
    import it by name (``__main__`` is always by value)."""
    registered = []
    try:
        for module in unimportable_modules(objects):
            try:
                cloudpickle.register_pickle_by_value(module)
            except ValueError:  # already registered
                continue
            registered.append(module)
        yield
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)
