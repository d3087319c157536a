"""A test's time limit guards against hangs; when one is reached the test says so, with what was measured."""

import pytest
from support.workflow import SMALL, snakemake, workflow_copy


def test_a_snakemake_run_past_its_limit_fails_saying_it_timed_out(tmp_path):
    cwd = workflow_copy(tmp_path)
    with pytest.raises(pytest.fail.Exception, match=r"timed out after \d+ s \(limit 1 s; measured alone: 5 s\)"):
        snakemake("-n", "--cores", "1", *SMALL, cwd=cwd, timeout=1, measured=5)
