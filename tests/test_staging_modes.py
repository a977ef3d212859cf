"""Result file modes follow tarfile's `data_filter` policy, on Pythons that lack the filters.

Debian 12's python3 (3.11.2) has no extraction filters, so `data_file_mode` writes the policy
out; where the running Python has `tarfile.data_filter` (3.11.4+), both must agree on every mode.
"""

from __future__ import annotations

import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sd_batch.staging.outputs import data_file_mode


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o4755, 0o755),  # setuid dropped
        (0o2777, 0o755),  # setgid and group/other write dropped
        (0o000, 0o600),  # the owner may always read and write
        (0o070, 0o640),  # no owner x: every x cleared
        (0o711, 0o711),
    ],
)
def test_data_file_mode_drops_dangerous_bits(mode: int, expected: int) -> None:
    assert data_file_mode(mode) == expected


@pytest.mark.skipif(not hasattr(tarfile, "data_filter"), reason="this Python has no tar filters")
@given(st.integers(min_value=0, max_value=0o7777))
def test_data_file_mode_matches_tarfile_data_filter(mode: int) -> None:
    member = tarfile.TarInfo("f")
    member.mode = mode
    filtered = tarfile.data_filter(member, "/nonexistent-destination")
    assert data_file_mode(mode) == filtered.mode
