from kresolver.module import ModulePlugin
from kresolver.modules.renumber import Renumber

renumber = ModulePlugin(Renumber)
