"""What every module shares: the L{IModule} basics and the plugin that announces it.

A module is a class with C{name}, C{description} and whatever layer hooks it needs; a
drop-in file in a C{kresolver/plugins} directory announces it with
C{ModulePlugin(TheClass)}.  The engine makes one instance per load.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.plugin import IPlugin
from zope.interface import implementer

from kresolver.interfaces import IModule, IModuleFactory


@implementer(IModule)
class Module:
    """A module with no layers and no configuration; subclasses add what they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    api: Any = None

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def configure(self, value: Any) -> None:
        if value is not None:
            raise ValueError(f"module {self.name!r} takes no configuration (got {value!r})")

    def unload(self) -> None:
        """Nothing held by default."""


@implementer(IPlugin, IModuleFactory)
class ModulePlugin:
    """A module class as a twisted.plugin: what ``getPlugins(IModuleFactory)`` finds."""

    def __init__(self, factory: type[Module] | Any, name: str = "", description: str = "") -> None:
        self.factory = factory
        self.name = name or factory.name
        self.description = description or getattr(factory, "description", "")
        if not self.name:
            raise ValueError(f"module factory {factory!r} has no name")

    def __call__(self, engine: Any) -> IModule:
        return self.factory(engine)

    def __repr__(self) -> str:
        return f"ModulePlugin({self.name!r})"
