"""The Hydra search-path plugin that brings plugins' config groups into composition.

plugstack registers it with Hydra by hand (``install()``) instead of shipping it in the
``hydra_plugins`` namespace, which Hydra imports for every Hydra app in the environment:
this way it cannot leak into other apps. It also acts only when plugstack's own config
(``pkg://plugstack.conf``) is the primary config, and it never raises.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PRIMARY = "pkg://plugstack.conf"


class PlugstackSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(element.path == PRIMARY for element in search_path.get_path()):
            return  # someone else's Hydra app
        try:
            from plugstack.registry import get_registry

            for plugin, path in get_registry().config_searchpaths():
                search_path.append(provider=f"plugstack:{plugin}", path=path)
        except Exception as exc:  # a broken plugin must not take Hydra down
            import structlog

            structlog.get_logger("plugstack.hydra").warning(
                "plugin.searchpath_failed", error=f"{type(exc).__name__}: {exc}"
            )


def install() -> None:
    """Register the plugin with Hydra (idempotent)."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    if PlugstackSearchPathPlugin not in plugins.discover(SearchPathPlugin):
        plugins.register(PlugstackSearchPathPlugin)
