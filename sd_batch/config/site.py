"""Site configuration and the places sd-batch keeps things (XDG through pyxdg).

A site config is a TOML file (`/etc/sd-batch/site.toml`, or `$XDG_CONFIG_HOME/sd-batch/site.toml`,
or the file named by `SD_BATCH_CONFIG`). Every knob has a safe default, so a fresh machine works
without one. `parse_config` is pure; `load_config` is the one place that reads the file.
May import: data (TEMPLATES_DIR), errors, placement.policy (Policy), vm.site_policy
(SitePolicy), pyxdg, tomllib.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import TEMPLATES_DIR
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..placement.policy import Policy
    from ..vm.site_policy import SitePolicy

PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: Templates shipped with sd-batch (package data); the built-in default template folder.
BUILTIN_TEMPLATE_DIR = TEMPLATES_DIR
SYSTEM_CONFIG = Path("/etc/sd-batch/site.toml")
DEFAULT_URI = "qemu:///system"
#: A site template's bare name, as a job's SDVMDescription names it (`[jobs] warm`).
TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: [placement] when a site sets nothing: OpenStack Nova's initial allocation ratios (4 vCPUs
#: per host CPU; memory and disk not overcommitted), no memory reserved, no VM limit.
DEFAULT_CPU_OVERCOMMIT = 4.0


def default_placement() -> Policy:
    """Imported late, from its own small module: reading a config does not load placement."""
    from ..placement.policy import Policy

    return Policy(cpu_overcommit=DEFAULT_CPU_OVERCOMMIT)


def default_policy() -> SitePolicy:
    """[policy] when a site sets nothing: `SitePolicy`'s safe defaults (imported late, too)."""
    from ..vm.site_policy import SitePolicy

    return SitePolicy()


def default_state_dir() -> Path:
    """Where the ledger lives: root uses /var/lib/sd-batch, users their XDG state folder."""
    if os.geteuid() == 0:
        return Path("/var/lib/sd-batch")
    from xdg import BaseDirectory  # imported here: only commands that need state pay for it

    return Path(BaseDirectory.xdg_state_home) / "sd-batch"


def default_image_dir() -> Path:
    """The site image folder: guest kernels, initramfs and base disks."""
    if os.geteuid() == 0:
        return Path("/var/lib/sd-batch/images")
    from xdg import BaseDirectory

    return Path(BaseDirectory.xdg_data_home) / "sd-batch" / "images"


def default_cache_dir() -> Path:
    """What can be fetched again (the guest builders' .debs): /var/cache/sd-batch for root,
    the XDG cache folder otherwise."""
    if os.geteuid() == 0:
        return Path("/var/cache/sd-batch")
    from xdg import BaseDirectory

    return Path(BaseDirectory.xdg_cache_home) / "sd-batch"


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """Everything a site admin can set. Defaults are safe for a single worker node."""

    template_dirs: tuple[Path, ...] = (BUILTIN_TEMPLATE_DIR,)
    include_dirs: tuple[Path, ...] = ()
    image_dir: Path = field(default_factory=default_image_dir)
    state_dir: Path = field(default_factory=default_state_dir)
    default_uri: str = DEFAULT_URI
    #: Site host names -> libvirt URIs, for `sd start HOST ...` (`localhost` is always known).
    hosts: Mapping[str, str] = field(default_factory=dict)
    #: Site properties, read by descriptions as `PROPERTY name` (e.g. `sd.flavour = "qemu"`).
    properties: Mapping[str, str] = field(default_factory=dict)
    #: [placement]: overcommit ratios and limits every Scheduler works within.
    placement: Policy = field(default_factory=default_placement)
    #: [placement.tags]: site host name (or URI) -> the tags its VMs may require.
    host_tags: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: [policy]: what a batch job's VM may be (limits, overrides, networks, VMs per user/host).
    policy: SitePolicy = field(default_factory=default_policy)
    #: [jobs] warm: site templates the helper service keeps one VM of started, paused, ahead
    #: of the jobs naming them (`batch.warm`); each costs a paused QEMU and its memory.
    warm_templates: tuple[str, ...] = ()

    def uri_for(self, host: str) -> str:
        """A libvirt URI for HOST: a URI as it is, a mapped site host name, or `localhost`."""
        if "://" in host:
            return host
        if host in self.hosts:
            return self.hosts[host]
        if host == "localhost":
            return self.default_uri
        known = ", ".join(sorted({"localhost", *self.hosts})) or "localhost"
        raise ConfigError(
            f"unknown host {host!r}",
            hint="use a libvirt URI (qemu:///system) or a host from the site config [hosts]: "
            + known,
        )


