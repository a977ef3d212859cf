"""The `sd` argument parser: one small function per family of subcommands, each subcommand
naming the function that runs it (imported only then, so `sd validate` does not pay for
libvirt or the HTCondor bindings).

May import: errors, cli.environment, cli.handlers, argparse.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..errors import UsageError
from . import handlers
from .environment import Environment

#: What a subcommand runs: its parsed arguments and environment in, its exit code out.
Handler = Callable[[argparse.Namespace, Environment], int]

EPILOG = """\
examples:
  sd validate job_templates/minimal.sf          check a description, one-line summary
  sd render job_templates/pool.sf --json        the resolved sfConfig tree as JSON
  sd templates                                  the site's VM templates and their TBD fields
  sd start localhost lab job_templates/pool.sf  start pool "lab" (sfStart localhost lab pool.sf)
  sd status                                     pools and jobs, each VM's state
  sd plan job_templates/qa-testbed.sf --hosts inventory.toml
                                                where a Scheduler would place the VMs
  sd watch localhost lab                        move VMs off hosts that stop answering
  sd terminate localhost lab                    stop it and remove its VMs and disks
  sd run examples/hello.sub                     a job through the HTCondor hooks, in a VM
  sd reap --dry-run                             what crashed runs left, and why
  sd web                                        the template web form on 127.0.0.1:8080
  sd admin setup-host                           set this host up as a worker (root)

Descriptions are written in the SmartFrog language; see docs/language.md.
Exit codes: 0 ok, 2 usage, 3 site config, 4 description, 5 policy, 6 hypervisor,
7 state ledger, 8 deployment (rolled back).
"""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so `main` owns every exit code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}", hint=f"see {self.prog} --help")


_Subcommands = argparse._SubParsersAction  # what add_subparsers returns


def _command(sub: _Subcommands[_Parser], name: str, handler: Handler, **options: Any) -> _Parser:
    """Subcommand NAME of SUB (OPTIONS: its help, description...), which HANDLER runs."""
    parser = sub.add_parser(name, **options)
    parser.set_defaults(handler=handler)
    return parser


def _add_include_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-I",
        "--include",
        dest="include_dirs",
        action="append",
        default=[],
        metavar="DIR",
        help="also search DIR for #include files (before the site templates and our library)",
    )
    parser.add_argument(
        "-D",
        "--property",
        dest="properties",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a property that descriptions read with PROPERTY NAME",
    )


def _add_description_file(
    parser: argparse.ArgumentParser, file_help: str = "a .sf description"
) -> None:
    """FILE and where its #includes and PROPERTYs come from: every command that reads one."""
    parser.add_argument("file", metavar="FILE", help=file_help)
    _add_include_options(parser)


def _add_pool_address(parser: argparse.ArgumentParser, name_help: str | None = None) -> None:
    """HOST NAME: a pool, as the seed's sfStart and sfTerminate name it."""
    parser.add_argument("host", metavar="HOST")
    parser.add_argument("name", metavar="NAME", help=name_help)


def _add_resolution_options(parser: argparse.ArgumentParser, *, allow_tbd: str, json: str) -> None:
    """How `validate` and `render` resolve FILE: TBDs allowed or not, JSON out, the budgets."""
    parser.add_argument("--allow-tbd", action="store_true", help=allow_tbd)
    parser.add_argument("--json", action="store_true", help=json)
    _add_budget_options(parser)


