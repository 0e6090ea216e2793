"""The contracts between kresolver's parts.

A module (kresd's notion) is a set of layer hooks plus a config API.  Modules are found
with ``twisted.plugin.getPlugins(IModuleFactory, kresolver.plugins)``: a drop-in file in any
``kresolver/plugins`` directory on ``sys.path`` names factories, the engine calls one per
``modules.load(name)`` and gets an ``IModule`` back.

Caches talk to storages in bytes only, so the same cache logic runs over memory, LMDB,
Redis or memcached.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IModuleFactory(Interface):
    """Makes a module for one engine; what ``kresolver.plugins`` drop-ins provide."""

    name = Attribute("The module's name: what ``modules.load(name)`` and the config use.")
    description = Attribute("One line for ``modules.list()`` and the README's module table.")

    def __call__(engine):  # noqa: N805 - zope interface method
        """Return a new L{IModule} bound to C{engine}."""


class IModule(Interface):
    """A loaded module: layer hooks (see L{ILayer}) plus a config API."""

    name = Attribute("The module's name.")
    api = Attribute(
        "The object put into the config namespace under the module's name (for example "
        "``hints``), or None when the module has no config API."
    )

    def configure(value):  # noqa: N805
        """Apply C{value} from ``modules = {'name': value}`` (kresd's per-module config)."""

    def unload():
        """Release timers, files and sockets; the engine drops the layers itself."""

    # Optional: ``option_changed(name, value)`` is called when ``option(name, value)`` sets
    # a default request flag (name upper-case), for a module that keeps hooks out of the
    # layers until a flag needs them (policy's tracing hooks).


class ILayer(Interface):
    """The hooks a query walks through (kresd's ``kr_layer_api``).

    A module implements only the hooks it needs; the engine collects the bound methods
    per hook when the module loads, so an absent hook costs nothing per query.  Every
    hook returns a L{kresolver.resolve.request.State} or a Deferred that fires with one;
    the driver chains Deferreds only when a hook returns one.
    """

    def begin(request):  # noqa: N805
        """The request arrived: policy, views, ACLs may answer or drop it here."""

    def produce(request, query):  # noqa: N805
        """Answer C{query} (cache, hints) or prepare the next upstream question."""

    def checkout(request, query, outgoing):  # noqa: N805
        """Inspect or veto the upstream question just before it is sent."""

    def consume(request, query, response):  # noqa: N805
        """Digest the upstream C{response} to C{query}: referral, answer, validation."""

    def answer_finalize(request):  # noqa: N805
        """The answer is complete; rewrite it (REROUTE, renumber, dns64) before sending."""

    def finish(request):  # noqa: N805
        """The answer is on its way: account it (stats, predict, logging)."""


class IStorage(Interface):
    """Synchronous byte storage under a cache: memory and LMDB.

    Values expire by themselves after C{ttl} seconds; C{get} never returns expired data.
    """

    def get(key):  # noqa: N805
        """Return the bytes stored under C{key}, or None."""

    def set(key, value, ttl):  # noqa: N805
        """Store C{value} under C{key} for C{ttl} seconds, evicting if the storage is full."""

    def delete(prefix):  # noqa: N805
        """Remove every key that starts with C{prefix}; return how many went."""

    def clear():
        """Remove everything."""

    def usage():
        """Return a dict with at least ``count``, ``bytes`` and ``capacity``."""


class IAsyncStorage(Interface):
    """A shared storage across the network (Redis, memcached): every call returns a Deferred.

    The cache puts a local L{IStorage} in front of it and bounds every call with a timeout,
    so a slow or dead backend costs answers nothing.
    """

    def get(key):  # noqa: N805
        """Deferred of the bytes under C{key}, or of None."""

    def set(key, value, ttl):  # noqa: N805
        """Deferred that fires when C{value} is stored under C{key} for C{ttl} seconds."""

    def delete(prefix):  # noqa: N805
        """Deferred of how many keys starting with C{prefix} went."""

    def clear():
        """Deferred that fires when the storage is empty."""

    def usage():
        """Deferred of a dict with at least ``count``."""

    def close():
        """Disconnect; Deferred that fires when done."""
