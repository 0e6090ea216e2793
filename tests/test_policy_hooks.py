"""Policy's tracing hooks join the layers whichever rule table turns tracing on.

Policy leaves its checkout/consume/finish hooks out of the engine's layers until a request
is traced; these check that a view's rule (evaluated in the view module's begin, not
policy's) brings them in for that very request, so its debug trace is still printed.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import globalLogPublisher

from tests.test_view import ViewCase


class ViewTracingTests(ViewCase):
    def hooks(self) -> set[str]:
        policy, layers = self.engine.modules["policy"], self.engine.layers
        return {
            hook for hook in ("checkout", "consume", "finish")
            if any(getattr(f, "__self__", None) is policy for f in getattr(layers, hook))
        }

    @defer.inlineCallbacks
    def test_view_debug_rule_traces_its_first_request(self):
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.config("view.addr('127.0.61.0/24', policy.all(policy.DEBUG_ALWAYS))")
        yield self.query("a.example.", "127.0.62.7")
        self.assertEqual(self.hooks(), set())  # no traced request yet
        yield self.query("b.example.", "127.0.61.7")
        self.assertEqual(self.hooks(), {"checkout", "consume", "finish"})
        lines = [e.get("line", "") for e in events if e.get("log_namespace") == "reqdbg.policy"]
        self.assertTrue(any(line.startswith("finished in state") for line in lines), lines)


class OptionTracingTests(ViewCase):
    def test_option_puts_tracing_hooks_in_at_once(self):
        """option('QTRACE', True) traces internal requests too, which pass no begin
        layer: the hooks join the layers when the option is set, not at the first
        client request."""
        policy, layers = self.engine.modules["policy"], self.engine.layers
        self.assertFalse(any(getattr(f, "__self__", None) is policy for f in layers.consume))
        self.config("option('QTRACE', True)")
        self.assertTrue(any(getattr(f, "__self__", None) is policy for f in layers.consume))
        self.assertTrue(any(getattr(f, "__self__", None) is policy for f in layers.checkout))

    def test_policy_loaded_after_the_option_traces(self):
        from kresolver.modules.policy import Policy

        self.engine.options.set("DEBUG", True)
        fresh = Policy(self.engine)
        self.assertIsNotNone(fresh.consume)
        self.assertIsNotNone(fresh.finish)
