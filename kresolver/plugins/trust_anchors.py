"""Announces the built-in trust_anchors module (DNSSEC trust anchors)."""

from kresolver.module import ModulePlugin
from kresolver.modules.trust_anchors import TrustAnchors

trust_anchors = ModulePlugin(TrustAnchors)
