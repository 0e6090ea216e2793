from kresolver.module import ModulePlugin
from kresolver.modules.stats import Stats

stats = ModulePlugin(Stats)
