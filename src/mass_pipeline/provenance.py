"""Are a run's inputs the ones its edition used? Its fine-tuned endpoints against the published ones.

A checkpoint is identified by what it does: the fine-tuned test accuracy a run measures on each
task (``evaluate_endpoints``) is compared with the accuracy the edition published for that task
(:mod:`mass_pipeline.editions`). A task further apart than the tolerance, and neither a deviation the
edition documents (the first edition's DTD, whose checkpoint the hub replaced) nor one the user
accepted in the config, means the run is not reproducing that edition: the check stops the DAG
before any merge is built, and says which task, both numbers, the likely cause and the two ways on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mass_pipeline.editions import Edition

# Verdicts, in the order a reader should worry about them.
MISMATCH = "mismatch"
DEVIATION = "documented deviation"
ACCEPTED = "accepted deviation"
TRAINED_HERE = "fine-tuned here"
OWN_FILE = "your file"
UNPUBLISHED = "not published"
MATCH = "match"


@dataclass(frozen=True)
class Comparison:
    """One task's published and measured fine-tuned test accuracy (in %), their difference and verdict."""

    backbone: str
    task: str
    published: float | None
    measured: float
    difference: float | None
    verdict: str
    note: str

    def row(self) -> dict:
        return asdict(self)


def compare(edition: Edition, backbone: str, measured: dict[str, float], tolerance: float,
            accepted: frozenset[str] = frozenset(), trained_here: frozenset[str] = frozenset(),
            own: frozenset[str] = frozenset()) -> list[Comparison]:
    """Every task of ``measured`` (fractions) against ``edition``'s published accuracy; ``tolerance`` in points.

    Tasks fine-tuned by this run (``trained_here``) and encoders the user gave (``own``:
    ``finetuned.files``) are not the edition's checkpoints: their difference is reported, never held
    against the run. A documented or accepted deviation is reported whatever its size.
    """
    out = []
    for task, value in measured.items():
        published = edition.published_finetuned(backbone, task)
        ours = round(100 * value, 2)
        if published is None:
            out.append(Comparison(backbone, task, None, ours, None, UNPUBLISHED,
                                  f"the {edition.name} edition publishes no fine-tuned accuracy for {backbone} {task}"))
            continue
        paper = round(100 * published, 2)
        diff = round(ours - paper, 2)
        if task in own:
            verdict, note = OWN_FILE, "the encoder given in finetuned.files, not the edition's checkpoint"
        elif task in trained_here:
            verdict, note = TRAINED_HERE, "fine-tuned by this run (finetuned.refinetune or source finetune)"
        elif task in edition.deviations:
            verdict, note = DEVIATION, edition.deviations[task]
        elif abs(diff) <= tolerance:
            verdict, note = MATCH, f"within provenance.tolerance ({tolerance:g} points)"
        elif task in accepted:
            verdict, note = ACCEPTED, "accepted in the config (provenance.accept)"
        else:
            verdict, note = MISMATCH, f"differs by more than provenance.tolerance ({tolerance:g} points)"
        out.append(Comparison(backbone, task, paper, ours, diff, verdict, note))
    return out


def stop_message(edition: Edition, mismatches: list[Comparison], tolerance: float) -> str:
    """One message for every mismatching task: both numbers, the likely cause and the two ways on."""
    record = edition.record(edition.finetuned_record)
    lines = [f"the fine-tuned checkpoints are not those of the {edition.name} edition ({edition.title}); "
             "no merge or evaluation was started:"]
    for c in mismatches:
        lines.append(f"  {c.backbone} {c.task}: fine-tuned test accuracy {c.measured:.2f}% measured here, "
                     f"{c.published:.2f}% published ({c.difference:+.2f} points, tolerance {tolerance:g})")
    lines += [
        f"  published numbers: {record.cite if record else 'the edition file'}",
        "  likely cause: a checkpoint other than the edition's (a source, revision or folder that serves another "
        "encoder, or one the hub has replaced since), or test data other than the edition's",
        "  ways on: (1) run the edition these checkpoints belong to (the final one: --configfile "
        "workflow/presets/final.yaml, in a working directory of its own; docs/data.md, 'The two editions'), or "
        "(2) accept the deviation: list the task under provenance.accept in your config (the tables then footnote "
        "it)",
    ]
    return "\n".join(lines)
