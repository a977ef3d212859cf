"""`sd validate`, `sd render`, `sd templates`: the language commands (no hypervisor involved)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from ..errors import BudgetExceeded, DescriptionError, DescriptionErrors, UsageError
from ..lang import Budgets, Component, Description, load_file, parse_file
from ..lang.budget import BUDGET_NAMES
from . import properties, site_config
from .environment import Environment

if TYPE_CHECKING:
    from ..config.site import SiteConfig


def _budgets(args: argparse.Namespace, config: SiteConfig) -> Budgets:
    """sd validate's generous defaults, or the site's for jobs (--job-budgets), each NAME=N of
    --budget applied on top."""
    budgets = config.policy.budgets if args.job_budgets else Budgets(origin="--budget")
    changes: dict[str, Any] = {}
    for item in args.budgets:
        name, sep, text = item.partition("=")
        if not sep or name not in BUDGET_NAMES:
            raise UsageError(
                f"--budget {item}: expected NAME=N", hint=f"names: {', '.join(BUDGET_NAMES)}"
            )
        try:
            changes[name] = float(text) if name == "seconds" else int(text)
        except ValueError:
            raise UsageError(f"--budget {item}: {text!r} is not a number") from None
    try:
        return dataclasses.replace(budgets, **changes)
    except ValueError as exc:
        raise UsageError(f"--budget: {exc}") from None


def _load(args: argparse.Namespace, env: Environment, *, complete: bool) -> Description:
    config = site_config(args, env)
    include_dirs = [*args.include_dirs, *config.include_dirs, *config.template_dirs]
    return load_file(
        args.file,
        include_dirs=include_dirs,
        environ=env.environ,
        properties=properties(args, config),
        complete=complete,
        budgets=_budgets(args, config),
    )


def _count(component: Component) -> tuple[int, int, int]:
    """(components, VMs, attributes) under COMPONENT, itself included."""
    components, vms, attributes = 1, int(component.get("sfClass") == "sd_batch.VM"), 0
    for _name, value in component.items():
        attributes += 1
        if isinstance(value, Component):
            c, v, a = _count(value)
            components, vms, attributes = components + c, vms + v, attributes + a
    return components, vms, attributes


def _error_data(exc: DescriptionError) -> list[dict[str, Any]]:
    errors = exc.errors if isinstance(exc, DescriptionErrors) else (exc,)
    out = []
    for error in errors:
        item: dict[str, Any] = {"message": error.message, "kind": type(error).__name__}
        if error.loc is not None:
            item.update(file=error.loc.file, line=error.loc.line, column=error.loc.column)
        if error.hint:
            item["hint"] = error.hint
        if error.path:
            item["path"] = error.path
        if isinstance(error, BudgetExceeded):
            item["budget"] = error.budget
        out.append(item)
    return out


def validate(args: argparse.Namespace, env: Environment) -> int:
    try:
        if args.syntax_only:
            parse_file(args.file, budgets=_budgets(args, site_config(args, env)))
            if args.json:
                print(
                    json.dumps({"file": args.file, "valid": True, "syntax_only": True}),
                    file=env.stdout,
                )
            else:
                print(f"{args.file}: syntax OK", file=env.stdout)
            return 0
        description = _load(args, env, complete=not args.allow_tbd)
    except DescriptionError as exc:
        if not args.json:
            raise
        data = {"file": args.file, "valid": False, "errors": _error_data(exc)}
        if isinstance(exc, DescriptionErrors) and exc.truncated:
            data["more_errors"] = True  # the errors budget stopped resolution: there are more
        print(json.dumps(data), file=env.stdout)
        return exc.exit_code
    warnings = [w.headline() for w in description.warnings]
    tbds = [{"path": p, "where": str(loc) if loc else None} for p, loc in description.tbds]
    if description.sfconfig is not None:
        components, vms, attributes = _count(description.sfconfig)
        what = f"sfConfig: {components} components ({vms} VMs), {attributes} attributes"
    else:
        prototypes = sum(1 for _ in description.root.children())
        what = f"no sfConfig: a library of {prototypes} prototypes"
    if args.json:
        print(
            json.dumps(
                {
                    "file": args.file,
                    "valid": True,
                    "summary": what,
                    "files": list(description.files),
                    "warnings": warnings,
                    "tbd": tbds,
                }
            ),
            file=env.stdout,
        )
        return 0
    extras = [f"{len(description.files)} file{'s' if len(description.files) > 1 else ''}"]
    if tbds:
        extras.append(f"{len(tbds)} TBD: " + ", ".join(path for path, _loc in description.tbds))
    if warnings:
        extras.append(f"{len(warnings)} warning{'s' if len(warnings) > 1 else ''}")
    print(f"{args.file}: valid; {what}; {'; '.join(extras)}", file=env.stdout)
    for warning in warnings:
        print(f"sd: warning: {warning} (in a prototype sfConfig does not use)", file=env.stderr)
    return 0


def render(args: argparse.Namespace, env: Environment) -> int:
    from ..lang.render import render_attributes, render_description, to_data

    description = _load(args, env, complete=not args.allow_tbd)
    tree = description.sfconfig if description.sfconfig is not None else description.root
    try:
        if args.json:
            text = json.dumps(to_data(tree), indent=2) + "\n"
        elif description.sfconfig is not None:
            text = render_description("sfConfig", description.sfconfig)
        else:
            text = "\n".join(render_attributes(description.root)) + "\n"
    except RecursionError:
        raise DescriptionError(
            f"{args.file}: too deeply nested to print", hint="flatten its nesting"
        ) from None
    env.stdout.write(text)
    return 0


def templates(args: argparse.Namespace, env: Environment) -> int:
    from ..config.templates import describe_templates

    config = site_config(args, env)
    infos = describe_templates(config)
    if args.json:
        data = [
            {
                "name": i.name,
                "file": str(i.path),
                "description": i.description,
                "tbd": [
                    {"path": f.path, "where": str(f.loc) if f.loc else None} for f in i.tbd_fields
                ],
                "error": i.error,
            }
            for i in infos
        ]
        print(json.dumps(data, indent=2), file=env.stdout)
        return 0
    if not infos:
        folders = ", ".join(str(d) for d in config.template_dirs)
        print(f"no templates in {folders}", file=env.stdout)
        return 0
    width = max(len(i.name) for i in infos)
    for info in infos:
        if info.error:
            line = f"BROKEN: {info.error}"
        else:
            fields = ", ".join(f.path.removeprefix("sfConfig:") for f in info.tbd_fields)
            line = info.description + (f"  [to fill: {fields}]" if fields else "")
        print(f"{info.name:<{width}}  {line}", file=env.stdout)
    return 0
