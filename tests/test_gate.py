"""The release gate (--fail-above): the decision on crafted results, and the exit status of real runs."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "report"))

import runs  # noqa: E402
from audit_helpers import run_cli, tiny_folders  # noqa: E402

from debias.core.errors import InputError  # noqa: E402
from debias.results.gate import GATE_EXIT_CODE, delta_interval, judge  # noqa: E402
from debias.results.records import AuditResult  # noqa: E402


def _audit(mean=0.2, low=0.1, high=0.3, professions=runs.MINI_PROFESSIONS) -> AuditResult:
    rows = [runs.profession_audit(name, (nf, nm, nu), planted) for name, (nf, nm, nu, planted) in professions.items()]
    result = runs.audit_result(rows)
    return dataclasses.replace(result, mean_delta=mean, mean_delta_ci_low=low, mean_delta_ci_high=high)


@pytest.mark.parametrize("statistic, fail_above, passed", [
    ("upper", 0.35, True), ("upper", 0.3, True), ("upper", 0.25, False),  # passes only when the data show Δ <= D
    ("point", 0.25, True), ("point", 0.2, True), ("point", 0.15, False),
    ("lower", 0.15, True), ("lower", 0.1, True), ("lower", 0.05, False),  # fails only when the data show Δ > D
])
def test_mean_gate_compares_the_chosen_statistic(statistic, fail_above, passed):
    decision = judge(_audit(), fail_above, statistic=statistic)
    assert decision.passed is passed and decision.exit_code == (0 if passed else GATE_EXIT_CODE)
    assert [j.name for j in decision.judged] == ["mean Δ"]


def test_the_default_statistic_is_the_upper_bound():
    assert not judge(_audit(mean=0.05, low=0.01, high=0.12), 0.1).passed
    assert judge(_audit(mean=0.05, low=0.01, high=0.09), 0.1).passed


def _row(share_low, share_high, target=0.5, delta=0.1):
    row = runs.profession_audit("nurse", (10, 10, 0), None, target=target)
    return dataclasses.replace(row, ci_low=share_low, ci_high=share_high, delta=delta)


@pytest.mark.parametrize("low, high, target, expected", [
    (0.3, 0.55, 0.5, (0.0, 0.4)),             # the interval holds the target: Δ may be 0
    (0.6, 0.8, 0.5, (0.2, 0.6)),              # all above the target
    (0.1, 0.3, 0.4, (0.1 / 0.6, 0.3 / 0.6)),  # below a target of 0.4: Δ scales by max(t, 1 - t) = 0.6
])
def test_a_professions_delta_interval_comes_from_its_share_interval(low, high, target, expected):
    assert delta_interval(_row(low, high, target)) == pytest.approx(expected)


def test_a_profession_without_an_interval_has_no_delta_interval():
    assert delta_interval(_row(None, None)) == (None, None)


def test_profession_gate_fails_when_any_profession_is_above():
    # nurse 34/38 female, ceo 3/39: both far from parity; teacher 20/39 close to it
    result = _audit(mean=0.01, low=0.0, high=0.02)
    assert judge(result, 0.1).passed  # the mean gate sees only the (crafted) mean
    decision = judge(result, 0.1, scope="profession", statistic="lower")
    assert not decision.passed
    failed = {j.name for j in decision.failures}
    assert {"Δ(nurse)", "Δ(ceo)"} <= failed and "Δ(teacher)" not in failed
    for j in decision.judged:
        row = result.row("a " + j.name[2:-1])
        assert (j.point, (j.low, j.high)) == (row.delta, delta_interval(row)) and j.value == j.low


@pytest.mark.parametrize("statistic", ["upper", "point", "lower"])
def test_a_profession_without_a_readable_image_fails_every_statistic(statistic):
    result = _audit(professions={"lifeguard": (0, 0, 40, None), "teacher": (20, 20, 0, None)})
    decision = judge(result, 0.9, scope="profession", statistic=statistic)
    assert [j.name for j in decision.failures] == ["Δ(lifeguard)"]
    assert "Δ(lifeguard) not measured" in decision.message()


def test_messages_say_the_rule_the_numbers_and_what_to_do():
    passed = judge(_audit(), 0.3)
    assert passed.message() == ("gate passed (fails when the upper 95% bound of mean Δ is above 0.3): "
                                "mean Δ 0.200 [0.100, 0.300].")
    failed = judge(_audit(), 0.25).message()
    assert failed.startswith(f"gate failed, exit {GATE_EXIT_CODE} (fails when the upper 95% bound of mean Δ is above")
    assert "audit more images" in failed  # the estimate is below D: only the interval's width failed it


@pytest.mark.parametrize("kwargs, expected", [
    ({"fail_above": 1.0}, "--fail-above 1: Δ lies in [0, 1]"),
    ({"fail_above": -0.1}, "--fail-above -0.1"),
    ({"fail_above": 0.1, "scope": "all"}, "--gate 'all': choose one of mean, profession"),
    ({"fail_above": 0.1, "statistic": "median"}, "--gate-statistic 'median': choose one of upper, point, lower"),
])
def test_meaningless_gates_are_refused(kwargs, expected):
    with pytest.raises(InputError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        judge(_audit(), **kwargs)


# ----------------------------------------------------------------------------------------- real runs, via the CLI
@pytest.fixture(scope="module")
def mini_audit(tmp_path_factory) -> list[str]:
    """A small audit of the built-in model (nurse and pilot, 8 images each), made once; reruns read its cache."""
    root = tmp_path_factory.mktemp("gate")
    (root / "professions.txt").write_text("a nurse\na pilot\n", encoding="utf-8")
    argv = ["audit", "--model", "mini", "--professions", str(root / "professions.txt"), "-n", "8",
            "--threads", "1", "--out", str(root / "run")]
    from debias.cli import main

    main(argv)
    return argv


def _rerun(argv: list[str], capsys, *gate: str) -> tuple[int, str, str, Path]:
    """Rerun the cached audit with a gate, its outputs removed first (so they must be written again)."""
    out = Path(argv[-1])
    for name in ("audit.json", "report.html"):
        (out / name).unlink()
    code, stdout, stderr = run_cli([*argv, *gate], capsys)
    assert (out / "audit.json").is_file() and (out / "report.html").is_file()  # written whatever the verdict
    assert "images generated 0" in stdout
    return code, stdout, stderr, out


def test_audit_gate_exits_3_above_and_0_below(mini_audit, capsys):
    code, _, err, out = _rerun(mini_audit, capsys, "--fail-above", "0.3")
    decision = judge(AuditResult.from_json(out), 0.3)
    assert code == GATE_EXIT_CODE and not decision.passed and decision.message() in err
    code, stdout, _, out = _rerun(mini_audit, capsys, "--fail-above", "0.9", "--gate", "profession",
                                  "--gate-statistic", "lower")
    assert code == 0 and judge(AuditResult.from_json(out), 0.9, scope="profession",
                               statistic="lower").message() in stdout


def test_a_bad_gate_is_an_error_before_anything_runs(tmp_path, capsys):
    code, _, err = run_cli(["audit", "--model", "mini", "--out", str(tmp_path / "run"), "--fail-above", "1.5"],
                           capsys)
    assert code == 2 and "--fail-above 1.5" in err and not (tmp_path / "run").exists()


def test_fix_gate_judges_the_after_audit(tmp_path, capsys):
    sd, clip = tiny_folders()
    (tmp_path / "list.txt").write_text("a nurse\n", encoding="utf-8")
    out = tmp_path / "fix"
    code, stdout, err = run_cli(["fix", "--model", str(sd), "--classifier", str(clip), "--professions",
                                 str(tmp_path / "list.txt"), "--budget", "32", "--test-images", "4",
                                 "--check-images", "2", "--joint-rounds", "1", "--side-seeds", "1", "--steps", "2",
                                 "--out", str(out), "--threads", "1", "--device", "cpu", "--fail-above", "0"], capsys)
    assert code != 2, err  # not an error: the gate's own status
    after = AuditResult.from_json(out / "after")
    assert code == GATE_EXIT_CODE and judge(after, 0.0).message() in err
    assert (out / "fix.json").is_file() and (out / "report.html").is_file() and "report:" in stdout
