"""The privileged helper: the one narrow way an unprivileged job reaches libvirt.

HTCondor runs our hooks and the runner as the job's slot user, who must never get libvirt's
system socket (any domain with any host disk would be theirs). Two doors lead here, and both
call `perform`, the one implementation of the five actions:

- the helper service (`sd_batch.helper.service`, a root daemon on a unix socket only the slot
  group may open; the caller's uid is the kernel's SO_PEERCRED), which the hooks use when it
  runs, so a hook costs one interpreter, not two;
- this module as a command, through sudo (`condor_hooks/helper`, a sudoers drop-in from
  `scripts/setup-host`), the fallback when no service answers:

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
May import: config, errors, hypervisor, condor.jobad, batch (jobs, key), deploy.reaper, ledger,
vm, stdlib.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..config.site import SiteConfig, load_config
from ..errors import VM_REQUEUE_EXIT, Disposition, SdError, VMFailed, clipped

if TYPE_CHECKING:
    from ..hypervisor.connections import Connections
    from ..ledger.store import Ledger
    from .domains import WarmTaker

EX_TEMPFAIL = 75
log = logging.getLogger("sd_batch.helper")

USAGE = "usage: helper {prepare,run,cleanup} JOB_ID | helper {probe,reap}"


class Action(enum.StrEnum):
    """The five actions of the privileged side; the first three name a job, the others none."""

    PREPARE = "prepare"
    RUN = "run"
    CLEANUP = "cleanup"
    PROBE = "probe"
    REAP = "reap"
    RESTORE = "restore"  # after prepare: the job's checkpoint (issue 18) on DATA_IN

    @property
    def needs_job(self) -> bool:
        return self in (Action.PREPARE, Action.RUN, Action.CLEANUP, Action.RESTORE)

    @classmethod
    def named(cls, text: object) -> Action | None:
        """The action spelt TEXT (from a command line or a request), or None."""
        if not isinstance(text, str):
            return None
        try:
            return cls(text)
        except ValueError:
            return None


def caller_uid(environ: dict[str, str] | None = None) -> int:
    """The uid we act for: sudo's SUDO_UID when we run as root through sudo, else our own."""
    env = os.environ if environ is None else environ
    if os.geteuid() == 0 and env.get("SUDO_UID", "").isdigit():
        return int(env["SUDO_UID"])
    return os.getuid()


def site_config() -> SiteConfig:
    """The site config file, then the HTCondor knobs SMARTDOMAINS_HYPERVISOR_URI and
    SMARTDOMAINS_TEMPLATE_DIRS where this machine has an HTCondor configuration.

    Only configuration root controls counts here: sudo resets the caller's environment, and
    the service's is root's own, so a job cannot point us at its own config, URI or templates.
    """
    config = load_config()
    if not (os.environ.get("CONDOR_CONFIG") or Path("/etc/condor/condor_config").exists()):
        return config
    from ..condor.jobad import condor_param

    changes: dict[str, Any] = {}
    uri = condor_param("SMARTDOMAINS_HYPERVISOR_URI")
    if uri:
        changes["default_uri"] = uri.strip()
    folders = condor_param("SMARTDOMAINS_TEMPLATE_DIRS")
    if folders:
        changes["template_dirs"] = tuple(Path(f) for f in folders.replace(",", " ").split())
    return dataclasses.replace(config, **changes)


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """What an action came to: the helper's exit status and its JSON reply (None for a `run`
    whose result tar went out; a failed `run`'s reply carries `exit` and the `message`)."""

    code: int
    reply: dict[str, Any] | None


