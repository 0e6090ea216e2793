"""Announces the built-in iterate module (recursive resolution from the root)."""

from kresolver.module import ModulePlugin
from kresolver.modules.iterate import Iterate

iterate = ModulePlugin(Iterate)
