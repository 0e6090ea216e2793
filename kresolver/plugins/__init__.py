"""Drop-in directory for kresolver modules (a twisted.plugin package).

Any ``kresolver/plugins`` directory on ``sys.path`` that has no ``__init__.py`` joins this
package, so a third-party distribution adds a module by shipping one file there, with a
``ModulePlugin`` at its top level.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # type: ignore[name-defined]
__all__: list[str] = []
