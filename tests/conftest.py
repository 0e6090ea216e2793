"""Suite-wide safety: nothing a test starts may ask a non-loopback address.

Every resolver the tests start (in-process or as a twistd/kresd subprocess, which inherit
the environment) honours KRESOLVER_LOOPBACK_ONLY, so a test that forgets to point the root
hints at its lab fails instead of sending queries to the real root servers.
"""

import os

os.environ["KRESOLVER_LOOPBACK_ONLY"] = "1"
