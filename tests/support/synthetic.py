"""Synthetic orthonormal bases and fine-tuned encoders of the tests."""

import torch


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
