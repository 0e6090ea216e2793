"""Announces the built-in daf module (DNS application firewall)."""

from kresolver.module import ModulePlugin
from kresolver.modules.daf import Daf

daf = ModulePlugin(Daf)