def parse_config(data: Mapping[str, Any], *, origin: str = "<config>") -> SiteConfig:
    """Build a SiteConfig from parsed TOML, refusing unknown keys (typos must not pass silently)."""
    known = {
        "template_dirs",
        "include_dirs",
        "image_dir",
        "state_dir",
        "default_uri",
        "hosts",
        "properties",
        "placement",
        "policy",
        "jobs",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{origin}: unknown setting {unknown[0]!r}", hint=f"known: {', '.join(sorted(known))}"
        )
    kwargs: dict[str, Any] = {}
    for key in ("template_dirs", "include_dirs"):
        if key in data:
            value = data[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{origin}: {key} must be a list of folder paths")
            kwargs[key] = tuple(Path(v) for v in value)
    for key in ("image_dir", "state_dir"):
        if key in data:
            if not isinstance(data[key], str):
                raise ConfigError(f"{origin}: {key} must be a folder path")
            kwargs[key] = Path(data[key])
    if "default_uri" in data:
        if not isinstance(data["default_uri"], str):
            raise ConfigError(f"{origin}: default_uri must be a libvirt URI string")
        kwargs["default_uri"] = data["default_uri"]
    if "hosts" in data:
        hosts = data["hosts"]
        if not isinstance(hosts, dict) or not all(isinstance(v, str) for v in hosts.values()):
            raise ConfigError(f"{origin}: [hosts] maps host names to libvirt URI strings")
        kwargs["hosts"] = dict(hosts)
    if "properties" in data:
        props = data["properties"]
        if not isinstance(props, dict):
            raise ConfigError(f"{origin}: [properties] maps names to values")
        kwargs["properties"] = {
            k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in props.items()
        }
    if "placement" in data:
        kwargs["placement"], kwargs["host_tags"] = _placement(data["placement"], origin)
    if "policy" in data:
        from ..vm.site_policy import policy_from_table

        kwargs["policy"] = policy_from_table(data["policy"], origin)
    if "jobs" in data:
        kwargs["warm_templates"] = _jobs(data["jobs"], origin)
    return SiteConfig(**kwargs)


def _jobs(table: Any, origin: str) -> tuple[str, ...]:
    """[jobs]: `warm`, the site templates to keep a paused VM of (bare names, each once)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: [jobs] must be a table")
    unknown = sorted(set(table) - {"warm"})
    if unknown:
        raise ConfigError(f"{origin}: unknown setting [jobs] {unknown[0]!r}", hint="known: warm")
    warm = table.get("warm", [])
    if not isinstance(warm, list) or not all(
        isinstance(name, str) and TEMPLATE_NAME.fullmatch(name) for name in warm
    ):
        raise ConfigError(
            f"{origin}: [jobs] warm must be a list of site template names",
            hint='for example warm = ["minimal"] (names, not .sf paths)',
        )
    return tuple(dict.fromkeys(warm))


_RATIOS = ("cpu_overcommit", "memory_overcommit", "disk_overcommit")


def _placement(table: Any, origin: str) -> tuple[Policy, dict[str, frozenset[str]]]:
    """[placement]: Nova-like allocation ratios, memory kept for the host, VMs per host, tags."""
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: [placement] must be a table")
    known = (*_RATIOS, "reserved_memory_mib", "max_vms_per_host", "tags")
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(
            f"{origin}: unknown [placement] setting {unknown[0]!r}",
            hint=f"known: {', '.join(known)}",
        )
    from ..placement.policy import Policy

    values: dict[str, Any] = {"cpu_overcommit": DEFAULT_CPU_OVERCOMMIT}
    for key in _RATIOS:
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{origin}: [placement] {key} must be a number above 0")
            values[key] = float(value)
    for key, least in (("reserved_memory_mib", 0), ("max_vms_per_host", 1)):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{origin}: [placement] {key} must be a whole number >= {least}")
            values[key] = value
    tags = table.get("tags", {})
    if not isinstance(tags, dict) or not all(
        isinstance(v, list) and all(isinstance(t, str) for t in v) for v in tags.values()
    ):
        raise ConfigError(f"{origin}: [placement.tags] maps host names to lists of tags")
    return Policy(**values), {host: frozenset(v) for host, v in tags.items()}


def config_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file in force: SD_BATCH_CONFIG, else the user's, else the system one."""
    env = os.environ if environ is None else environ
    if env.get("SD_BATCH_CONFIG"):
        return Path(env["SD_BATCH_CONFIG"])
    xdg = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    user = Path(xdg) / "sd-batch" / "site.toml"
    for candidate in (user, SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None = None) -> SiteConfig:
    """Read the site config file (the one file read of this module); defaults when none exists."""
    path = path if path is not None else config_path()
    if path is None:
        return SiteConfig()
    import tomllib  # only when a config file exists

    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"site config {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, origin=str(path))
