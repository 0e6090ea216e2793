from kresolver.module import ModulePlugin
from kresolver.modules.policy import Policy

policy = ModulePlugin(Policy)
