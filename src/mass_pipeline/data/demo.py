"""Deterministic synthetic image-classification tasks for the offline demo.

Eight visually distinct 32 x 32 tasks stand in for the paper's benchmark: handwritten digits
(scikit-learn's bundled digits), rendered letters, geometric shapes, oriented gratings,
colour-tinted textures, dot counting, blob position and checkerboard scale. Each generator has
two styles: ``"pretrain"`` (clean, centred: the captioned data the demo CLIP is pretrained on)
and ``"task"`` (random placement, scale, clutter and noise: what fine-tuning and evaluation
see), so the pretrained model is a weak zero-shot classifier that fine-tuning improves, as
web-pretrained CLIP is on the paper's tasks.

The pipeline's ``generate_demo_task`` rule writes one task with :func:`write_task`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mass.data.store import TaskInfo, carve_validation, save_info, save_split

SIZE = 32
TEMPLATES = ["a photo of {c}.", "an image of {c}.", "a picture showing {c}."]


def _canvas(rng: np.random.Generator, clean: bool, dark: bool = False) -> np.ndarray:
    base = rng.uniform(0, 40) if dark else rng.uniform(140, 220)
    img = np.full((SIZE, SIZE, 3), base, dtype=np.float32)
    if not clean:
        img += rng.normal(0, 18, size=img.shape)
    return img


def _finish(img: np.ndarray, rng: np.random.Generator, clean: bool) -> np.ndarray:
    if not clean:
        img = img * rng.uniform(0.7, 1.2) + rng.uniform(-25, 25, size=3) + rng.normal(0, 10, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(img: np.ndarray, paint: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    paint(ImageDraw.Draw(pil))
    return np.asarray(pil, dtype=np.float32)


def _digits_source() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target


_DIGITS = None


def digits(label: int, rng: np.random.Generator, clean: bool) -> np.ndarray:
    global _DIGITS
    if _DIGITS is None:
        _DIGITS = _digits_source()
    glyphs, targets = _DIGITS
    pool = np.flatnonzero(targets == label)
    glyph = glyphs[rng.choice(pool[: len(pool) // 2] if clean else pool[len(pool) // 2:])]
    size = 24 if clean else int(rng.integers(16, 29))
    big = np.asarray(Image.fromarray((glyph * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                     dtype=np.float32)
    img = _canvas(rng, clean, dark=True)
    y, x = ((SIZE - size) // 2,) * 2 if clean else rng.integers(0, SIZE - size + 1, size=2)
    colour = np.array([255, 255, 255]) if clean else rng.uniform(150, 255, size=3)
    img[y:y + size, x:x + size] = np.maximum(img[y:y + size, x:x + size], big[..., None] / 255 * colour)
    return _finish(img, rng, clean)


LETTERS = list("ABCDEFGHJK")


def letters(label: int, rng: np.random.Generator, clean: bool) -> np.ndarray:
    size = 24 if clean else int(rng.integers(20, 27))
    font = ImageFont.load_default(size=size)
    img = _canvas(rng, clean)
    tile = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(tile).text((SIZE / 2, SIZE / 2), LETTERS[label], font=font, fill=255, anchor="mm")
    if not clean:
        tile = tile.rotate(float(rng.uniform(-10, 10)), translate=tuple(rng.integers(-3, 4, size=2).tolist()))
    mask = np.asarray(tile, dtype=np.float32)[..., None] / 255
    ink = np.zeros(3) if clean else rng.uniform(0, 90, size=3)
    return _finish(img * (1 - mask) + ink * mask, rng, clean)


SHAPES = ["circle", "square", "triangle", "cross", "diamond"]


def shapes(label: int, rng: np.random.Generator, clean: bool) -> np.ndarray:
    r = 10 if clean else float(rng.uniform(7, 12))
    cx, cy = (16.0, 16.0) if clean else rng.uniform(r, SIZE - r, size=2)
    colour = (200, 40, 40) if clean else tuple(int(v) for v in rng.integers(0, 256, size=3))

    def paint(d: ImageDraw.ImageDraw) -> None:
        box = (cx - r, cy - r, cx + r, cy + r)
        name = SHAPES[label]
        if name == "circle":
            d.ellipse(box, fill=colour)
        elif name == "square":
            d.rectangle(box, fill=colour)
        elif name == "triangle":
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        elif name == "cross":
            w = r / 3
            d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
            d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        else:
            d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)

    return _finish(_draw(_canvas(rng, clean), paint), rng, clean)


ORIENTATIONS = ["horizontal", "diagonal", "vertical", "anti-diagonal"]


def gratings(label: int, rng: np.random.Generator, clean: bool) -> np.ndarray:
    angle = label * math.pi / 4 + (0 if clean else rng.uniform(-0.2, 0.2))
    period = 8.0 if clean else rng.uniform(4, 10)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    wave = np.sin(2 * math.pi * (xx * math.sin(angle) + yy * math.cos(angle)) / period + rng.uniform(0, 6.3))
    a, b = (np.array([0, 0, 0]), np.array([255, 255, 255])) if clean else rng.uniform(0, 255, size=(2, 3))
    img = a + (b - a) * (wave[..., None] + 1) / 2
    return _finish(img, rng, clean)


HUES = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
        "purple": (150, 50, 200), "orange": (240, 130, 30)}


def colours(label: int, rng: np.random.Generator, clean: bool) -> np.ndarray:
    hue = np.array(list(HUES.values())[label], dtype=np.float32)
    coarse = rng.normal(0, 1, size=(4, 4)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.BICUBIC))[..., None]
    spread = 10 if clean else 45
    img = hue + spread * field + (0 if clean else rng.normal(0, 30, size=3))
    return _finish(img, rng, clean)


COUNTS = ["one", "two", "three", "four", "five"]


def counting(label: int, rng: np.random.Generator, clean: bool) -> np.ndarray:
    n = label + 1
    img = np.zeros((SIZE, SIZE, 3), np.float32) + np.array([20, 20, 90])
    cells = rng.choice(16, size=n, replace=False)

    def paint(d: ImageDraw.ImageDraw) -> None:
        for c in cells:
            cx, cy = 4 + 8 * (c % 4), 4 + 8 * (c // 4)
            if not clean:
                cx, cy = cx + rng.uniform(-1.5, 1.5), cy + rng.uniform(-1.5, 1.5)
            rad = 2.5 if clean else rng.uniform(1.5, 3.2)
            d.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), fill=(255, 255, 255))

    return _finish(_draw(img, paint), rng, clean)


QUADRANTS = ["top left", "top right", "bottom left", "bottom right"]


def position(label: int, rng: np.random.Generator, clean: bool) -> np.ndarray:
    img = rng.uniform(60, 120, size=(SIZE, SIZE, 3)).astype(np.float32) if not clean else \
        np.full((SIZE, SIZE, 3), 90, np.float32)
    s = 8 if clean else int(rng.integers(5, 10))
    oy, ox = (label // 2) * 16, (label % 2) * 16
    y, x = (oy + 4, ox + 4) if clean else (oy + rng.integers(0, 16 - s + 1), ox + rng.integers(0, 16 - s + 1))
    img[y:y + s, x:x + s] = (255, 255, 0) if clean else rng.uniform(180, 255, size=3)
    return _finish(img, rng, clean)


SCALES = ["fine", "medium", "coarse"]


def checker(label: int, rng: np.random.Generator, clean: bool) -> np.ndarray:
    cell = [2, 4, 8][label]
    off = (0, 0) if clean else tuple(rng.integers(0, cell, size=2))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    board = (((yy + off[0]) // cell + (xx + off[1]) // cell) % 2)[..., None]
    a, b = (np.array([0, 0, 0]), np.array([255, 255, 255])) if clean else rng.uniform(0, 255, size=(2, 3))
    return _finish(a + (b - a) * board, rng, clean)


# name -> (generator, class names, caption noun used in prompts)
TASKS: dict[str, tuple[Callable, list[str], str]] = {
    "digits": (digits, [str(i) for i in range(10)], "the handwritten digit {}"),
    "letters": (letters, LETTERS, "the letter {}"),
    "shapes": (shapes, SHAPES, "a {} shape"),
    "gratings": (gratings, ORIENTATIONS, "{} stripes"),
    "colours": (colours, list(HUES), "a {} texture"),
    "counting": (counting, COUNTS, "{} dots"),
    "position": (position, QUADRANTS, "a square in the {}"),
    "checker": (checker, SCALES, "a {} checkerboard"),
}


# name -> what every image of the task shows, whatever its class: the caption of the
# "task"-style images in pretraining, which teaches the domains but not their classes
FAMILIES: dict[str, str] = {
    "digits": "a handwritten digit", "letters": "a letter", "shapes": "a coloured shape", "gratings": "stripes",
    "colours": "a coloured texture", "counting": "white dots", "position": "a small square",
    "checker": "a checkerboard",
}


# Descriptions of nothing the demo tasks show: the TEXTSPAN pool of the demo mixes them with the
# demo's own caption vocabulary, so a decoding that picks them has found nothing task-specific.
DISTRACTORS: tuple[str, ...] = (
    "a dog on a lawn", "a cat sleeping on a sofa", "a red sports car", "a city street at night",
    "an aerial view of farmland", "a bowl of fruit", "a mountain lake", "a crowd at a concert",
    "a plate of pasta", "a sailing boat at sea", "a snowy forest", "a close-up of a flower",
    "a portrait of a smiling person", "a bird on a branch", "a bicycle leaning on a wall", "a beach at sunset",
    "a kitchen interior", "a traffic sign", "a satellite image of a city", "a tissue sample under a microscope",
    "a penguin on ice", "a house with a garden", "a glass of water", "a pile of books", "a cloudy sky",
    "a brick wall", "a wooden table", "a green field", "a blurry photo", "a black and white photograph",
)


def description_pool() -> list[str]:
    """The demo's TEXTSPAN pool, deterministic: the first caption template with every task's family and
    class phrases (the vocabulary its tiny CLIP was pretrained on), then the distractor descriptions."""
    subjects = [FAMILIES[t] for t in TASKS] + [p for t in TASKS for p in class_phrases(t)] + list(DISTRACTORS)
    return list(dict.fromkeys(TEMPLATES[0].format(c=s) for s in subjects))


def class_phrases(task: str) -> list[str]:
    _, names, phrase = TASKS[task]
    return [phrase.format(n) for n in names]


def generate(task: str, n: int, seed: int, style: str = "task") -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of ``task`` with balanced labels; identical for identical (task, n, seed, style)."""
    if task not in TASKS:
        raise ValueError(f"unknown demo task {task!r}; choose from {sorted(TASKS)}")
    gen, names, _ = TASKS[task]
    rng = np.random.default_rng([seed, sorted(TASKS).index(task), style == "pretrain"])
    labels = rng.permutation(np.arange(n) % len(names))
    images = np.stack([gen(int(y), rng, style == "pretrain") for y in labels])
    return images, labels


def write_task(task: str, root: str, n_train: int, n_test: int, seed: int) -> None:
    """Official-style train/test splits plus a ``<X>Val`` validation carved from train."""
    train_x, train_y = generate(task, n_train, seed)
    test_x, test_y = generate(task, n_test, seed + 1)
    tr, va = carve_validation(n_train, seed=0)
    save_split(root, task, "train", train_x[tr], train_y[tr])
    save_split(root, task, "val", train_x[va], train_y[va])
    save_split(root, task, "test", test_x, test_y)
    side = test_x.shape[1]
    save_info(root, TaskInfo(task, class_phrases(task), TEMPLATES,
                             split_sizes={"train": len(tr), "val": len(va), "test": len(test_y)},
                             source_image_sizes=[[side, side], [side, side]]))