def _add_budget_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--budget",
        dest="budgets",
        action="append",
        default=[],
        metavar="NAME=N",
        help="raise (or lower) one of the budgets that bound a description's cost: components, "
        "attributes, value_length, value_total, includes, depth, errors, source_bytes, seconds",
    )
    parser.add_argument(
        "--job-budgets",
        action="store_true",
        help="use the budgets the site's [policy] gives jobs' descriptions",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sd",
        description="SmartDomains for batch: VMs for HTCondor jobs and pools, described in the "
        "SmartFrog language and run through libvirt.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="site config file (default: "
        "$SD_BATCH_CONFIG, ~/.config/sd-batch/site.toml, /etc/sd-batch/site.toml)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_language(sub)
    _add_pools(sub)
    _add_placement(sub)
    _add_images(sub)
    _add_run(sub)
    _add_reap(sub)
    _add_web(sub)
    _add_admin(sub)
    return parser


def _add_language(sub: _Subcommands[_Parser]) -> None:
    """`sd validate`, `sd render`, `sd templates`: descriptions, no hypervisor."""
    validate = _command(
        sub,
        "validate",
        handlers.validate,
        help="check a description and print a one-line summary",
        description="Parse and resolve FILE (includes, extends, references, TBDs). Prints one "
        "summary line, or every located error with the source line and a caret.",
    )
    _add_description_file(validate)
    validate.add_argument(
        "--syntax-only",
        action="store_true",
        help="only check the syntax of FILE itself (no includes, no resolution)",
    )
    _add_resolution_options(
        validate,
        allow_tbd="accept attributes still TBD (site templates that users complete)",
        json="machine-readable result",
    )

    render = _command(
        sub,
        "render",
        handlers.render,
        help="print the resolved sfConfig tree",
        description="Resolve FILE and print sfConfig as SmartFrog text (which parses again) or, "
        'with --json, as one JSON object (LAZY references as {"$ref": "LAZY PARENT:x"}). '
        "A file without sfConfig (a library) prints its resolved prototypes.",
    )
    _add_description_file(render)
    _add_resolution_options(
        render, allow_tbd="render even if TBDs remain", json="JSON instead of SmartFrog text"
    )

    templates = _command(
        sub,
        "templates",
        handlers.templates,
        help="list the site's VM templates",
        description="The templates in the site template folders (site config `template_dirs`; "
        "default: the job_templates/ shipped with sd-batch), each with its one-line "
        "description and the fields a user must fill (TBD).",
    )
    templates.add_argument("--json", action="store_true", help="machine-readable list")


def _add_pools(sub: _Subcommands[_Parser]) -> None:
    """`sd start`, `sd terminate`, `sd status`: pools on hypervisors."""
    start = _command(
        sub,
        "start",
        handlers.start,
        help="create and start the VMs of a description as pool NAME on HOST",
        description="Resolve FILE and start every VM under its sfConfig on HOST, as pool NAME "
        "(the seed's `sfStart HOST NAME FILE`). All or nothing: when one VM fails, the ones "
        "already started are destroyed and their disks removed. HOST is a libvirt URI "
        "(qemu:///system, test:///default) or a host name from the site config; `localhost` is "
        "the site's default URI.",
    )
    _add_pool_address(start, name_help="the pool's name, unique on HOST")
    _add_description_file(start, file_help="a .sf description (e.g. job_templates/pool.sf)")
    start.add_argument("--json", action="store_true", help="machine-readable result, no progress")
    start.add_argument(
        "--watch",
        action="store_true",
        help="then stay and watch it, as sd watch does (high availability)",
    )
    start.set_defaults(rounds=None)  # what sd watch reads, for start --watch

    terminate = _command(
        sub,
        "terminate",
        handlers.terminate,
        help="stop pool NAME on HOST and remove its VMs and disks",
        description="Ask every VM of pool NAME to power off (ACPI), destroy those still running "
        "after --grace seconds, undefine them and delete their disks, newest first (the seed's "
        "`sfTerminate HOST NAME`). Safe to run again after an interruption.",
    )
    _add_pool_address(terminate)
    terminate.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long guests get to power off before they are destroyed "
        "(default 10; 0 destroys at once)",
    )
    terminate.add_argument("--json", action="store_true", help="machine-readable result")

    status = _command(
        sub,
        "status",
        handlers.status,
        help="show pools and jobs, their VMs and disks",
        description="Every pool and job the ledger records (or just NAME), each VM's live state "
        "from its hypervisor, and leftovers of interrupted runs.",
    )
    status.add_argument("name", metavar="NAME", nargs="?")
    status.add_argument("--json", action="store_true", help="machine-readable list")


def _add_placement(sub: _Subcommands[_Parser]) -> None:
    """`sd plan`, `sd watch`: where VMs go, and moving them off failed hosts."""
    plan = _command(
        sub,
        "plan",
        handlers.plan,
        help="show where a description's VMs would be placed (a dry run)",
        description="Place FILE's VMs as sd start would, creating nothing: which VM goes to "
        "which host, what each host has left, and why anything does not fit. Hosts come from "
        "--hosts INVENTORY (a TOML file of hosts on paper: name, uri, memory, vcpus, disk, "
        "tags, count) or, without it, from the site's live hypervisors. Exits 8 when some VM "
        "fits nowhere.",
    )
    _add_description_file(plan, file_help="a .sf description with a Scheduler")
    plan.add_argument("--hosts", metavar="INVENTORY", help="hosts from this TOML inventory")
    plan.add_argument(
        "--name", metavar="NAME", help="pool name for the VM names (default: the file's name)"
    )
    plan.add_argument(
        "--all-hosts", action="store_true", help="list every host, not only those that get VMs"
    )
    plan.add_argument("--json", action="store_true", help="machine-readable plan")

    watch = _command(
        sub,
        "watch",
        handlers.watch,
        help="high availability: ping pool NAME's hosts, move VMs off failed ones",
        description="Every sfLivenessDelay seconds (the pool's Scheduler), ping each host "
        "running the pool's VMs and each VM. A host missing sfLivenessFactor pings in a row "
        "has failed: its VMs are placed again on the Scheduler's other hosts and started; "
        "sd status shows the moves. A VM found shut off is started again. Runs until "
        "interrupted, or until the pool is terminated.",
    )
    _add_pool_address(watch)
    _add_include_options(watch)
    watch.add_argument("--rounds", type=int, metavar="N", help="stop after N rounds of pings")


def _add_images(sub: _Subcommands[_Parser]) -> None:
    """`sd images push`: site images onto hypervisor hosts."""
    images = sub.add_parser(
        "images",
        help="site images on hypervisor hosts: sd images push HOST NAME",
        description="Site images (guest kernels, initramfs, base disks) live in the site image "
        "folder of every hypervisor host, at the same path. `push` copies NAME (a file or a "
        "folder, relative to this machine's site image folder) to HOST through libvirt's "
        "storage API; files already there with the same sha256 are not copied again.",
    )
    images_sub = images.add_subparsers(
        dest="images_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    images_push = _command(
        images_sub, "push", handlers.images_push, help="copy a site image to HOST (once)"
    )
    images_push.add_argument("host", metavar="HOST", help="a site host name or libvirt URI")
    images_push.add_argument("name", metavar="NAME", help="relative to the site image folder")
    images_push.add_argument("--json", action="store_true", help="one JSON list of files")


def _add_run(sub: _Subcommands[_Parser]) -> None:
    """`sd run`: a submit file's jobs here, through the hooks."""
    run = _command(
        sub,
        "run",
        handlers.run,
        help="run a submit file's jobs here through the HTCondor hooks (no daemons)",
        description="Play condor_submit, the schedd and condor_starter for every proc of "
        "JOB.sub: a scratch dir with the input files, PREPARE_JOB, the job's command, JOB_EXIT "
        "and the outputs back next to JOB.sub, hooks and job as the slot user. One line per "
        "job; exits with the job's exit code (128+N: signal N; 3: held; 4: back to idle). "
        "SIGINT/SIGTERM removes the running job, SIGUSR1 holds it, SIGUSR2 evicts it.",
    )
    run.add_argument("submit_file", metavar="JOB.sub", help="an HTCondor submit description")
    run.add_argument(
        "--keep-going",
        action="store_true",
        help="after a held or failed job, go on with the next proc",
    )
    run.add_argument(
        "--user",
        metavar="SLOTUSER",
        help="run hooks and job as this user (root only; default: sdslot1 for root)",
    )
    run.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    run.add_argument(
        "--evict-after",
        type=float,
        metavar="SECONDS",
        help="vacate each job SECONDS into its run (its KillSig, JOB_EXIT evict, "
        "ON_EXIT_OR_EVICT's spool), then run it again from the spooled files, "
        "as the schedd would: its VM resumes from its checkpoint",
    )


def _add_reap(sub: _Subcommands[_Parser]) -> None:
    """`sd reap`: what crashed runs left."""
    reap = _command(
        sub,
        "reap",
        handlers.reap,
        help="remove what crashed runs left: dead jobs' VMs, interrupted pools, orphans",
        description="Compare the ledger and the hypervisors with the jobs and pools still alive "
        "and remove what belongs to none: jobs whose runner died (or prepared and never run "
        "for --prepared-grace seconds), pools whose start or terminate was interrupted, rows "
        "stuck `creating`, domains carrying our metadata that no ledger owner has, job folders "
        "with no owner. One line per action. Never touches a domain without our metadata, an "
        "active pool, or a job whose process lives. The startd cron runs it.",
    )
    reap.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    reap.add_argument(
        "--prepared-grace",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="a prepared job never run is abandoned after this long (default 3600)",
    )
    reap.add_argument("--json", action="store_true", help="machine-readable list of actions")


def _add_web(sub: _Subcommands[_Parser]) -> None:
    """`sd web`: the template web form."""
    web = _command(
        sub,
        "web",
        handlers.web,
        help="serve the template web form (list, fill, preview, start, status)",
        description="Serve a small site: the site's templates, a form per template (its TBD "
        "fields and what site policy lets users change), a submit file for job templates, and "
        "start / status / terminate for pools. Bound to 127.0.0.1 it asks no login; bound "
        "elsewhere it needs --passwords or --remote-user-header.",
    )
    web.add_argument(
        "--bind",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:8080)",
    )
    web.add_argument(
        "--passwords",
        metavar="FILE",
        help="HTTP basic users: USER:HASH lines from sd web --hash-password USER",
    )
    web.add_argument(
        "--remote-user-header",
        metavar="NAME",
        help="trust this header (set by a reverse proxy) as the user's name",
    )
    web.add_argument(
        "--server-name",
        metavar="NAME",
        action="append",
        help="a name users reach this server by besides its --bind address (such "
        "as a reverse proxy's public name); repeat for more. Requests naming any "
        "other host are refused (DNS rebinding)",
    )
    web.add_argument(
        "--hash-password",
        metavar="USER",
        help="print a password file line for USER (password from stdin) and exit",
    )


