import pytest
import torch
from fakehub import hub  # noqa: F401  (the 127.0.0.1 hub fixture, shared by every test)

from mass.encoder import create_clip
from mass.task_vectors import TaskVector


@pytest.fixture(scope="session")
def tiny_clip():
    torch.manual_seed(0)
    return create_clip("mass-tiny-vit")


def random_orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q.float()


def perturbed_encoders(clip, num_tasks: int, scale: float = 0.02, seed: int = 1):
    """Pretrained visual state dict and ``num_tasks`` random 'fine-tuned' ones."""
    pre = {k: v.clone() for k, v in clip.visual.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    fts = []
    for _ in range(num_tasks):
        fts.append({k: v + scale * torch.randn(v.shape, generator=g) for k, v in pre.items()})
    return pre, fts


@pytest.fixture
def task_vectors(tiny_clip):
    pre, fts = perturbed_encoders(tiny_clip, 3)
    return pre, [TaskVector.from_state_dicts(pre, ft) for ft in fts]


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """The smallest demo (tests/slurm_demo.yaml) run locally once per session: the reference for the
    SLURM run and the finished state that the rerun and killed-job tests plan against. One thread per
    job, as in the SLURM run, so both do the same floating-point sums."""
    from workflow_run import SMALL, snakemake, workflow_copy

    cwd = workflow_copy(tmp_path_factory.mktemp("small_demo"))
    run = snakemake("--cores", "2", "--max-threads", "1", *SMALL, cwd=cwd, timeout=1200)
    assert run.returncode == 0, run.stderr[-4000:]
    return cwd
