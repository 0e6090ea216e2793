"""Announces the built-in hints module (static A/AAAA/PTR answers, root hints)."""

from kresolver.module import ModulePlugin
from kresolver.modules.hints import Hints

hints = ModulePlugin(Hints)
