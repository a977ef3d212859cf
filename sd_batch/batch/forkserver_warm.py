"""Imported by the helper service's fork server alone (`confined.start_forkserver`): what a
confined child's work needs, loaded and built once there, so each child forks ready (the
language's parser took a child ~50 ms to build, the job ad's ClassAd library ~10 ms to load).
May import: condor.jobad, config, errors, lang, staging, vm, batch.description, batch.jobs.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import pkgutil

import sd_batch

from .. import staging  # noqa: F401
from ..condor.jobad import parse_job_ad
from ..config import templates  # noqa: F401
from ..config.site import BUILTIN_TEMPLATE_DIR
from ..errors import SdError
from ..lang import load_file
from ..vm.spec import vm_spec
from . import description, jobs  # noqa: F401

#: The faces and `sd run`, never reached by a confined child (nor this module, running now).
NOT_PRELOADED = (
    "sd_batch.web",
    "sd_batch.cli",
    "sd_batch.localrun",
    "sd_batch.helper",
    "sd_batch.batch.forkserver_warm",
)

# Every module of the root side, loaded now: after a package upgrade replaced the code on disk,
# a child importing a module lazily would mix the new version into the old (the helper
# service's warm_up does the same for itself; this process is another interpreter).
for _module in pkgutil.walk_packages(sd_batch.__path__, "sd_batch."):
    if not _module.name.startswith(NOT_PRELOADED):
        importlib.import_module(_module.name)

parse_job_ad('ClusterId = 1\nProcId = 0\nCmd = "/bin/true"\nGlobalJobId = "warm#1.0#1"\n')
with contextlib.suppress(SdError, OSError):  # a job's first resolution, done once here
    warm = load_file(
        BUILTIN_TEMPLATE_DIR / "minimal.sf",
        include_dirs=[BUILTIN_TEMPLATE_DIR],
        properties={"sd.flavour": "qemu"},
        environ=None,
    )
    if warm.sfconfig is not None:
        vm_spec(warm.sfconfig, default_name="warm")
# What is loaded now stays out of every child's collections: a collection touches each object
# it tracks, and in a child every touched page of the fork server's heap is a copy-on-write
# fault (gc.freeze's documented use before fork).
gc.freeze()
