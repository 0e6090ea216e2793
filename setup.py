"""Packaging for kresolver.

The flat layout ships two top-level package trees: ``kresolver`` and the twistd drop-in
directory ``twisted/plugins``.  ``package_dir={"": "."}`` keeps an editable install from
hiding ``twisted/plugins`` behind the installed Twisted, and ``conf/`` is shipped as the
data files under ``share/kresolver`` so the embedded default configuration is found after
any kind of install (see ``kresolver.paths``).
"""

from setuptools import find_packages, setup

setup(
    name="kresolver",
    version="0.1.0",
    description=(
        "A caching, DNSSEC-validating, recursive DNS resolver on Twisted, "
        "modelled on Knot Resolver"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    package_dir={"": "."},
    packages=[*find_packages(include=["kresolver", "kresolver.*"]), "twisted.plugins"],
    package_data={
        "twisted.plugins": ["kresolver_plugin.py"],
        # the http module's dashboard page, its scripts and styles
        "kresolver.web": ["static/*", "templates/*"],
    },
    data_files=[("share/kresolver", ["conf/kresolver.conf", "conf/root.hints", "conf/root.keys"])],
    install_requires=[
        "twisted[tls,conch,http2]>=23.10",
        "dnspython>=2.6",
        "pyopenssl",
        "service-identity",
        "klein",
        "werkzeug<4",
        "txredisapi",
        "lmdb",
        "cryptography",
        "publicsuffixlist",  # policy.slice_randomize_psl: ships its own copy of the PSL
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "hypothesis",
            "ruff",
            "prometheus_client",
        ],
    },
    zip_safe=False,
)
