"""Announces the built-in http module (dashboard, /stats, /metrics, module REST APIs)."""

from kresolver.module import ModulePlugin
from kresolver.modules.http import Http

http = ModulePlugin(Http)
