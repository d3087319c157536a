import pytest
import torch
from support.hub import hub  # noqa: F401  (the 127.0.0.1 hub fixture, shared by every test)
from support.synthetic import perturbed_encoders

from mass.encoder import create_clip
from mass.task_vectors import TaskVector


@pytest.fixture(scope="session")
def tiny_clip():
    torch.manual_seed(0)
    return create_clip("mass-tiny-vit")


@pytest.fixture
def task_vectors(tiny_clip):
    pre, fts = perturbed_encoders(tiny_clip, 3)
    return pre, [TaskVector.from_state_dicts(pre, ft) for ft in fts]


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """The smallest demo (tests/slurm_demo.yaml) run locally once per session: the reference for the
    SLURM run and the finished state that the rerun and killed-job tests plan against. One thread per
    job, as in the SLURM run, so both do the same floating-point sums."""
    from support.workflow import SMALL, snakemake, workflow_copy

    cwd = workflow_copy(tmp_path_factory.mktemp("small_demo"))
    run = snakemake("--cores", "2", "--max-threads", "1", *SMALL, cwd=cwd, timeout=1200)
    assert run.returncode == 0, run.stderr[-4000:]
    return cwd
