"""Announces the built-in ta_update module (RFC 5011 trust anchor tracking)."""

from kresolver.module import ModulePlugin
from kresolver.modules.ta_update import TaUpdate

ta_update = ModulePlugin(TaUpdate)
