"""Announces the built-in ta_signal_query module (RFC 8145 key tag signalling)."""

from kresolver.module import ModulePlugin
from kresolver.modules.ta_signal_query import TaSignalQuery

ta_signal_query = ModulePlugin(TaSignalQuery)
