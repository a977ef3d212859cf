"""The files a worker needs that are not Python, shipped inside the package so a wheel or a
Debian package carries them: HTCondor's hooks and the privileged helper (`condor_hooks/`), the
config drop-in, the helper service's unit and the sudoers rule (templates setup-host fills in),
the site templates (`job_templates/`) and the host set-up script (`setup-host`, with its
`site-config` and `subreaper`). A checkout links its old paths (`condor_hooks/`,
`job_templates/`, `scripts/subreaper`, `scripts/site-config`) here. Every path is resolved, so
the hooks' Cmd and the sudoers rule name the same file whichever link led to it.
May import: the standard library.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
#: The HTCondor hooks, the job's runner and the root helper sudoers lets slot users run.
HOOKS_DIR = DATA_DIR / "condor_hooks"
#: Site templates shipped with sd-batch; the built-in default template folder.
TEMPLATES_DIR = DATA_DIR / "job_templates"
#: The host set-up (bash): run by `sd admin setup-host` and a checkout's scripts/setup-host.
SETUP_HOST = DATA_DIR / "setup-host"
