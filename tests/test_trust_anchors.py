"""The trust_anchors config API: built-in root key, add, add_file, remove, negative anchors."""

from __future__ import annotations

import os
import tempfile

import dns.name
from twisted.internet import task
from twisted.trial import unittest

from kresolver.engine import ConfigError, Engine
from kresolver.testing.signing import make_key

DS_TEXT = ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"


class TrustAnchorsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.engine = Engine(task.Clock())
        self.engine.load_defaults()
        self.api = self.engine.namespace["trust_anchors"]
        self.module = self.engine.modules["trust_anchors"]

    def test_loaded_with_validate_and_root_key_built_in(self) -> None:
        self.assertIn("validate", self.engine.modules.list())
        self.assertIn("trust_anchors", self.engine.modules.list())
        summary = self.api.summary()
        self.assertIn(". IN DNSKEY 257 3 8", summary)
        anchor = self.module.anchor_for(dns.name.from_text("www.example.com."))
        self.assertEqual(anchor.name, dns.name.root)
        self.assertEqual(len(anchor.keys), 2)
        self.assertTrue(anchor.readonly)

    def test_remove_and_add_ds(self) -> None:
        self.engine.run_config("trust_anchors.remove('.')")
        self.assertIsNone(self.module.anchor_for(dns.name.from_text("example.")))
        self.assertFalse(self.api.remove("."))
        self.engine.run_config(f"trust_anchors.add({DS_TEXT!r})")
        anchor = self.module.anchor_for(dns.name.from_text("example."))
        self.assertEqual([ds.key_tag for ds in anchor.ds], [20326])
        self.assertEqual(anchor.keys, [])
        # Adding the same record twice keeps one.
        self.api.add(DS_TEXT)
        self.assertEqual(len(self.module.anchors[dns.name.root].ds), 1)

    def test_deeper_anchor_wins(self) -> None:
        key = make_key(13)[1]
        self.api.add(f"corp.lab. 3600 IN DNSKEY {key.to_text()}")
        anchor = self.module.anchor_for(dns.name.from_text("www.corp.lab."))
        self.assertEqual(anchor.name, dns.name.from_text("corp.lab."))
        self.assertEqual(anchor.keys, [key])
        self.assertIn("corp.lab.", self.api.keysets())
        # Case does not matter, and a name beside the anchor is the root's.
        anchor = self.module.anchor_for(dns.name.from_text("WWW.Corp.LAB."))
        self.assertEqual(anchor.name, dns.name.from_text("corp.lab."))
        self.assertEqual(self.module.anchor_for(dns.name.from_text("xcorp.lab.")).name,
                         dns.name.root)
        self.assertTrue(self.api.remove("Corp.Lab."))
        self.assertEqual(self.module.anchor_for(dns.name.from_text("www.corp.lab.")).name,
                         dns.name.root)

    def test_add_file_readonly_never_written(self) -> None:
        fd, path = tempfile.mkstemp(suffix=".keys")
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "w") as f:
            f.write("; a comment\n" + DS_TEXT + "\n")
        before = os.stat(path).st_mtime_ns
        self.engine.run_config(f"trust_anchors.remove('.')\ntrust_anchors.add_file({path!r}, True)")
        anchor = self.module.anchors[dns.name.root]
        self.assertTrue(anchor.readonly)
        self.assertEqual(str(anchor.path), path)
        self.assertEqual(os.stat(path).st_mtime_ns, before)
        self.api.add_file(path)
        self.assertFalse(self.module.anchors[dns.name.root].readonly)

    def test_bad_input_is_a_clear_error(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.engine.run_config("trust_anchors.add('. IN A 192.0.2.1')")
        self.assertIn("DS or DNSKEY", str(caught.exception))
        self.assertRaises(ValueError, self.api.add, "garbage here")
        self.assertRaises(ValueError, self.api.add, "")
        self.assertRaises(ValueError, self.api.add_file, "/nonexistent/root.keys")
        zsk_without_zone_flag = make_key(13, flags=0)[1]
        self.assertRaises(ValueError, self.api.add, f". DNSKEY {zsk_without_zone_flag}")

    def test_negative_trust_anchors(self) -> None:
        self.assertEqual(
            self.api.set_insecure(["corp.lab.", "test.kres"]), ["corp.lab.", "test.kres."]
        )
        self.assertTrue(self.module.insecure(dns.name.from_text("www.corp.lab.")))
        self.assertFalse(self.module.insecure(dns.name.from_text("lab.")))
        self.assertIn("corp.lab. negative trust anchor", self.api.summary())
        self.api.set_insecure([])
        self.assertFalse(self.module.insecure(dns.name.from_text("www.corp.lab.")))

    def test_changes_clear_whole_answers_and_keys(self) -> None:
        seen = []
        self.module.listeners.append(lambda: seen.append(1))
        self.api.set_insecure("x.lab.")
        self.api.remove(".")
        self.assertEqual(len(seen), 2)
