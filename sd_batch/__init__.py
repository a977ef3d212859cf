"""sd-batch: SmartDomains for batch. Each HTCondor job in its own libvirt VM.

The package imports nothing heavy at import time: hooks are short-lived processes and pay every
import on every job. May import: logging only.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
