from kresolver.module import ModulePlugin
from kresolver.modules.view import View

view = ModulePlugin(View)