def perform(
    action: Action,
    job_id: str | None,
    uid: int,
    *,
    data_in: BinaryIO | None = None,
    data_out: BinaryIO | None = None,
    connections: Connections | None = None,
    runner_pid: int | None = None,
    install_signals: Callable[[Callable[[], None]], None] | None = None,
    ready: Callable[[], None] | None = None,
    install_evict: Callable[[Callable[[], None]], None] | None = None,
    warm: WarmTaker | None = None,
) -> Answer:
    """Carry out ACTION for UID (who the door vouched for) on JOB_ID.

    `prepare` reads the input disk from DATA_IN, `run` writes the result tar to DATA_OUT and
    records RUNNER_PID (None: this process) as the process whose life is the job's (the
    reaper's sign of life); INSTALL_SIGNALS receives the callback that destroys the VM at once;
    READY is called just before the VM is started or resumed (`jobs.run`); `prepare` may take
    one of WARM's paused VMs (the helper service's; the sudo helper has none).
    CONNECTIONS (None: new ones) are the hypervisor connections to use.
    """
    from . import jobs
    from .key import JobKey, JobLimits

    if action is Action.PROBE:
        return Answer(0, probe())
    if action is Action.REAP:
        return reap_now(connections)
    try:
        key = JobKey(uid, str(job_id))
        config = site_config()
        if action is Action.PREPARE:
            if data_in is None:
                raise ValueError("perform(prepare) needs DATA_IN")  # the door's mistake
            prepared = jobs.prepare(config, key, data_in, connections=connections, warm=warm)
            return Answer(
                0,
                {
                    "ok": True,
                    "domain": prepared.domain,
                    "uri": prepared.uri,
                    "memory_mib": prepared.memory_mib,
                    "vcpus": prepared.vcpus,
                    "description": prepared.description,
                },
            )
        if action is Action.RESTORE:
            if data_in is None:
                raise ValueError("perform(restore) needs DATA_IN")  # the door's mistake
            why = jobs.restore_checkpoint(config, key, data_in, connections=connections)
            return Answer(0, {"ok": True, "restored": why is None, "reason": why or ""})
        if action is Action.CLEANUP:
            return Answer(
                0, {"ok": True, "removed": jobs.cleanup(config, key, connections=connections)}
            )
        if data_out is None:
            raise ValueError("perform(run) needs DATA_OUT")  # the door's mistake
        evicted = jobs.run(
            config,
            key,
            data_out,
            limits=JobLimits.of(config.policy),
            connections=connections,
            install_signals=install_signals,
            runner_pid=runner_pid,
            ready=ready,
            install_evict=install_evict,
        )
        if evicted is not None:
            return Answer(
                VM_REQUEUE_EXIT,
                {
                    "ok": False,
                    "exit": VM_REQUEUE_EXIT,
                    "evicted": True,
                    "checkpoint": str(evicted.path or ""),
                    "size": evicted.size,
                    "message": evicted.reason or f"the VM was saved ({evicted.size} bytes)",
                    "disposition": Disposition.REQUEUE.value,
                },
            )
        return Answer(0, None)
    except SdError as exc:
        if action is not Action.RUN:
            return Answer(1, failure(exc))
        code = run_exit(exc)
        return Answer(code, {**failure(exc), "exit": code, "message": clipped(str(exc))})


def start_paused(job_id: str, uid: int, connections: Connections | None = None) -> bool:
    """After a prepare that succeeded: make UID's job VM ready, paused (`jobs.start_paused`),
    so the runner's `run` only resumes it. The helper service calls it once its prepare reply
    went out; the sudo helper does not (the runner's `run` boots the VM there)."""
    from . import jobs
    from .key import JobKey

    try:
        key = JobKey(uid, job_id)
        config = site_config()
    except SdError:
        return False
    return jobs.start_paused(config, key, connections=connections)


def hold_ledger() -> Ledger | None:
    """The site's ledger, opened to be left idle for a long-lived process's life (the helper
    service's), or None when it cannot be opened now (each request then says why).

    SQLite checkpoints a WAL database when its last connection closes: with every request's
    own connection the last one, every request ended in a checkpoint (the ledger fsynced, its
    WAL reset), and on a busy disk that doubled a PREPARE_JOB (74 -> 29 ms median in the
    service, at load 3). With this one open, a request's close is only a close; SQLite still
    checkpoints as the WAL grows (every 1000 pages, in a committing request), and every commit
    is synced as before. Nothing is read or cached through it. It is the ledger of the site
    config as it is now: a later change of state_dir only forgoes the saving."""
    from ..ledger.store import Ledger

    try:
        return Ledger.for_site(site_config())
    except SdError as exc:
        log.warning("the ledger is not held open (%s): each request opens its own", exc)
        return None


def run_exit(exc: SdError) -> int:
    """The exit status a failed `run` ends with (the runner exits with it or maps it)."""
    if isinstance(exc, VMFailed):
        return exc.run_exit  # the runner exits with it: OnExitHold holds the job
    return EX_TEMPFAIL if exc.disposition is Disposition.REQUEUE else 1


