"""The "When things go wrong" and "Configuration" commands of docs/running.md, run as written (issue 20 items
8, 9, 11): recovery after a crash (Snakemake killed while its job finished: the output exists but is
marked incomplete; or killed with its job mid-write: a hidden .part file is left), a corrupted
artifact, a bad download, and a user overlay layered after the demo preset with one --configfile."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.workflow import ROOT, env, snakemake, workflow_copy

from mass.data.store import load_split
from mass.heads import load_heads
from mass.io import ArtifactError, checksum_path

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text()
RUNNING = (ROOT / "docs/running.md").read_text()  # where the README's recovery and configuration moved
DOCS = [README, *(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))]
TARGET = "resources/checkpoints/tiny/pretrained_demo.safetensors"
SMALL_FILES = ("workflow/presets/demo.yaml", "slurm_demo.yaml")


def section(title: str) -> str:
    start = RUNNING.index(title)
    end = RUNNING.find("\n**", start + len(title))
    return RUNNING[start:end if end > 0 else None]


def commands(text: str) -> list[str]:
    """Command lines of the fenced bash blocks of ``text`` (comments dropped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines += [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    return lines


def small(command: str, target: str | None = TARGET) -> list[str]:
    """A README snakemake command on the smallest demo: tests/slurm_demo.yaml layered after the
    demo preset in the same --configfile flag, and one target, so the test runs one short job."""
    args = shlex.split(command)
    assert args[0] == "snakemake"
    if "--configfile" in args:
        args.insert(args.index("--configfile") + 2, "slurm_demo.yaml")
    else:
        args += ["--configfile", *SMALL_FILES]
    return ([target] if target and "--unlock" not in args else []) + args[1:]


def runs_alive_in(cwd: Path, check: str) -> list[str]:
    """The README's liveness check as written, then what it tells a user to look at: the processes it lists
    whose working directory (``readlink /proc/<PID>/cwd``) is this one."""
    run = subprocess.run(check, shell=True, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    alive = []
    for line in run.stdout.splitlines():
        pid = line.split()[0]
        if pid.isdigit() and os.path.realpath(f"/proc/{pid}/cwd") == str(cwd.resolve()):
            alive.append(line)
    return alive


HOOK = """\
import os, time
_target, _replace = os.environ["MASS_TEST_HANG_ON"], os.replace

def _replace_when_told(src, dst, *args, **kwargs):
    if str(dst).endswith(_target):  # the data is written, not yet renamed into place
        open(os.environ["MASS_TEST_READY"], "w").close()
        while not os.path.exists(os.environ["MASS_TEST_GO"]):
            time.sleep(0.1)
    return _replace(src, dst, *args, **kwargs)

os.replace = _replace_when_told
"""


def start_held_job(cwd, tmp_path, *extra: str) -> tuple[subprocess.Popen, dict]:
    """Snakemake making TARGET, its job held just before the rename until ``go`` exists."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    files = {name: tmp_path / name for name in ("ready", "go")}
    for f in files.values():
        f.unlink(missing_ok=True)
    job_env = {**env(), "PYTHONPATH": str(hook), "MASS_TEST_HANG_ON": TARGET.split("/", 2)[-1],
               "MASS_TEST_READY": str(files["ready"]), "MASS_TEST_GO": str(files["go"])}
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", TARGET, "--cores", "1", "--configfile",
                             *SMALL_FILES, *extra], cwd=cwd, env=job_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not files["ready"].exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert files["ready"].exists(), "the job never reached its rename"
    return proc, files


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A workflow copy with TARGET made once (a few seconds: the tiny CLIP, 8 steps)."""
    cwd = workflow_copy(tmp_path_factory.mktemp("recovery"))
    run = snakemake(TARGET, "--cores", "1", "--configfile", *SMALL_FILES, cwd=cwd, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return cwd


def test_readme_crash_recovery_after_snakemake_was_killed(built, tmp_path):
    """Snakemake SIGKILLed while its job runs; the job finishes on its own, so its output exists but
    Snakemake's marker says incomplete. A plain rerun refuses (IncompleteFilesException); the README's
    commands recover."""
    cwd = built
    proc, files = start_held_job(cwd, tmp_path, "--forcerun", "pretrain_demo_clip")
    os.kill(proc.pid, signal.SIGKILL)  # Snakemake only: its job lives on
    proc.wait()
    files["go"].touch()
    deadline = time.time() + 120
    while not ((cwd / TARGET).exists() and not list((cwd / TARGET).parent.glob(".*.part"))) \
            and time.time() < deadline:
        time.sleep(0.2)
    assert (cwd / TARGET).exists()
    time.sleep(1)

    plain = snakemake(TARGET, "--cores", "1", "--configfile", *SMALL_FILES, cwd=cwd, timeout=300)
    assert plain.returncode != 0  # locked, or (once unlocked) incomplete: what the README must handle

    alive, *recovery = commands(section("**After a crash**"))
    assert [c.split()[:2] for c in recovery] == [["snakemake", "--unlock"], ["snakemake", "--cores"]]
    assert not runs_alive_in(cwd, alive)  # the killed run is over
    unlock = snakemake(*small(recovery[0]), cwd=cwd, timeout=300)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    unlocked_plain = snakemake(TARGET, "--cores", "1", "--configfile", *SMALL_FILES, cwd=cwd, timeout=300)
    assert unlocked_plain.returncode != 0 and "IncompleteFilesException" in unlocked_plain.stderr
    rerun = snakemake(*small(recovery[1]), cwd=cwd, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again = snakemake(TARGET, "-n", "--cores", "1", "--configfile", *SMALL_FILES, cwd=cwd, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_readme_crash_recovery_after_a_killed_write_removes_its_part_file(built, tmp_path):
    """Snakemake and its job SIGKILLed between writing and renaming: a hidden .part file is left; the
    README's recovery reruns the rule, which removes it."""
    cwd = built
    proc, _ = start_held_job(cwd, tmp_path, "--forcerun", "pretrain_demo_clip")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    target = cwd / TARGET
    parts = list(target.parent.glob(f".{target.name}.*.part"))
    assert parts and not target.exists()
    alive, *recovery = commands(section("**After a crash**"))
    assert not runs_alive_in(cwd, alive)
    for command in recovery:
        run = snakemake(*small(command), cwd=cwd, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    assert target.exists()
    assert not any(p.exists() for p in parts)
    assert not list(target.parent.glob(f".{target.name}.*.part"))


def test_readme_corrupted_file_recovery(built):
    cwd = built
    target = cwd / TARGET
    data = bytearray(target.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)
    target.write_bytes(bytes(data))
    verify, rerun = commands(section("**A corrupted file**"))
    assert verify == "python -m mass.io verify --delete results resources"
    run = subprocess.run([sys.executable, *shlex.split(verify)[1:]], cwd=cwd, env=env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"DELETED {TARGET}" in run.stdout and not target.exists()
    remade = snakemake(*small(rerun), cwd=cwd, timeout=600)
    assert remade.returncode == 0, remade.stderr[-3000:]
    assert target.exists()


def test_readme_corrupted_split_recovery_remakes_the_split(built):
    """A prepared split file (here validation labels) fails its check; the README's two commands delete it
    and remake it: every split file is a declared output of its preparing rule and an input of its readers."""
    cwd, split = built, "resources/data/demo/digits/val_labels.npy"
    made = snakemake(split, "--cores", "1", "--configfile", *SMALL_FILES, cwd=cwd, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    (cwd / split).write_bytes((cwd / split).read_bytes()[:-8] + bytes(8))
    with pytest.raises(ArtifactError, match="val_labels.npy does not match the sha256.*rerun"):
        load_split(cwd / "resources/data/demo", "digits", "val")
    verify, rerun = commands(section("**A corrupted file**"))
    run = subprocess.run([sys.executable, *shlex.split(verify)[1:]], cwd=cwd, env=env(), capture_output=True,
                         text=True, timeout=300)
    assert f"DELETED {split}" in run.stdout and not (cwd / split).exists()
    reader = snakemake("results/tiny/tasks/digits/endpoints.json", "-n", "--cores", "1", "--configfile",
                       *SMALL_FILES, cwd=cwd, timeout=300)
    assert "generate_demo_task" in reader.stdout + reader.stderr  # a reader of the split plans its remaking
    remade = snakemake(*small(rerun, target=split), cwd=cwd, timeout=600)
    assert remade.returncode == 0, remade.stderr[-3000:]
    images, labels = load_split(cwd / "resources/data/demo", "digits", "val")
    assert len(images) == len(labels) > 0


def test_readme_bad_download_recovery_plans_the_download_again(tmp_path):
    cwd = workflow_copy(tmp_path)
    remove, rerun = commands(section("**A bad download**"))
    assert remove == "rm -rf resources/raw/MNIST" and rerun == "snakemake --cores all"
    raw = cwd / "resources/raw/MNIST"
    raw.mkdir(parents=True)
    (raw / "manifest.json").write_text("{}")
    subprocess.run(shlex.split(remove), cwd=cwd, check=True)
    plan = snakemake(*shlex.split(rerun)[1:], "-n", "resources/raw/MNIST/manifest.json", cwd=cwd, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "download_dataset" in plan.stdout + plan.stderr


# --- item 11: one --configfile flag ---------------------------------------------------------

def test_readme_never_gives_configfile_twice():
    for line in "\n".join(DOCS).splitlines():
        assert line.count("--configfile") <= 1, line


def test_readme_user_overlay_example_works_as_written(tmp_path):
    cwd = workflow_copy(tmp_path)
    block = re.search(r"## Configuration\n.*?```bash\n(.*?)```", RUNNING, re.S).group(1)
    assert "--configfile workflow/presets/demo.yaml my.yaml" in block
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    overlay = yaml.safe_load((cwd / "my.yaml").read_text())
    assert overlay["routing"]["top_k"] == 2
    # both files reach the rules: the demo's tiny backbone, the overlay's top-k and dpi
    printed = snakemake("-n", "-p", "--cores", "2", "--configfile", "workflow/presets/demo.yaml", "my.yaml",
                        cwd=cwd, timeout=300)
    out = printed.stdout + printed.stderr
    assert "--model mass-tiny-vit" in out and "--top-k 2" in out and "--dpi 100" in out


def test_configfile_given_twice_is_refused(tmp_path):
    cwd = workflow_copy(tmp_path)
    (cwd / "my.yaml").write_text("routing: {top_k: 2}\n")
    run = snakemake("-n", "--cores", "2", "--configfile", "workflow/presets/demo.yaml", "--configfile", "my.yaml",
                    cwd=cwd, timeout=300)
    assert run.returncode != 0
    assert "--configfile is given 2 times" in run.stderr + run.stdout


def test_swapped_head_is_refused_and_deleting_it_remakes_it(built):
    """docs/running.md, "Another task's or backbone's file in its place": a head copied over another's with
    its checksum passes verify but is refused on reading; the advice as written (delete the file, rerun the
    same command) remakes the right one."""
    cwd = built
    heads = {t: f"resources/checkpoints/tiny/heads/{t}.safetensors" for t in ("digits", "gratings")}
    made = snakemake(*heads.values(), "--cores", "1", "--configfile", *SMALL_FILES, cwd=cwd, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    source, target = cwd / heads["digits"], cwd / heads["gratings"]
    shutil.copyfile(source, target)  # what `cp -a` of one head over another does: the file and its checksum
    shutil.copyfile(checksum_path(source), checksum_path(target))
    advice = section("**Another task's or backbone's file in its place**")
    assert "Delete the file and rerun the same command" in advice
    with pytest.raises(ArtifactError, match="gratings.safetensors is the head of digits, not of 'gratings'"):
        load_heads([str(cwd / heads["gratings"])], ["gratings"], "mass-tiny-vit")
    (cwd / heads["gratings"]).unlink()
    remade = snakemake(heads["gratings"], "--cores", "1", "--configfile", *SMALL_FILES, cwd=cwd, timeout=600)
    assert remade.returncode == 0, remade.stderr[-3000:]
    _, names = load_heads([str(cwd / heads["gratings"])], ["gratings"], "mass-tiny-vit")
    assert names == ["gratings"]
