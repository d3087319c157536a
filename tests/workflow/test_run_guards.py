"""Time limits guard against hangs and say so when reached; a working directory keeps to one edition."""

import pytest
from support.workflow import SMALL, snakemake, workflow_copy


def test_a_snakemake_run_past_its_limit_fails_saying_it_timed_out(tmp_path):
    """A Snakefile that takes a minute to read, under a 2 s limit: always killed, however fast the machine."""
    (tmp_path / "Snakefile").write_text("import time\ntime.sleep(60)\n")
    with pytest.raises(pytest.fail.Exception, match=r"timed out after \d+ s \(limit 2 s; measured alone: 5 s\)"):
        snakemake("-n", "--cores", "1", cwd=tmp_path, timeout=2, measured=5)


def test_a_directory_with_one_editions_results_refuses_another_edition(tmp_path):
    """results/<backbone>/... carry no edition in their paths: a run of another edition over them is refused
    before any job, naming the file and the way out."""
    cwd = workflow_copy(tmp_path)
    (cwd / "results" / "tiny").mkdir(parents=True)
    (cwd / "results" / "tiny" / "provenance.csv").write_text(
        "edition,backbone,task,published,measured,difference,verdict,note\nfirst,tiny,digits,,45.4,,not published,x\n")
    run = snakemake("-n", "--cores", "1", *SMALL, cwd=cwd, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert ("results/tiny/provenance.csv: this directory holds the first edition's results for tiny, and the config "
            "asks for the demo edition") in output
    assert "git worktree add" in output
    (cwd / "results" / "tiny" / "provenance.csv").write_text(
        "edition,backbone,task,published,measured,difference,verdict,note\ndemo,tiny,digits,,45.4,,not published,x\n")
    assert snakemake("-n", "--cores", "1", *SMALL, cwd=cwd, timeout=300).returncode == 0
