import pytest
import torch

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
