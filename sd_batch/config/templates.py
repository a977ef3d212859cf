"""The site's VM templates: finding them by name and summarising them for `sd templates`.

A template is a `.sf` file in a site template folder (site config `template_dirs`, default the
`job_templates/` shipped with sd-batch). Its top-level `templateDescription` string is the one
line shown to users; its TBD attributes under sfConfig are the fields a user must fill.
May import: config, errors, lang.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DescriptionError, PolicyError, SourceLocation
from ..lang import Description, load_file
from .site import TEMPLATE_NAME, SiteConfig


@dataclass(frozen=True, slots=True)
class TemplateField:
    path: str
    loc: SourceLocation | None


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    name: str
    path: Path
    description: str
    tbd_fields: tuple[TemplateField, ...]
    error: str | None = None


def template_paths(config: SiteConfig) -> dict[str, Path]:
    """Template name -> file; an earlier folder wins over a later one with the same name."""
    found: dict[str, Path] = {}
    for folder in config.template_dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.sf")):
            found.setdefault(path.stem, path)
    return found


def find_template(name: str, config: SiteConfig) -> Path:
    """The file of template NAME, or a PolicyError listing the templates that exist."""
    paths = template_paths(config)
    if TEMPLATE_NAME.fullmatch(name) and name in paths:
        return paths[name]
    offered = ", ".join(sorted(paths)) or "none"
    raise PolicyError(f"no site template named {name!r}", hint=f"templates offered: {offered}")


def load_template(
    path: Path,
    config: SiteConfig,
    *,
    complete: bool = False,
    extra_includes: Sequence[Path] = (),
    properties: Mapping[str, str] | None = None,
) -> Description:
    include_dirs = [*extra_includes, *config.include_dirs, *config.template_dirs]
    props = dict(config.properties)
    props.update(properties or {})
    return load_file(path, include_dirs=include_dirs, properties=props, complete=complete)


def describe_templates(config: SiteConfig) -> list[TemplateInfo]:
    infos = []
    for name, path in template_paths(config).items():
        try:
            description = load_template(path, config)
        except DescriptionError as exc:
            infos.append(TemplateInfo(name, path, "", (), error=exc.headline()))
            continue
        text = description.root.get("templateDescription")
        fields = tuple(TemplateField(p, loc) for p, loc in description.tbds)
        infos.append(TemplateInfo(name, path, text if isinstance(text, str) else "", fields))
    return infos
