from kresolver.module import ModulePlugin
from kresolver.modules.refuse_nord import RefuseNoRD

refuse_nord = ModulePlugin(RefuseNoRD)
