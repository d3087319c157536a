"""The demo's generated tasks and the captioned corpus its CLIP is pretrained on."""

import numpy as np
import pytest

from mass_pipeline.data.demo import FAMILIES, TASKS, TEMPLATES, class_phrases, generate
from mass_pipeline.steps.pretrain_demo_clip import captioned_corpus


@pytest.mark.parametrize("task", sorted(TASKS))
def test_tasks_are_deterministic_balanced_and_styled(task):
    x, y = generate(task, 24, seed=3)
    again, y_again = generate(task, 24, seed=3)
    np.testing.assert_array_equal(x, again)
    np.testing.assert_array_equal(y, y_again)
    assert x.shape == (24, 32, 32, 3) and x.dtype == np.uint8
    counts = np.bincount(y, minlength=len(class_phrases(task)))
    assert counts.max() - counts.min() <= 1  # balanced labels
    assert not np.array_equal(generate(task, 24, seed=4)[0], x)
    assert not np.array_equal(generate(task, 24, seed=3, style="pretrain")[0], x)


def test_domain_images_are_captioned_with_their_family_only():
    images, captions, ids = captioned_corpus(per_task=4, seed=0, domain_per_task=3)
    assert len(images) == len(captions) == len(ids) == len(TASKS) * 7
    families = [t.format(c=f) for f in FAMILIES.values() for t in TEMPLATES]
    classes = [t.format(c=p) for task in TASKS for p in class_phrases(task) for t in TEMPLATES]
    assert sum(c in families for c in captions) == len(TASKS) * 3
    assert sum(c in classes for c in captions) == len(TASKS) * 4
    assert set(FAMILIES) == set(TASKS)
    # one id per distinct caption, shared by every image with that caption
    assert len(set(ids)) == len(set(captions))
    assert all(ids[i] == ids[j] for i in range(len(ids)) for j in range(len(ids)) if captions[i] == captions[j])
    without, _, _ = captioned_corpus(per_task=4, seed=0)
    assert len(without) == len(TASKS) * 4
