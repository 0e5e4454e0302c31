"""Configuration: the root schema, Hydra composition and early checks of group choices.

The primary config is ``conf/config.yaml`` (package ``plugstack.conf``), composed over
the groups ``backend``, ``model`` and ``app``. Each plugin's config dataclass is stored
in Hydra's ConfigStore at the root as ``plugstack_<kind>_<name>`` (see ``Register``), so
a wrong type or an unknown key fails at composition with Hydra's own message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from omegaconf import MISSING

from .errors import ConfigError, suggestion_text

if TYPE_CHECKING:
    from .entries import Entry
    from .registry import Registry

__all__ = ["CONFIG_MODULE", "GROUPS", "LogConfig", "PlugstackConfig", "check_choices", "compose", "options",
           "prepare_hydra"]

T = TypeVar("T")

CONFIG_MODULE = "plugstack.conf"
GROUPS = ("backend", "model", "app")


class LogFormat(str, Enum):
    console = "console"
    json = "json"


class LogLevel(str, Enum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


@dataclass
class LogConfig:
    #: ``console`` (coloured on a terminal) or ``json`` (one JSON object per line).
    format: LogFormat = LogFormat.console
    #: Lowest level written to stderr: DEBUG | INFO | WARNING | ERROR | CRITICAL.
    level: LogLevel = LogLevel.INFO


@dataclass
class PlugstackConfig:
    """The root schema; each group's own schema comes from its plugin."""

    backend: Any = MISSING
    model: Any = MISSING
    app: Any = MISSING
    log: LogConfig = field(default_factory=LogConfig)


def options(cls: type[T], cfg: Any) -> T:
    """``cfg`` as an instance of the config dataclass ``cls``, defaults filled in: what a
    plugin's factory does with the config it is given (``None``, an instance, a DictConfig
    or a mapping). An unknown key or a wrong type is a :class:`ConfigError` naming it."""
    if cfg is None:
        return cls()
    if isinstance(cfg, cls):
        return cfg
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        given = OmegaConf.structured(cfg) if dataclasses.is_dataclass(cfg) else cfg
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), given))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from None


def store_schemas(registry: Registry) -> None:
    """Put every plugin's config into Hydra's ConfigStore: its dataclass at the root, as
    ``plugstack_<kind>_<name>`` (for YAML presets to validate against), and its defaults
    as the choice ``<kind>/<name>`` (and each alias), so a plugin is selectable without
    any YAML. A YAML of the same name in a search path wins over the stored defaults."""
    from hydra.core.config_store import ConfigStore

    from .registry import KINDS, schema_name

    cs = ConfigStore.instance()
    for kind in KINDS:
        for entry in registry.entries(kind):
            if entry.config is not None:
                cs.store(name=schema_name(kind, entry.name), node=entry.config)
            for name in (entry.name, *entry.aliases):
                cs.store(group=kind, name=name, node=_choice_node(entry, name))


def _choice_node(entry: Entry, name: str) -> Any:
    """The defaults of ``entry``'s config with ``name`` set: what ``<kind>=<name>`` selects."""
    if entry.config is None:
        return {"name": name}
    cls = entry.config
    if "name" not in {f.name for f in dataclasses.fields(cls)}:  # give it the field the run reads
        cls = dataclasses.make_dataclass(cls.__name__, [("name", str, dataclasses.field(default=name))], bases=(cls,))
    try:
        return dataclasses.replace(cls(), name=name)
    except TypeError:  # a field without a default: Hydra reports it missing when chosen
        return cls


def prepare_hydra() -> None:
    """Store every schema in the ConfigStore and install the search-path plugin."""
    from hydra.core.config_store import ConfigStore

    from . import hydra_searchpath
    from .registry import get_registry

    ConfigStore.instance().store(name="plugstack_config", node=PlugstackConfig)
    store_schemas(get_registry())
    hydra_searchpath.install()


def group_options(group: str) -> list[str]:
    """Every choice of ``group`` in the search path (built-in and plugin-contributed)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    prepare_hydra()
    already = GlobalHydra.instance().is_initialized()
    if already:
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def check_choices(overrides: Sequence[str]) -> None:
    """Fail early, with a suggestion, on ``backend=onxx``-style typos in group choices."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:
        return  # Hydra reports grammar errors itself, with its own message
    cache: dict[str, list[str]] = {}
    for override in parsed:
        group = override.key_or_group
        if group not in GROUPS or override.is_delete() or override.package:
            continue
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()]
        options = cache.setdefault(group, group_options(group))
        for value in values:
            if value not in options:
                raise ConfigError(
                    f"Unknown {group} {value!r}.{suggestion_text(value, options)} "
                    f"Available {group} choices: {', '.join(options)}. "
                    f"(`plugstack --help` lists every group and choice.)"
                )


def compose(overrides: Sequence[str] = ()) -> Any:
    """Compose plugstack's config outside the CLI (tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    prepare_hydra()
    check_choices(overrides)
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))
