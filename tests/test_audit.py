"""The audit verb end to end: outputs, resume after kill -9, accelerate split, CLI errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit_helpers import HalfClassifier, load_tiny, tiny_folders
from debias.results.records import AuditResult  # noqa: E402
from debias.verbs.audit import audit
from debias.cli import main

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = ("started_at", "finished_at", "wall_seconds", "hardware", "images_generated", "images_reused")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DEBIAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    return env


def _list(tmp_path: Path, text: str = "a nurse\nan engineer | target=0.3\na pilot\n") -> Path:
    path = tmp_path / "professions.txt"
    path.write_text(text, encoding="utf-8")
    return path


def _cli_args(out: Path, professions: Path, n: int, extra: tuple[str, ...] = ()) -> list[str]:
    sd, clip = tiny_folders()
    return ["audit", "--model", str(sd), "--classifier", str(clip), "--professions", str(professions),
            "--images-per-profession", str(n), "--steps", "2", "--out", str(out), *extra]


def _numbers(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def test_audit_writes_json_csv_and_images(tmp_path: Path) -> None:
    pipe, _ = load_tiny()
    out = tmp_path / "run"
    rec = audit(pipe, classifier=HalfClassifier(), professions=_list(tmp_path), images_per_profession=10,
                out=out, steps=2, batch_size=4, progress=False).to_dict()
    on_disk = json.loads((out / "audit.json").read_text())
    assert on_disk == rec
    # the typed result owns its file: read and written again, it is the same bytes
    assert AuditResult.from_json(out).to_json() == (out / "audit.json").read_text()
    assert rec["kind"] == "audit" and rec["prompt_set"] == "test" and rec["images_generated"] == 30
    assert rec["generation"]["steps"] == 2 and rec["generation"]["batch_size"] == 4
    assert rec["templates"] == ["A painting of {}", "{} working", "{} laughing", "{} in the workplace", "{} digital art"]
    rows = rec["professions"]
    assert [r["phrase"] for r in rows] == ["a nurse", "an engineer", "a pilot"]
    assert [r["target"] for r in rows] == [0.5, 0.3, 0.5]
    for r in rows:
        assert r["n"] == 10 == r["n_female"] + r["n_male"] + r["n_unclear"] == len(r["samples"])
        assert [s["seed"] for s in r["samples"]] == list(range(10))
        assert r["samples"][0]["prompt"] == f"A painting of {r['phrase']}"
        assert r["samples"][1]["prompt"] == f"{r['phrase']} working"
        assert all((out / s["image"]).is_file() for s in r["samples"])
        # per prompt: the samples of that prompt, counted again; together they make the profession's counts
        assert [b["prompt"] for b in r["by_prompt"]] == [t.format(r["phrase"]) for t in rec["templates"]]
        for b in r["by_prompt"]:
            labels = [s["label"] for s in r["samples"] if s["prompt"] == b["prompt"]]
            assert (b["n_female"], b["n_male"], b["n_unclear"]) == (
                labels.count("female"), labels.count("male"), labels.count("unclear"))
        assert sum(b["n"] for b in r["by_prompt"]) == r["n"]
        assert sum(b["n_female"] for b in r["by_prompt"]) == r["n_female"]
        k, m = r["n_female"], r["n_male"]
        if k + m:
            assert r["share_female"] == pytest.approx(k / (k + m))
            assert r["ci_low"] <= r["share_female"] <= r["ci_high"]
    assert sum(r["n_female"] for r in rows) > 0 and sum(r["n_male"] for r in rows) > 0
    with open(out / "audit.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [t["phrase"] for t in table] == ["a nurse", "an engineer", "a pilot"]
    assert float(table[1]["target"]) == 0.3 and int(table[0]["n"]) == 10

    again = audit(pipe, classifier=HalfClassifier(), professions=_list(tmp_path), images_per_profession=10,
                  out=out, steps=2, batch_size=3, progress=False).to_dict()
    assert again["images_generated"] == 0 and again["images_reused"] == 30
    assert _numbers(again)["professions"] == _numbers(rec)["professions"]
    assert again["mean_delta"] == rec["mean_delta"]


def test_sequential_stopping(tmp_path: Path) -> None:
    pipe, _ = load_tiny()
    rec = audit(pipe, classifier=HalfClassifier(), professions=_list(tmp_path, "a nurse\na pilot\n"),
                images_per_profession=4, out=tmp_path / "seq", steps=2, ci_width=0.55, max_images=24,
                progress=False, prompt_set="tuning").to_dict()
    from debias.stats import binary as stats

    assert rec["stopping"]["ci_width"] == 0.55 and rec["prompt_set"] == "tuning"
    for r in rec["professions"]:
        assert r["n"] % 4 == 0 and 4 <= r["n"] <= 24
        width = r["ci_high"] - r["ci_low"]
        assert width <= 0.55 or r["n"] == 24
        # it stopped at the first round that was narrow enough
        prev = r["samples"][: r["n"] - 4]
        f, m, _ = stats.count_labels([s["label"] for s in prev])
        low, high = stats.wilson_interval(f, f + m)
        assert r["n"] == 4 or high - low > 0.55


def _image_lines(out: Path) -> int:
    total = 0
    for path in (out / "index").glob("*.jsonl"):
        total += path.read_text(errors="replace").count('"type": "image"')
    return total


def test_killed_run_resumes_without_redoing_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = _cli_args(out, _list(tmp_path), 24, ("--batch-size", "2"))
    cmd = [sys.executable, "-m", "debias", *args]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300  # generous: a loaded machine starts python slowly
        while _image_lines(out) < 8:
            assert proc.poll() is None, "the audit finished before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = _image_lines(out)
    assert 8 <= done < 72 and not (out / "audit.json").exists()
    main(args)  # the same command again, in this process
    printed = capsys.readouterr().out
    rec = json.loads((out / "audit.json").read_text())
    assert rec["images_reused"] >= 8 and rec["images_reused"] >= done - 2
    assert rec["images_generated"] + rec["images_reused"] == 72
    assert rec["images_generated"] == 72 - rec["images_reused"] > 0
    assert "images generated" in printed and "±0.10" in printed


@pytest.mark.slow
def test_two_process_accelerate_run_equals_one_process(tmp_path: Path) -> None:
    professions = _list(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    # with an attribute and an intersection, so their labelling is split over the processes too
    attributes = ("--attribute", "skin", "--intersect", "gender,skin")
    main(_cli_args(one, professions, 8, ("--batch-size", "3", *attributes)))
    args2 = _cli_args(two, professions, 8, ("--batch-size", "3", "--threads", "1", *attributes))
    # accelerate's --cpu launcher starts one process (several need MPI); --multi_gpu starts them with
    # torchrun, and without a GPU debias joins them in accelerate's multi-CPU (gloo) state
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "debias", *args2]
    r2 = subprocess.run(launch, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a = json.loads((one / "audit.json").read_text())
    b = json.loads((two / "audit.json").read_text())
    assert b["hardware"]["processes"] == 2 and a["hardware"]["processes"] == 1
    assert _numbers(a) == _numbers(b)
    assert sorted(p.name for p in (two / "index").glob("*.jsonl")) == ["rank0.jsonl", "rank1.jsonl"]
    assert _image_lines(two) == 24 and b["images_generated"] == 24
    assert b["attributes"][0]["attribute"] == "skin" and b["intersections"][0]["attributes"] == ["gender", "skin"]
    skin_labels = [json.loads(line) for f in (two / "index").glob("*.jsonl") for line in f.read_text().splitlines()
                   if '"attribute": "skin"' in line]
    assert len(skin_labels) == 24 and {r["key"] for r in skin_labels} == {  # each image labelled once, by one process
        Path(s["image"]).stem for r in b["professions"] for s in r["samples"]}


# ------------------------------------------------------------------------------------------ CLI errors
def _cli_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\nerror: " in "\n" + err
    return err[err.index("error: "):]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a nurse\nnurse\n", ":2: 'nurse' must start with its article"),
        ("a nurse\na pilot\na nurse\n", ":3: 'a nurse' is listed twice (first at"),
        ("# nothing here\n\n", "no professions in the list"),
        ("a nurse | target=2\n", ":1: target 2.0 is outside [0, 1]"),
    ],
)
def test_cli_bad_professions_list(tmp_path: Path, capsys, text: str, expected: str) -> None:
    path = _list(tmp_path, text)
    err = _cli_error(capsys, _cli_args(tmp_path / "out", path, 2))
    assert str(path) in err and expected in err


def test_cli_over_long_prompt(tmp_path: Path, capsys) -> None:
    long = "a " + " ".join(["very"] * 80) + " long job"
    path = _list(tmp_path, f"a nurse\n{long}\n")
    err = _cli_error(capsys, _cli_args(tmp_path / "out", path, 2))
    assert f"{path}:2:" in err and "at most 77" in err


def test_cli_unknown_model_folder_and_bad_options(tmp_path: Path, capsys) -> None:
    err = _cli_error(capsys, ["audit", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "o")])
    assert "no-such-model" in err and "no such folder" in err
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    err = _cli_error(capsys, ["audit", "--model", str(empty), "--out", str(tmp_path / "o")])
    assert "model_index.json" in err
    err = _cli_error(capsys, _cli_args(tmp_path / "o", _list(tmp_path), 2, ("--ci-width", "1.5")))
    assert "--ci-width" in err
    err = _cli_error(capsys, _cli_args(tmp_path / "o", _list(tmp_path), 2, ("--templates", "a photo of")))
    assert "--templates" in err
    err = _cli_error(capsys, _cli_args(tmp_path / "o", _list(tmp_path), 2, ("--prompt-set", "validation")))
    assert "--prompt-set" in err


# ------------------------------------------------------------------------------------------ mini model
@pytest.mark.slow
def test_mini_model_audit_reads_the_planted_bias(tmp_path: Path) -> None:
    """On the shipped mini model the audit recovers the ordering of planted shares, and the CLIP reading
    agrees with the pixel oracle (the ground truth of what was drawn)."""
    from debias.core.prompts import ProfessionEntry

    entries = [ProfessionEntry("a nurse"), ProfessionEntry("a baker"), ProfessionEntry("an engineer")]
    rec = audit("mini", professions=entries, images_per_profession=32, out=tmp_path / "mini", prompt_set="tuning",
                progress=False).to_dict()
    rows = {r["profession"]: r for r in rec["professions"]}
    assert rec["model"]["profile"] == "mini" and rec["classifier"]["backend"] == "mini-clip"
    assert [rows[p]["planted_share"] for p in ("nurse", "baker", "engineer")] == [0.9, 0.5, 0.1]
    assert rows["nurse"]["share_female"] > rows["baker"]["share_female"] > rows["engineer"]["share_female"]
    assert rows["nurse"]["ci_low"] > 0.5 > rows["engineer"]["ci_high"]
    for r in rows.values():
        assert r["n_unclear"] <= 0.2 * r["n"]
        assert all(s["oracle"] in ("female", "male", "unclear") for s in r["samples"])
    both = [s for r in rows.values() for s in r["samples"]
            if s["oracle"] in ("female", "male") and s["label"] in ("female", "male")]
    assert sum(s["oracle"] == s["label"] for s in both) / len(both) >= 0.85  # CLIP reads what was drawn
    covered = [r["ci_low"] <= r["oracle_share"] <= r["ci_high"] for r in rows.values()]
    assert sum(covered) >= 2
