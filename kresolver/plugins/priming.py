"""Announces the built-in priming module (RFC 8109 root priming, lazily)."""

from kresolver.module import ModulePlugin
from kresolver.modules.priming import Priming

priming = ModulePlugin(Priming)
