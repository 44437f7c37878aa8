"""Packages whose names load on first use (PEP 562): ``backbones``, ``steer``,
``steer.concepts`` and ``steer.metrics`` import diffusers and transformers only when a name
that needs them is asked for, so that light imports and ``steer --help`` stay fast."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from types import ModuleType
from typing import Any


def lazy_names(
    package: str, names: Mapping[str, str], public: list[str], extra: str | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``: a name of ``names`` (name →
    submodule) is imported from its submodule on first use; any other name of a submodule
    (``steer.concepts`` after ``import steer``, as when the package imported them all) imports
    it; ``dir()`` lists ``public`` (``__all__``) and the submodules already imported. Where the
    package's names need an optional ``extra`` of steer, a missing third-party module is named
    with the install command."""

    def load(module: str, name: str) -> ModuleType:
        try:
            return import_module(module)
        except ModuleNotFoundError as error:
            own = error.name is None or error.name.split(".")[0] == package.split(".")[0]
            if extra is None or own:
                raise
            raise ModuleNotFoundError(
                f"{package}.{name} needs {error.name}, which is not installed: "
                f"pip install 'steer[{extra}]'",
                name=error.name,
            ) from error

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(load(f"{package}.{names[name]}", name), name)
        if not name.startswith("_") and name.isidentifier():
            try:
                return load(f"{package}.{name}", name)
            except ModuleNotFoundError as error:
                if error.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        loaded = vars(import_module(package)).items()
        return sorted({*public, *(name for name, value in loaded if isinstance(value, ModuleType))})

    return __getattr__, __dir__
