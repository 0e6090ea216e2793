from kresolver.module import ModulePlugin
from kresolver.modules.manhole import Manhole

manhole = ModulePlugin(Manhole)
