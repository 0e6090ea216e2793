"""Announces the built-in validate module (DNSSEC validation)."""

from kresolver.module import ModulePlugin
from kresolver.resolve.validate import ValidateModule

validate = ModulePlugin(ValidateModule)
