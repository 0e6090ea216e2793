from kresolver.module import ModulePlugin
from kresolver.modules.predict import Predict

predict = ModulePlugin(Predict)
