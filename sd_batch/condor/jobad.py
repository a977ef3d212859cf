"""Job ClassAds in, hook output out: the one home of the HTCondor Python bindings.

Owns reading the job ad a hook gets on stdin (`parse_job_ad`), the job's requests and its slot
as the starter's `.machine.ad` says (`job_resources`), the `Attr = value` lines a hook
prints (`format_updates`), the job ad a schedd would make from a submit file
(`job_ad_from_submit`, for `sd run`), and the site's job transform (`SMARTDOMAINS_TRANSFORM`,
the same rules as `condor_hooks/99-smartdomains.conf`). HTCondor's quoting rules for
`Arguments`/`Args` and `Environment`/`Env`, and `JobAdError`, live in `syntax` and are
re-exported here.

The bindings are imported inside functions: hooks are short-lived processes and only need
`classad2` (about 30 ms here); the v1 `htcondor` module (about 55 ms more) is only for
`job_ad_from_submit`, `htcondor2` only for `condor_param`. May import: condor.syntax, errors,
vm.sizing, the standard library, classad2, htcondor2, htcondor (v1).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import JobAdError as JobAdError
from .syntax import (
    join_arguments,
    join_environment,
    parse_submit_arguments,
    parse_submit_environment,
    split_arguments,
    split_arguments_v1,
    split_environment,
    split_environment_v1,
    unquote_submit_value,
)

if TYPE_CHECKING:
    from ..vm.sizing import Resources

#: The argument/environment syntaxes live in condor.syntax (pure); callers import them from here.
__all__ = [
    "SMARTDOMAINS_TRANSFORM",
    "JobAd",
    "JobAdError",
    "apply_job_transform",
    "condor_param",
    "format_updates",
    "job_ad_from_submit",
    "job_resources",
    "join_arguments",
    "parse_attributes",
    "join_environment",
    "parse_job_ad",
    "parse_submit_arguments",
    "parse_submit_environment",
    "split_arguments",
    "split_arguments_v1",
    "split_environment",
    "split_environment_v1",
    "unquote_submit_value",
]

#: The schedd transform of `condor_hooks/99-smartdomains.conf` (JOB_TRANSFORM_SmartDomains),
#: statement for statement; tests/test_condor_config.py keeps the two identical.
SMARTDOMAINS_TRANSFORM = """\
REQUIREMENTS SDVMDescription isnt undefined
SET HookKeyword "SMARTDOMAINS"
SET RequestMemory max({ ($(MY.RequestMemory)), TARGET.SmartDomainsTemplateMemory[string(MY.SDVMDescription)] ?: 0 })
SET RequestCpus max({ ($(MY.RequestCpus)), TARGET.SmartDomainsTemplateCpus[string(MY.SDVMDescription)] ?: 0 })
SET RequestDisk max({ ($(MY.RequestDisk)), TARGET.SmartDomainsTemplateDisk[string(MY.SDVMDescription)] ?: TARGET.SmartDomainsOutputDisk ?: 0 })
SET Requirements ($(MY.Requirements)) && (TARGET.HasSmartDomains =?= true) && (TARGET.Memory >= (TARGET.SmartDomainsTemplateMemory[string(MY.SDVMDescription)] ?: 0)) && (TARGET.Cpus >= (TARGET.SmartDomainsTemplateCpus[string(MY.SDVMDescription)] ?: 0))
COPY OnExitHold SDJobOnExitHold
COPY OnExitHoldReason SDJobOnExitHoldReason
COPY OnExitHoldSubCode SDJobOnExitHoldSubCode
COPY OnExitRemove SDJobOnExitRemove
SET OnExitHold (SDJobOnExitHold =?= true) || (ExitBySignal =?= false && (ExitCode =?= 170 || ExitCode =?= 171))
SET OnExitHoldReason ifThenElse(ExitBySignal =?= false && ExitCode =?= 170, "sd-batch: the job's VM did not power off within the site's run time limit ([policy] max_run_seconds) and was destroyed", ifThenElse(ExitBySignal =?= false && ExitCode =?= 171, "sd-batch: the job's VM stopped without a result (it crashed or was destroyed); the job's stderr has the details", SDJobOnExitHoldReason))
SET OnExitHoldSubCode ifThenElse(ExitBySignal =?= false && (ExitCode =?= 170 || ExitCode =?= 171), ExitCode, SDJobOnExitHoldSubCode)
SET OnExitRemove (SDJobOnExitRemove =!= false) && !(ExitBySignal =?= false && ExitCode =?= 172)
SET KillSig "SIGUSR2"
SET WhenToTransferOutput "ON_EXIT_OR_EVICT"
"""  # noqa: E501 - a transform statement is one line

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_AD_LINE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


@functools.cache
def _classad2() -> Any:
    """classad2, imported on first use (see the module docstring).

    Its C code imports htcondor2 when it first parses; importing that here, quietly, keeps
    htcondor2's "no condor_config" warning out of the starter's log on a machine without one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import classad2  # type: ignore[import-untyped,import-not-found,unused-ignore]
        import htcondor2  # type: ignore[import-untyped,import-not-found,unused-ignore] # noqa: F401

    return classad2