def failure(exc: SdError) -> dict[str, Any]:
    text = clipped(exc.headline() if hasattr(exc, "headline") else str(exc))
    return {
        "ok": False,
        "disposition": exc.disposition.value,
        "message": text,
        "error": type(exc).__name__,
    }


def probe() -> dict[str, Any]:
    """Can this node run jobs? Hypervisor reachable, templates resolvable, guest image there.

    A connection of its own, short on retries (the startd cron's patience is short), so it
    sees the daemon as it is now."""
    from ..config.templates import describe_templates
    from ..hypervisor.connection import connect

    config = site_config()
    report: dict[str, Any] = {
        "ok": True,
        "templates": [],
        "free_memory_mib": None,
        "reason": "",
        "needs": {},
        "output_disk_kib": config.policy.output_disk_bytes >> 10,
    }
    try:
        with connect(config.default_uri, attempts=2, max_delay=3.0) as hv:
            capacity = hv.host_capacity()
            infos = describe_templates(config)
            report["needs"] = template_needs(config, [i for i in infos if i.error is None], hv)
        report["free_memory_mib"] = capacity.free_memory_mib or capacity.memory_mib
        report["templates"] = [i.name for i in infos if i.error is None]
        broken = [f"{i.name}: {i.error}" for i in infos if i.error]
        kernel = config.image_dir / "minimal" / "vmlinux"
        if not kernel.is_file():
            report.update(ok=False, reason=f"guest image {kernel} missing (scripts/build-guest)")
        elif not report["templates"]:
            report.update(ok=False, reason="no usable template: " + "; ".join(broken))
    except SdError as exc:
        report.update(ok=False, reason=str(exc))
    return report


def template_needs(config: SiteConfig, infos: Sequence[Any], hv: Any) -> dict[str, Any]:
    """Template name -> {memory_mib, vcpus, disk_kib}: what a job naming it needs at least, for
    the startd to publish (`SmartDomainsTemplateMemory`...) and the schedd transform to make
    the job's requests. Templates that are not one VM (pools) are left out: jobs cannot name
    them. The disk is the output disk plus every blank disk and overlay at full size."""
    from ..config.templates import load_template
    from ..deploy.engine import disk_growth
    from ..vm.spec import vm_spec

    needs: dict[str, Any] = {}
    for info in infos:
        try:
            vm = load_template(info.path, config).sfconfig
            if vm is None or vm.get("sfClass") != "sd_batch.VM":
                continue
            spec = vm_spec(vm, default_name="sd-job-template")
            growth = disk_growth(spec, config.policy.output_disk_bytes, config.image_dir, hv)
        except SdError as exc:
            log.warning("template %s: its needs cannot be published: %s", info.name, exc)
            continue
        needs[info.name] = {
            "memory_mib": spec.memory_mib,
            "vcpus": spec.vcpus,
            "disk_kib": -(-growth.total // 1024),
        }
    return needs


def reap_now(connections: Connections | None = None) -> Answer:
    """Remove what dead jobs and interrupted pools left (`sd_batch.deploy.reaper`); it acts only on
    what no live process owns, so any caller may trigger it."""
    from ..deploy.reaper import reap

    try:
        outcomes = reap(site_config(), connections=connections)
    except SdError as exc:
        return Answer(1, failure(exc))
    return Answer(
        0,
        {
            "ok": all(not o.error for o in outcomes),
            "actions": [o.line(dry_run=False) for o in outcomes],
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="sd-batch helper: %(levelname)s %(message)s",
    )
    action = Action.named(args[0]) if args else None
    job_id = args[1] if len(args) == 2 else None
    if action is None or len(args) != (2 if action.needs_job else 1):
        print(USAGE, file=sys.stderr)
        return 2
    from .jobs import default_signal_installer

    answer = perform(
        action,
        job_id,
        caller_uid(),
        data_in=sys.stdin.buffer,
        data_out=sys.stdout.buffer,
        install_signals=default_signal_installer if action is Action.RUN else None,
    )
    if action is not Action.RUN:
        sys.stdout.write(json.dumps(answer.reply) + "\n")
        sys.stdout.flush()
    elif answer.reply is not None:
        print(f"sd-batch: {answer.reply['message']}", file=sys.stderr)
    else:
        sys.stdout.buffer.flush()
    return answer.code


if __name__ == "__main__":
    sys.exit(main())