def _add_admin(sub: _Subcommands[_Parser]) -> None:
    """`sd admin ...`: setting a worker up from the installed package."""
    admin = sub.add_parser(
        "admin",
        help="set this host up as a worker (site admins, as root)",
        description="Commands for the site admin of a worker, run as root from the installed "
        "package (a wheel in a virtualenv, or the Debian package).",
    )
    steps = admin.add_subparsers(
        dest="admin_command", metavar="ACTION", parser_class=_Parser, required=True
    )
    setup = _command(
        steps,
        "setup-host",
        handlers.setup_host,
        help="install and start what a worker needs (idempotent)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Prepare this Debian 12 host to run sd-batch jobs in VMs, from this installed package:
  1. Debian packages: libvirt, QEMU, sudo, acl (apt-get, --no-install-recommends)
  2. libvirtd: QEMU as root without relabelling (/etc/libvirt/qemu.conf, unless the
     site set it), libvirt's sockets for root only (/etc/libvirt/libvirtd.conf)
  3. the slot group sd-slots (and the user sdslot1 for `sd run`), and the sudoers rule
     /etc/sudoers.d/sd-batch letting that group run this package's helper, nothing else
     (only when every file root runs that way is writable by root alone)
  4. a check, as the slot user, that it can run the hooks and this package's Python
     (traversal granted to sd-slots with an ACL where a folder on the way is closed)
  5. virtlogd and libvirtd (started here when no service manager runs them)
  6. the helper service on /run/sd-batch/helper.sock (systemd unit sd-batch-helper, else
     under setsid); restarted with SIGTERM when its code changed, so runs under way
     finish on the old one while new jobs reach the new one
  7. the `minimal` guest image (kernel + initramfs from Debian packages) unless --no-guest
  8. /etc/sd-batch/site.toml, unless it exists (the VM flavour: kvm or qemu)
Every step checks first and says "ok" when there is nothing to do: run it again after an
upgrade, or from Puppet/Ansible/Salt. The Debian package's postinst runs it with
--no-guest --no-apt. Then point HTCondor at it: `sd admin paths` shows SMARTDOMAINS_HOME
and the config drop-in.""",
        epilog="example: sd admin setup-host --no-guest     (as root; exit 1 names what failed)",
    )
    setup.add_argument(
        "--no-guest",
        action="store_true",
        help="skip building the guest image (it downloads Debian's kernel and "
        "busybox: ~1 min the first time)",
    )
    setup.add_argument(
        "--image-dir",
        metavar="DIR",
        help="build the guest into DIR (default: the site config's image_dir)",
    )
    setup.add_argument(
        "--no-apt",
        action="store_true",
        help="never run apt-get; stop naming missing packages instead (used from "
        "a Debian package's maintainer scripts, where dpkg holds apt's lock)",
    )
    _command(
        steps,
        "paths",
        handlers.paths,
        help="where this install keeps its hooks, helper, drop-in and templates",
        description="Print the paths an HTCondor config, sudoers or a configuration manager "
        "names: SMARTDOMAINS_HOME (for /etc/condor/config.d/99-smartdomains.conf), the hooks, "
        "the helper, the drop-in to copy, the templates and the Python.",
    )
