"""The privileged helper: the one narrow way an unprivileged job reaches libvirt.

HTCondor runs our hooks and the runner as the job's slot user, who must never get libvirt's
system socket (any domain with any host disk would be theirs). Instead the site allows exactly
this command through sudo (`condor_hooks/helper`, a sudoers drop-in from `scripts/setup-host`):

    helper prepare JOB_ID     stdin: the job's input disk (a tar)   stdout: one JSON line
    helper run JOB_ID         stdout: the result tar                exit 0, or see below
    helper cleanup JOB_ID     stdout: one JSON line (idempotent)
    helper probe              stdout: one JSON line (for the startd cron)
    helper reap               stdout: one JSON line: what the reaper removed (startd cron)

The caller is who sudo says (`SUDO_UID`), never an argument: every VM is keyed by (caller uid,
job id), so a user can neither name nor touch another user's job. Arguments are validated; the
description is resolved here, from the job's own input, against the site's config and limits.
`run` exits 75 (EX_TEMPFAIL) for host problems, 170/171 when the VM timed out / stopped without a
result (`errors.VMFailed`), 1 for anything else, with a message on stderr.
May import: config, errors, jobs, pools, reaper, templates, json, os, sys.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import SiteConfig, load_config
from .errors import Disposition, SdError, VMFailed

EX_TEMPFAIL = 75
USAGE = "usage: helper {prepare,run,cleanup} JOB_ID | helper {probe,reap}"


def caller_uid(environ: dict[str, str] | None = None) -> int:
    """The uid we act for: sudo's SUDO_UID when we run as root through sudo, else our own."""
    env = os.environ if environ is None else environ
    if os.geteuid() == 0 and env.get("SUDO_UID", "").isdigit():
        return int(env["SUDO_UID"])
    return os.getuid()


def site_config() -> SiteConfig:
    """The site config file, then the HTCondor knobs SMARTDOMAINS_HYPERVISOR_URI and
    SMARTDOMAINS_TEMPLATE_DIRS where this machine has an HTCondor configuration.

    Only configuration root controls counts here: sudo resets the caller's environment, so a
    job cannot point the helper at its own config, URI or templates.
    """
    config = load_config()
    if not (os.environ.get("CONDOR_CONFIG") or Path("/etc/condor/condor_config").exists()):
        return config
    from .jobad import condor_param

    changes: dict[str, Any] = {}
    uri = condor_param("SMARTDOMAINS_HYPERVISOR_URI")
    if uri:
        changes["default_uri"] = uri.strip()
    folders = condor_param("SMARTDOMAINS_TEMPLATE_DIRS")
    if folders:
        changes["template_dirs"] = tuple(Path(f) for f in folders.replace(",", " ").split())
    return dataclasses.replace(config, **changes)


def _reply(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _failure(exc: SdError) -> dict[str, Any]:
    text = exc.headline() if hasattr(exc, "headline") else str(exc)
    return {"ok": False, "disposition": exc.disposition.value, "message": text,
            "error": type(exc).__name__}


def main(argv: Sequence[str] | None = None) -> int:
    from . import jobs

    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="sd-batch helper: %(levelname)s %(message)s")
    if args == ["probe"]:
        return _probe()
    if args == ["reap"]:
        return _reap()
    if len(args) != 2 or args[0] not in ("prepare", "run", "cleanup"):
        print(USAGE, file=sys.stderr)
        return 2
    action, job_id = args
    try:
        key = jobs.JobKey(caller_uid(), job_id)
        config = site_config()
        if action == "prepare":
            prepared = jobs.prepare(config, key, sys.stdin.buffer)
            _reply({"ok": True, "domain": prepared.domain, "uri": prepared.uri,
                    "memory_mib": prepared.memory_mib, "vcpus": prepared.vcpus,
                    "description": prepared.description})
        elif action == "cleanup":
            _reply({"ok": True, "removed": jobs.cleanup(config, key)})
        else:
            jobs.run(config, key, sys.stdout.buffer, limits=jobs.JobLimits.of(config.policy),
                     install_signals=jobs.default_signal_installer)
            sys.stdout.buffer.flush()
        return 0
    except SdError as exc:
        if action == "run":
            print(f"sd-batch: {exc}", file=sys.stderr)
            if isinstance(exc, VMFailed):
                return exc.run_exit  # the runner exits with it: OnExitHold holds the job
            return EX_TEMPFAIL if exc.disposition is Disposition.REQUEUE else 1
        _reply(_failure(exc))
        return 1


def _probe() -> int:
    """Can this node run jobs? Hypervisor reachable, templates resolvable, guest image there."""
    from .hypervisor import connect
    from .templates import describe_templates

    config = site_config()
    report: dict[str, Any] = {"ok": True, "templates": [], "free_memory_mib": None, "reason": ""}
    try:
        with connect(config.default_uri, attempts=2, max_delay=3.0) as hv:
            capacity = hv.host_capacity()
        report["free_memory_mib"] = capacity.free_memory_mib or capacity.memory_mib
        infos = describe_templates(config)
        report["templates"] = [i.name for i in infos if i.error is None]
        broken = [f"{i.name}: {i.error}" for i in infos if i.error]
        kernel = config.image_dir / "minimal" / "vmlinux"
        if not kernel.is_file():
            report.update(ok=False, reason=f"guest image {kernel} missing (scripts/build-guest)")
        elif not report["templates"]:
            report.update(ok=False, reason="no usable template: " + "; ".join(broken))
    except SdError as exc:
        report.update(ok=False, reason=str(exc))
    _reply(report)
    return 0


def _reap() -> int:
    """Remove what dead jobs and interrupted pools left (`sd_batch.reaper`); it acts only on
    what no live process owns, so any caller may trigger it."""
    from .reaper import reap

    try:
        outcomes = reap(site_config())
    except SdError as exc:
        _reply(_failure(exc))
        return 1
    _reply({"ok": all(not o.error for o in outcomes),
            "actions": [o.line(dry_run=False) for o in outcomes]})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