# -- the job ad -------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobAd:
    """What sd-batch needs from a job ClassAd, evaluated once, plus `get` for anything else.

    `global_job_id` is the schedd's `GlobalJobId` (`host#cluster.proc#qdate`); an ad without one
    (hand-written, or from a tool that is not a schedd) gets `"<ClusterId>.<ProcId>"` instead,
    which is unique on one machine only.
    """

    global_job_id: str
    cluster_id: int
    proc_id: int
    owner: str | None
    cmd: str
    arguments: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]
    iwd: str | None
    out: str | None
    err: str | None
    sd_description: str | None
    request_memory_mib: int | None
    request_cpus: int | None
    request_disk_kib: int | None
    request_gpus: int | None
    text: str = field(repr=False)
    _ad: Any = field(repr=False, compare=False, hash=False)

    def get(self, name: str, default: Any = None) -> Any:
        """The evaluated value of any attribute (names are case-insensitive, as in ClassAds).

        Absent or `undefined` -> `default`; an `error` value raises JobAdError. Lists and nested
        ads come back as Python lists and dicts.
        """
        return _evaluate(self._ad, name, default)

    def expression(self, name: str) -> str | None:
        """The attribute's unevaluated expression in old ClassAd syntax (None when absent)."""
        return _old_syntax_expr(self._ad, name)

    def vm_description(self) -> str | None:
        """SDVMDescription: None when the job asks for no VM; a JobAdError when the attribute
        is there but is not a non-empty string (`42`, a list, an expression, `undefined`): such
        a job meant a VM, and must be held, never run natively without one."""
        if self.sd_description:
            return self.sd_description
        written = self.expression("SDVMDescription")
        if written is None:
            return None
        written = " ".join(written.split())
        shown = written if len(written) <= 60 else written[:56] + " ..."
        raise JobAdError(
            f"SDVMDescription = {shown} does not name a VM description (it must be a string)",
            hint='write +SDVMDescription = "minimal" (a site template, sd templates lists '
            'them) or "my.sf" (a description of your own in transfer_input_files)',
        )

    @property
    def env(self) -> dict[str, str]:
        """`environment` as a dict (the order is the ad's)."""
        return dict(self.environment)


def parse_job_ad(text: str) -> JobAd:
    """Read an old-syntax job ad (`Attr = value` lines, as hooks get it on stdin)."""
    ad = _parse_old_ad(text)
    cluster = _evaluate(ad, "ClusterId")
    proc = _evaluate(ad, "ProcId")
    if not isinstance(cluster, int) or not isinstance(proc, int):
        raise JobAdError("the job ad has no integer ClusterId and ProcId: is it a job ad?")
    cmd = _evaluate(ad, "Cmd")
    if not isinstance(cmd, str) or not cmd:
        raise JobAdError("the job ad has no Cmd (the executable)")
    global_id = _evaluate(ad, "GlobalJobId")
    arguments_v2 = _evaluate(ad, "Arguments")
    if isinstance(arguments_v2, str):
        arguments = split_arguments(arguments_v2)
    else:
        args_v1 = _evaluate(ad, "Args")
        arguments = split_arguments_v1(args_v1) if isinstance(args_v1, str) else ()
    environment_v2 = _evaluate(ad, "Environment")
    if isinstance(environment_v2, str):
        environment = split_environment(environment_v2)
    else:
        env_v1 = _evaluate(ad, "Env")
        delim = _evaluate(ad, "EnvDelim")
        environment = (
            split_environment_v1(env_v1, delim[:1] if isinstance(delim, str) else None)
            if isinstance(env_v1, str)
            else ()
        )
    fallback_id = f"{cluster}.{proc}"
    return JobAd(
        global_job_id=global_id if isinstance(global_id, str) and global_id else fallback_id,
        cluster_id=cluster,
        proc_id=proc,
        owner=_string(ad, "Owner"),
        cmd=cmd,
        arguments=arguments,
        environment=environment,
        iwd=_string(ad, "Iwd"),
        out=_string(ad, "Out"),
        err=_string(ad, "Err"),
        sd_description=_string(ad, "SDVMDescription"),
        request_memory_mib=_whole(ad, "RequestMemory"),
        request_cpus=_whole(ad, "RequestCpus"),
        request_disk_kib=_whole(ad, "RequestDisk"),
        request_gpus=_whole(ad, "RequestGPUs"),
        text=text,
        _ad=ad,
    )


