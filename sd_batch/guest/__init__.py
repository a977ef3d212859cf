"""The minimal guest: a Debian kernel plus a busybox initramfs that runs one job and powers off.

`contract` holds what host and guest agree on (also in CONTRACT.md); `initramfs` builds the
archive from bytes; `build` fetches Debian packages and writes the image folder; `init.sh` is
the guest's /init. No module here needs root or a hypervisor.
May import: errors, config, the standard library.
"""

from __future__ import annotations

from ..errors import ConfigError


class GuestBuildError(ConfigError):
    """The guest image cannot be built (packages missing, apt offline, odd kernel).

    A ConfigError: the site admin fixes the host, and jobs requeue meanwhile.
    """
