"""The record cache (DNS semantics) and the byte storages under it."""

from kresolver.cache.cache import Cache, CachedNegative, CachedRRset, Rank, Security

__all__ = ["Cache", "CachedNegative", "CachedRRset", "Rank", "Security"]
