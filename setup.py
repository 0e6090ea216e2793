"""Packaging for kresolver.

The flat layout ships two top-level package trees: ``kresolver`` and the twistd drop-in
directory ``twisted/plugins``.  ``package_dir={"": "."}`` keeps an editable install from
hiding ``twisted/plugins`` behind the installed Twisted, and ``conf/`` is shipped as the
data package ``kresolver.conf`` so the embedded default configuration is found after any
kind of install.
"""

from setuptools import find_packages, setup

setup(
    name="kresolver",
    version="0.1.0",
    description="A caching, DNSSEC-validating, recursive DNS resolver on Twisted, modelled on Knot Resolver",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    package_dir={"": ".", "kresolver.conf": "conf"},
    packages=find_packages(include=["kresolver", "kresolver.*"])
    + ["kresolver.conf", "twisted.plugins"],
    package_data={
        "kresolver.conf": ["*.conf", "*.hints", "*.keys"],
        "twisted.plugins": ["kresolver_plugin.py"],
    },
    include_package_data=True,
    install_requires=[
        "twisted[tls,conch,http2]>=23.10",
        "dnspython>=2.6",
        "pyopenssl",
        "service-identity",
        "klein",
        "werkzeug<4",
        "txredisapi",
        "cryptography",
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
