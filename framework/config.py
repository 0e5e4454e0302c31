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
    #: Lowest level shown on stderr: DEBUG | INFO | WARNING | ERROR | CRITICAL (the run
    #: directory's plugstack.log keeps INFO and up whatever this says).
    level: LogLevel = LogLevel.WARNING


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


def parse_overrides(overrides: Sequence[str]) -> list[Any] | None:
    """Hydra's parsed form of ``overrides``; ``None`` where the grammar is wrong (Hydra then
    reports it itself, with its own message)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception:
        return None


def check_choices(overrides: Sequence[str]) -> None:
    """Fail early, with a suggestion, on ``backend=onxx``-style typos in group choices."""
    parsed = parse_overrides(overrides)
    if parsed is None:
        return
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


# -- configuration errors as the user's mistakes ------------------------------------------


def _plugins_with(kind: str, cls: type | None = None, key: str | None = None) -> list[str]:
    """Names of ``kind`` plugins whose config is (a subclass of) ``cls``, or has ``key``."""
    from .registry import get_registry

    names = []
    for entry in get_registry().entries(kind):
        config = entry.config
        if config is None:
            continue
        if (cls is not None and issubclass(cls, config)) or (key is not None and _has_field(config, key)):
            names.append(entry.name)
    return names


def _has_field(cls: type, key: str) -> bool:
    return key in {f.name for f in dataclasses.fields(cls)}


def unknown_option(group: str, choice: str, key: str, cls: type) -> ConfigError:
    """``app.max_tokns`` (or ``+app.max_tokens``): the group's plugin has no such option."""
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
    hint = suggestion_text(key, fields).replace(" '", f" '{group}.")
    elsewhere = [n for n in _plugins_with(group, key=key) if n != choice]
    also = ""
    if elsewhere:
        also = f" {key!r} is an option of {group} {', '.join(elsewhere)}: choose one with {group}=<name>."
    return ConfigError(
        f"{group} {choice!r} has no option {key!r}.{hint}{also} Options of {group} {choice!r}: "
        f"{', '.join(fields) or '(none)'}. (`plugstack --help` shows the chosen plugins' options and defaults.)"
    )


def unknown_keys(cfg: Any) -> list[tuple[str, str]]:
    """``(group, key)`` for each key a group's plugin does not declare."""
    from omegaconf import OmegaConf

    found = []
    for group in GROUPS:
        node = cfg.get(group)
        cls = OmegaConf.get_type(node) if node is not None else None
        if cls is not None and dataclasses.is_dataclass(cls):
            found += [(group, str(key)) for key in node.keys() if not _has_field(cls, str(key))]
    return found


def check_keys(cfg: Any) -> None:
    """Refuse keys a group's plugin does not declare (``+app.max_tokens=4`` would be ignored)."""
    from omegaconf import OmegaConf

    for group, key in unknown_keys(cfg)[:1]:
        node = cfg.get(group)
        raise unknown_option(group, str(node.get("name", "?")), key, OmegaConf.get_type(node))


def explain(exc: BaseException) -> ConfigError | None:
    """Hydra's or OmegaConf's composition error as a :class:`ConfigError` that says what to
    do (``None`` if ``exc`` is not one): no traceback, and no advice to add the key with ``+``."""
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if not isinstance(exc, HydraException | OmegaConfBaseException):
        return None
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    full_key = str(getattr(cause, "full_key", "") or "")
    group, _, key = full_key.partition(".")
    cls = getattr(cause, "object_type", None)
    unknown_key = isinstance(cause, ConfigKeyError | ConfigAttributeError)
    if unknown_key and group in GROUPS and key and dataclasses.is_dataclass(cls):
        parent, _, leaf = key.rpartition(".")
        if parent:  # a nested options dataclass (model.finetune.*): name the full key
            names = [f.name for f in dataclasses.fields(cls)]
            return ConfigError(f"{group}.{parent} has no option {leaf!r}.{suggestion_text(leaf, names)} "
                               f"Options of {group}.{parent}: {', '.join(names)}.")
        choice = next(iter(_plugins_with(group, cls=cls)), cls.__name__)
        return unknown_option(group, choice, key.split(".")[0], cls)
    message = str(cause).split("\n    full_key:")[0]
    if "Interpolation" in type(cause).__name__:
        message += r" (`${...}` in a value is an interpolation; write \${...} for the text itself)"
    if not full_key:  # e.g. Hydra's grammar: its message says what to write
        return ConfigError(f"invalid configuration: {message.strip()}")
    return ConfigError(f"invalid configuration: {full_key}: {message.strip().rstrip('.')}. "
                       f"(`plugstack --help` shows the chosen plugins' options and defaults.)")
