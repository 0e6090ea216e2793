from kresolver.module import ModulePlugin
from kresolver.modules.dns64 import DNS64

dns64 = ModulePlugin(DNS64)