def parse_attributes(text: str) -> dict[str, Any]:
    """Every attribute of an old-syntax ad (a hook's output), evaluated (see `JobAd.get`)."""
    ad = _parse_old_ad(text)
    return {str(key): _evaluate(ad, key) for key in ad}


def _parse_old_ad(text: str) -> Any:
    """classad2's old-syntax parser silently drops lines it cannot read; we refuse them."""
    classad2 = _classad2()
    names: list[tuple[int, str, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _AD_LINE.match(line)
        if match is None:
            raise JobAdError(f"job ad line {lineno} is not 'Name = value': {stripped[:80]!r}")
        names.append((lineno, match.group(1), stripped))
    if not names:
        raise JobAdError("the job ad is empty")
    try:
        ad = classad2.parseOne(text, classad2.ParserType.Old)
    except classad2.ClassAdException as exc:
        raise JobAdError(f"the job ad cannot be parsed: {exc}") from exc
    known = {key.lower() for key in ad}
    for lineno, name, stripped in names:
        if name.lower() not in known:
            raise JobAdError(
                f"job ad line {lineno}: the value of {name} is not a ClassAd "
                f"expression: {stripped[:80]!r}"
            )
    return ad


def _evaluate(ad: Any, name: str, default: Any = None) -> Any:
    classad2 = _classad2()
    try:
        value = ad.eval(name)
    except KeyError:
        return default
    except classad2.ClassAdException as exc:  # a reference cycle, say: X = X + 1
        raise JobAdError(
            f"the job attribute {name} cannot be evaluated: {_old_syntax_expr(ad, name)}"
        ) from exc
    if value is classad2.Value.Undefined:
        return default
    if value is classad2.Value.Error:
        raise JobAdError(f"the job attribute {name} evaluates to an error: {ad.lookup(name)}")
    return _to_python(value)


def _to_python(value: Any) -> Any:
    classad2 = _classad2()
    if isinstance(value, list):
        return [_to_python(item) for item in value]
    if isinstance(value, classad2.ClassAd):
        return {key: _evaluate(value, key) for key in value}
    if isinstance(value, classad2.ExprTree):
        return str(value)
    if value is classad2.Value.Undefined:
        return None
    return value


def _string(ad: Any, name: str) -> str | None:
    value = _evaluate(ad, name)
    return value if isinstance(value, str) else None


def _whole(ad: Any, name: str, target: Any = None) -> int | None:
    """A request (RequestMemory...) as a whole number; fractions round up, like the startd's.
    With TARGET (a machine ad), `TARGET.` references resolve against it, as in matchmaking."""
    if target is None:
        value = _evaluate(ad, name)
    else:
        expr = ad.lookup(name) if name in ad else None
        try:
            value = None if expr is None else expr.eval(ad, target)
        except _classad2().ClassAdException:
            value = _classad2().Value.Error
        if value is _classad2().Value.Error:
            raise JobAdError(
                f"the job attribute {name} evaluates to an error against the "
                f"slot: {ad.lookup(name)}"
            )
        value = _to_python(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        return math.ceil(value) if math.isfinite(value) else None
    return value


def job_resources(ad: JobAd, machine_ad_text: str | None) -> tuple[Resources, Resources | None]:
    """(the job's requests, its slot). The slot is the machine ad's `Memory` (MiB), `Cpus`,
    `Disk` (KiB) and `GPUs`; the requests are `RequestMemory`, `RequestCpus`, `RequestDisk`,
    `RequestGPUs` evaluated with that machine ad as TARGET, as the startd evaluated them when
    it carved the slot (the site transform makes them at least a template's needs). Without a
    machine ad: the requests on their own, and no slot. (vm.sizing is imported here: the hooks
    import this module and must not pay for the language it pulls in.)"""
    from ..vm.sizing import Resources

    if machine_ad_text is None:
        return Resources(
            ad.request_memory_mib, ad.request_cpus, ad.request_disk_kib, ad.request_gpus
        ), None
    try:
        machine = _parse_old_ad(machine_ad_text)
    except JobAdError as exc:
        raise JobAdError(f"the slot's machine ad: {exc}") from exc
    requests = Resources(
        *(
            _whole(ad._ad, name, machine)
            for name in ("RequestMemory", "RequestCpus", "RequestDisk", "RequestGPUs")
        )
    )
    slot = Resources(*(_whole(machine, name) for name in ("Memory", "Cpus", "Disk", "GPUs")))
    return requests, slot


def _old_syntax_expr(ad: Any, name: str) -> str | None:
    """Unparse one attribute in old syntax (through printOld, never by hand)."""
    expr = ad.lookup(name) if name in ad else None
    if expr is None:
        return None
    one = _classad2().ClassAd()
    one["X"] = expr
    return str(one.printOld()).strip()[len("X = ") :]


# -- what hooks print -------------------------------------------------------------------------
def format_updates(updates: Mapping[str, str | int | float | bool | Mapping[str, int]]) -> str:
    """`Attr = value` lines for a hook's stdout, in the caller's order, quoted by classad2.

    The starter reads this line by line (compat_classad.cpp initAdFromString), so a string
    with a newline cannot be carried: such values are refused (pass `str(exc).splitlines()[0]`
    or `DescriptionError.headline()` for messages).
    """
    classad2 = _classad2()
    lines = []
    for name, value in updates.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a ClassAd attribute name")
        if isinstance(value, str) and ("\n" in value or "\r" in value):
            raise ValueError(f"{name}: a hook's output line cannot carry a newline: {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: {value} is not a finite number")
        if isinstance(value, Mapping):  # a record of numbers, such as a template's needs
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
                raise TypeError(f"{name}: a record here holds whole numbers only")
            value = classad2.ClassAd(dict(value))
        elif not isinstance(value, str | int | float | bool):
            raise TypeError(f"{name}: cannot write a {type(value).__name__} into a ClassAd")
        one = classad2.ClassAd()
        one[name] = value
        lines.append(one.printOld().strip())
    return "".join(line + "\n" for line in lines)


# -- the schedd's side, for `sd run` ----------------------------------------------------------
def job_ad_from_submit(
    submit_text: str,
    *,
    submit_dir: Path,
    cluster_id: int = 1,
    owner: str,
    schedd_name: str | None = None,
    qdate: int = 0,
    transform: str | None = SMARTDOMAINS_TRANSFORM,
) -> list[str]:
    """The job ads (old syntax, one per proc) a schedd would hold after condor_submit.

    condor_submit's own code (the 24.0 wheel's v1 `Submit.jobs`, no schedd needed) makes the ad,
    run from `submit_dir` so relative paths and `Iwd` are what condor_submit there would make;
    then what the schedd adds: `Owner`, `GlobalJobId` (`<schedd>#<cluster>.<proc>#<qdate>`),
    and the site's job transform (`transform=None` skips it).
    """
    os.environ.setdefault("CONDOR_CONFIG", "/dev/null")  # no site config: a neutral ad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # v1: the only API that still makes job ads without a schedd
        import htcondor  # type: ignore[import-untyped,import-not-found,unused-ignore]

        try:
            submit = htcondor.Submit(submit_text)
            with contextlib.chdir(submit_dir):
                ads = list(submit.jobs(clusterid=cluster_id, qdate=qdate))
        except (RuntimeError, ValueError, TypeError) as exc:
            reason = str(exc).strip() or f"HTCondor's {type(exc).__name__}, without a reason"
            raise JobAdError(f"the submit description is not valid: {reason}") from exc
    schedd = schedd_name or platform.node() or "localhost"
    texts = []
    for v1_ad in ads:
        ad = _parse_old_ad(v1_ad.printOld())
        ad["Owner"] = owner
        ad["GlobalJobId"] = f"{schedd}#{ad['ClusterId']}.{ad['ProcId']}#{ad['QDate']}"
        if transform is not None:
            ad = _transform(ad, transform)
        texts.append(ad.printOld())
    return texts


def apply_job_transform(ad_text: str, rules: str) -> str:
    """Apply schedd transform rules (the subset below) to an old-syntax ad, as the schedd does.

    Supported, per the manual's "ClassAd Transforms" section: `REQUIREMENTS <expr>` (all of them
    must be true of the untransformed ad, or nothing changes), `SET <attr> <expr>`,
    `DEFAULT <attr> <expr>`, `COPY <attr> <newattr>`, `#` comments, and `$(MY.<attr>)`
    expansion (a string value without its quotes, any other value as its unevaluated
    expression). Anything else is refused.
    """
    return str(_transform(_parse_old_ad(ad_text), rules).printOld())


def _transform(ad: Any, rules: str) -> Any:
    original = _parse_old_ad(ad.printOld())  # REQUIREMENTS sees the untransformed ad
    steps: list[tuple[str, str, str]] = []
    for raw_line in rules.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "REQUIREMENTS":
            if not _requirements_hold(original, _expand(rest, original), line):
                return ad
        elif keyword == "COPY":
            source, _, target = rest.strip().partition(" ")
            target = target.strip()
            if not _NAME.fullmatch(source) or not _NAME.fullmatch(target):
                raise JobAdError(f"transform: COPY needs two attribute names: {line!r}")
            steps.append((keyword, source, target))
        elif keyword in ("SET", "DEFAULT"):
            attr, _, expr = rest.strip().partition(" ")
            attr = attr.rstrip("=,")
            expr = expr.strip()
            if expr.startswith(("=", ",")):
                expr = expr[1:].strip()
            if not _NAME.fullmatch(attr) or not expr:
                raise JobAdError(f"transform: {keyword} needs an attribute and a value: {line!r}")
            steps.append((keyword, attr, expr))
        else:
            raise JobAdError(f"transform statement not supported here: {line!r}")
    for keyword, attr, expr in steps:
        if keyword == "COPY":  # the expression, unevaluated; nothing when the job has none
            if attr in ad:
                ad[expr] = ad.lookup(attr)
            continue
        if keyword == "DEFAULT" and attr in ad:
            continue
        parsed = _parse_old_ad(f"{attr} = {_expand(expr, ad)}\n")
        ad[attr] = parsed.lookup(attr)
    return ad


def _expand(text: str, ad: Any) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in ad:
            return ""
        unparsed = _old_syntax_expr(ad, name) or ""
        try:
            value = ad.eval(name)
        except _classad2().ClassAdException:
            return unparsed  # not a plain string: its expression, as for any other value
        if isinstance(value, str):
            literal = _classad2().ClassAd()
            literal["X"] = value
            if literal.printOld().strip() == f"X = {unparsed}":
                return value
        return unparsed

    if re.search(r"\$\((?!MY\.)", text):
        raise JobAdError(f"transform: only $(MY.<attr>) macros are supported: {text!r}")
    return re.sub(r"\$\(MY\.([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def _requirements_hold(ad: Any, expr: str, line: str) -> bool:
    """True only when the expression evaluates to true in the ad; undefined or error: false."""
    try:
        probe = _parse_old_ad(ad.printOld() + f"SdTransformRequirements_ = {expr}\n")
    except JobAdError:
        raise JobAdError(f"transform: cannot parse {line!r}") from None
    try:
        return _evaluate(probe, "SdTransformRequirements_") is True
    except JobAdError:  # an error value: the transform does not apply, as in the schedd
        return False


# -- the machine's HTCondor configuration -----------------------------------------------------
def condor_param(name: str, default: str | None = None) -> str | None:
    """A knob of this machine's HTCondor configuration, expanded (None/default when unset).

    Reads the config `CONDOR_CONFIG` (or HTCondor's default places) names; with none at all the
    bindings fall back to an empty config and this returns `default`.
    """
    if f"_CONDOR_{name}" in os.environ:
        return os.environ[f"_CONDOR_{name}"]
    if not _has_condor_config():
        return default  # no HTCondor here (sd run, tests): skip the bindings' import cost
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import htcondor2  # type: ignore[import-untyped,import-not-found,unused-ignore]

        value = htcondor2.param.get(name)
    return default if value is None else str(value)


def _has_condor_config() -> bool:
    """Whether HTCondor would find a config: $CONDOR_CONFIG or its usual places."""
    if os.environ.get("CONDOR_CONFIG"):
        return os.environ["CONDOR_CONFIG"] != "/dev/null"
    places = (
        Path("/etc/condor/condor_config"),
        Path("/usr/local/etc/condor_config"),
        # os.path leaves "~condor" as it is where no user condor exists (pathlib raises)
        Path(os.path.expanduser("~condor/condor_config")),  # noqa: PTH111
    )
    return any(p.exists() for p in places)
