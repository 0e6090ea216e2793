"""twistd drop-in: makes ``twistd kresolver`` run the resolver (see kresolver.tap)."""

from twisted.application.service import ServiceMaker

kresolver = ServiceMaker(
    "kresolver",
    "kresolver.tap",
    "A caching, DNSSEC-validating, recursive DNS resolver modelled on Knot Resolver",
    "kresolver",
)
