from kresolver.module import ModulePlugin
from kresolver.modules.etcd import Etcd

etcd = ModulePlugin(Etcd)
