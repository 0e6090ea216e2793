"""A resolved request leaves no reference cycles behind.

The daemon runs the collector rarely (L{kresolver.tap.GC_THRESHOLD}) because a request
is meant to be freed by reference counting the moment it is answered.  A cycle anywhere
on the path (a closure that refers to itself, an object pair pointing at each other)
would keep every finished request alive until a collection, and make collections walk and
free thousands of objects under load: these tests resolve real cache misses over UDP and
TCP through the in-process lab and look for kresolver's objects in the collector's haul.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from twisted.internet import defer

from tests.test_resolution import ResolutionCase

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KRESOLVER = CHECKOUT + "/kresolver/"
#: the lab's servers are test fixtures, not the resolver
LAB = KRESOLVER + "testing/"


def code_file(obj: Any) -> str | None:
    """Where the code behind C{obj} (a function, generator, frame or instance) lives."""
    for attr in ("__code__", "gi_code", "cr_code", "f_code"):
        code = getattr(obj, attr, None)
        if code is not None:
            return code.co_filename
    module = getattr(type(obj), "__module__", "") or ""
    if module.startswith("kresolver"):
        return f"{CHECKOUT}/{module.replace('.', '/')}.py"
    return None


def resolver_garbage(garbage: list[Any], old: set[int]) -> list[str]:
    """The objects of kresolver (not of its test lab) among C{garbage}, described, but
    for those whose ids are in C{old}: alive before the requests under test were made
    (earlier tests may leave engines behind that only now become garbage)."""
    found = []
    for obj in garbage:
        if id(obj) in old:
            continue
        path = code_file(obj)
        if path and path.startswith(KRESOLVER) and not path.startswith(LAB):
            found.append(f"{type(obj).__qualname__} from {path[len(KRESOLVER):]}")
    return found


class NoCyclesTests(ResolutionCase):
    def setUp(self) -> None:
        super().setUp()
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        self.addCleanup(self._restore)

    def _restore(self) -> None:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()

    def mark(self) -> None:
        """From here on, only objects made after this call count as found."""
        gc.garbage.clear()
        gc.collect()
        gc.garbage.clear()
        self.old = {id(obj) for obj in gc.get_objects()}

    def collect(self) -> list[str]:
        gc.garbage.clear()
        gc.collect()
        return resolver_garbage(gc.garbage, self.old)

    @defer.inlineCallbacks
    def test_cache_misses_over_udp_and_tcp(self) -> Any:
        # the first answer caches the delegations; each later name is a new upstream query
        yield self.query("www.alpha.lab.", "A")
        self.mark()
        for i in range(20):
            response = yield self.query(f"n{i}.wild.alpha.lab.", "A")
            self.assertEqual(len(response.answer), 1)
        response = yield self.query("www.beta.kres.", "A", transport="tcp")
        self.assertEqual(len(response.answer), 1)
        self.assertEqual(self.collect(), [])

    @defer.inlineCallbacks
    def test_referrals_cnames_and_negative_answers(self) -> Any:
        self.mark()
        for name, rdtype in (
            ("chain.alpha.lab.", "A"),  # a chain across three zones
            ("www.gamma.lab.", "A"),  # a glueless delegation: a sub-query for the NS name
            ("nowhere.alpha.lab.", "A"),
            ("txt.alpha.lab.", "A"),
        ):
            yield self.query(name, rdtype)
        self.assertEqual(self.collect(), [])

    def test_the_check_finds_a_cycle(self) -> None:
        # the same check on a cycle made on purpose from one of the driver's objects
        from kresolver.resolve.request import Flags

        self.mark()
        first, second = Flags(), Flags()
        first.__dict__["peer"] = second
        second.__dict__["peer"] = first
        del first, second
        self.assertEqual(self.collect(), ["Flags from resolve/request.py"] * 2)
