"""Announces the built-in cache layer (answers from and stores into the record cache)."""

from kresolver.module import ModulePlugin
from kresolver.modules.cache_layer import CacheLayer

cache = ModulePlugin(CacheLayer)
