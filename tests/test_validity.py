"""The validity package: PPI shares, agreement and κ, the label file, CSV import, the sample, the run summary.

The PPI estimator is checked against values from the authors' library (``ppi_py`` 0.2.3) where the two
coincide (nobody ever unclear), against closed forms, and by coverage on simulated data.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from validity_runs import balanced, key_of, make_run  # noqa: E402

from debias.core.errors import InputError  # noqa: E402
from debias.stats.binary import wilson_interval  # noqa: E402
from debias.validity import (  # noqa: E402
    LabelRecord, LabelStore, agreement, classifier_share, cohens_kappa, confusion, draw_sample, error_rate,
    flag_professions, holm, human_share, import_labels_csv, labeller_kappas, labels_needed, load_run, ppi_share,
    sample_for_run, validity_for_run,
)
from debias.validity.ppi import LABELS_FOR_05, LABELS_FOR_10, wilson_half_width, z_value  # noqa: E402


# ------------------------------------------------------------------------------------------------ PPI
# Reference values from ppi_py 0.2.3 (``ppi_mean_ci(Y, Yhat, Yhat_unlabeled, alpha=0.05, lam=…)`` and
# ``ppi_mean_pointestimate``) on these 0/1 strings (40 labelled, 120 unlabelled images; 1 = female).
Y = "1001101100000110000001000010010110010101"
YHAT = "0001101010001010001111010100000001010101"
YHAT_U = ("110101111011001110111010010101101000110001001111100110001110101100010100010010100000101101011000001000"
          "000000011100001110")
PPI_PY = {None: (0.38380677322361134, 0.23627661258785346, 0.5313369338593692),
          1.0: (0.4333333333333333, 0.22380740129022203, 0.6428592653764446),
          0.5: (0.4041666666666667, 0.24461799660066996, 0.5637153367326634)}


def _bits(text: str) -> list[int]:
    return [int(c) for c in text]


@pytest.mark.parametrize("lam", [None, 1.0, 0.5])
def test_ppi_matches_ppi_py_reference_values(lam):
    """Nobody unclear: the ratio estimator is PPI's mean, with the same power-tuned λ and variance."""
    ours = ppi_share(_bits(Y), _bits(YHAT), _bits(YHAT_U), lam=lam, interval="wald")
    assert (ours.estimate, ours.ci_low, ours.ci_high) == pytest.approx(PPI_PY[lam], abs=1e-12)
    score = ppi_share(_bits(Y), _bits(YHAT), _bits(YHAT_U), lam=lam)          # same estimate and λ, score bounds
    assert score.estimate == ours.estimate and score.lam == ours.lam
    assert score.ci_low < ours.estimate < score.ci_high and score.width == pytest.approx(ours.width, rel=0.15)
    assert ours.method == ("ppi++" if lam is None else "ppi") and ours.n_labelled == 40 and ours.n_unlabelled == 120


def test_ppi_closed_forms():
    human = ["female", "male", "female", "male"]
    pred = ["female", "female", "female", "male"]
    unl = ["female"] * 6 + ["male"] * 4
    # λ = 1: classifier share on the unlabelled images + the mean correction: 0.6 + (2/4 − 3/4) = 0.35
    plain = ppi_share(human, pred, unl, lam=1.0, interval="wald")
    assert plain.estimate == pytest.approx(0.35)
    rect = np.array([0, -1, 0, 0], float)  # F − F̂ on the labelled images (θ·G terms cancel: G = Ĝ = 1)
    half = z_value(0.95) * np.sqrt(np.var(rect) / 4 + np.var(np.r_[np.ones(6), np.zeros(4)]) / 10)
    assert plain.ci_low == 0.0 and plain.ci_high == pytest.approx(0.35 + half)   # clipped at 0
    # λ = 0: the human labels alone; the score interval is then Wilson's exactly
    assert ppi_share(human, pred, unl, lam=0.0).estimate == pytest.approx(0.5)
    few = ["female"] * 3 + ["male"] * 37 + ["unclear"] * 2
    classical = ppi_share(few, few, ["male"] * 50, lam=0.0)
    assert (classical.ci_low, classical.ci_high) == pytest.approx(wilson_interval(3, 40), abs=1e-12)
    # a ratio with unclear labels: (λ·mean_u F̂ + mean_l(F − λF̂)) / (λ·mean_u Ĝ + mean_l(G − λĜ)) at λ = 1
    human = ["female", "unclear", "male", "no_person", "female"]
    pred = ["female", "female", "unclear", "unclear", "male"]
    unl = ["female", "male", "unclear", "female"]
    num = 2 / 4 + (2 - 2) / 5
    den = 3 / 4 + (3 - 3) / 5
    assert ppi_share(human, pred, unl, lam=1.0).estimate == pytest.approx(num / den)
    # every image labelled: the human share exactly (λ is 0, the classifier adds nothing)
    every = ppi_share(human, pred, [])
    assert every.estimate == pytest.approx(2 / 3) and every.lam == 0.0 and every.n_unlabelled == 0


def test_ppi_edge_cases_and_errors():
    assert ppi_share([], [], ["female", "male"]).estimate is None
    nobody = ppi_share(["unclear", "no_person"], ["female", "male"], ["female"], lam=0.0)
    assert nobody.estimate is None and (nobody.ci_low, nobody.ci_high) == (0.0, 1.0)
    numeric = ppi_share([1, 0, None], [1, 1, 0], [1, 0, 0])
    assert numeric.n_labelled == 3 and 0.0 <= numeric.ci_low <= numeric.ci_high <= 1.0
    with pytest.raises(ValueError, match="same images"):
        ppi_share(["female"], [], [])
    with pytest.raises(ValueError, match="lam must be"):
        ppi_share(["female"], ["male"], [], lam=2.0)
    with pytest.raises(ValueError, match="numeric labels"):
        ppi_share([2], [1], [])
    d = ppi_share(["female", "male"], ["female", "male"], ["male"]).to_dict()
    assert set(d) >= {"estimate", "ci_low", "ci_high", "n_labelled", "n_unlabelled", "method"}
    assert d["interval"] == "score" and d["method"] == "ppi++"
    with pytest.raises(ValueError, match="interval must be"):
        ppi_share(["female"], ["male"], [], interval="exact")


@pytest.mark.parametrize("truth, p_fm, p_mf", [(0.6, 0.25, 0.0), (0.06, 0.4, 0.1)])
def test_ppi_covers_the_true_share_and_the_classifier_alone_does_not(truth, p_fm, p_mf):
    """300 simulated audits of 600 images, 100 labelled; the classifier flips female→male with probability p_fm,
    male→female with p_mf, and abstains on 5%.

    PPI's 95% interval must cover the true share in at least 88% of draws (a true 95% falls that low with
    probability below 1e-6 at 300 draws: 5.6 binomial standard deviations); the classifier's Wilson interval,
    centred on a biased share, covers in far fewer. The second case is a share near 0, where the Wald form
    undercovers and the score form does not.
    """
    rng = np.random.default_rng(7)
    n, big_n, draws = 100, 500, 300
    ppi_hits = clf_hits = 0
    labels = np.array(["female", "male", "unclear"])
    for _ in range(draws):
        y = np.where(rng.random(n + big_n) < truth, 0, 1)                 # 0 female, 1 male
        pred = y.copy()
        coin = rng.random(n + big_n)
        pred[(y == 0) & (coin < p_fm)] = 1
        pred[(y == 1) & (coin < p_mf)] = 0
        pred[rng.random(n + big_n) < 0.05] = 2
        human, predicted = labels[y], labels[pred]
        ppi = ppi_share(human[:n], predicted[:n], predicted[n:])
        ppi_hits += ppi.covers(truth)
        clf_hits += classifier_share(predicted).covers(truth)
    assert ppi_hits / draws >= 0.88
    assert clf_hits / draws <= 0.2


def test_human_and_classifier_shares_are_wilson():
    human = ["female"] * 7 + ["male"] * 3 + ["unclear", "no_person"]
    h = human_share(human)
    assert h.estimate == pytest.approx(0.7) and (h.ci_low, h.ci_high) == wilson_interval(7, 10)
    assert h.n_labelled == 12 and h.method == "human-wilson"
    c = classifier_share(["male", "male", "unclear"])
    assert c.estimate == 0.0 and c.n_unlabelled == 3 and c.method == "classifier-wilson"


def test_labels_needed():
    assert labels_needed(0.1) == LABELS_FOR_10 == 93
    assert labels_needed(0.05) == LABELS_FOR_05 == 381
    z = z_value(0.95)
    for h, rate in ((0.1, 0.5), (0.05, 0.2), (0.08, 0.05)):
        n = labels_needed(h, error_rate=rate)
        assert wilson_half_width(rate, n, z) <= h < wilson_half_width(rate, n - 1, z)
    assert labels_needed(0.1, error_rate=0.1) < labels_needed(0.1)
    with pytest.raises(ValueError, match="half_width"):
        labels_needed(0.0)


# ------------------------------------------------------------------------------------------ agreement
def test_cohens_kappa_by_hand():
    k = cohens_kappa(["female", "female", "male", "male"], ["female", "male", "male", "male"])
    # p_o = 3/4; p_e = (2/4)(1/4) + (2/4)(3/4) = 1/2; κ = (3/4 − 1/2) / (1/2) = 1/2
    assert (k.observed, k.expected, k.kappa) == pytest.approx((0.75, 0.5, 0.5))
    half = z_value(0.95) * np.sqrt(0.75 * 0.25 / 4) / 0.5
    assert (k.ci_low, k.ci_high) == pytest.approx((max(-1, 0.5 - half), min(1, 0.5 + half)))
    assert cohens_kappa(["female", "male"], ["female", "male"]).kappa == pytest.approx(1.0)
    assert cohens_kappa(["male", "male"], ["male", "male"]).kappa is None   # p_e = 1: undefined
    assert cohens_kappa([], []).n == 0
    many = labeller_kappas({"a": {"ann": "female", "bob": "female", "cy": "male"},
                            "b": {"ann": "male", "bob": "male", "cy": "male"},
                            "c": {"ann": "female", "bob": "male"}})
    pairs = {tuple(p["raters"]): p for p in many["pairs"]}
    assert set(pairs) == {("ann", "bob"), ("ann", "cy"), ("bob", "cy")}
    assert pairs[("ann", "bob")]["n"] == 3 and pairs[("ann", "cy")]["n"] == 2


def _pairwise_kappas(labels: dict[str, dict[str, str]]) -> dict:
    """Cohen's κ of every pair of labellers by scanning every image per pair: the plain definition."""
    from itertools import combinations

    names = sorted({who for per_image in labels.values() for who in per_image})
    pairs = []
    for x, y in combinations(names, 2):
        shared = [(v[x], v[y]) for v in labels.values() if x in v and y in v]
        if shared:
            pairs.append(cohens_kappa([a for a, _ in shared], [b for _, b in shared], raters=(x, y)))
    values = [k.kappa for k in pairs if k.kappa is not None]
    return {"pairs": [k.to_dict() for k in pairs], "mean": sum(values) / len(values) if values else None,
            "n_pairs": len(pairs)}


def _many_labellers(keys: list[str], n: int, seed: int, share: float = 0.6) -> dict[str, dict[str, str]]:
    """``n`` labellers who each label about ``share`` of ``keys``, mostly agreeing, in random label order."""
    rng = np.random.default_rng(seed)
    truth = {k: rng.choice(["female", "male"]) for k in keys}
    labels: dict[str, dict[str, str]] = {}
    for i in range(n):
        for k in keys:
            if rng.random() < share:
                guess = truth[k] if rng.random() < 0.8 else rng.choice(["female", "male", "unclear", "no_person"])
                labels.setdefault(k, {})[f"labeller {i:03d}"] = str(guess)
    return labels


def test_labeller_kappas_are_the_pairwise_definition():
    for seed, n in ((0, 2), (1, 7), (2, 25)):
        labels = _many_labellers([f"k{i}" for i in range(40)], n, seed)
        assert labeller_kappas(labels, listed=None) == _pairwise_kappas(labels)
    one = {"a": {"ann": "male", "bob": "male"}, "b": {"ann": "male", "bob": "male"}, "c": {"cy": "female"}}
    assert labeller_kappas(one) == _pairwise_kappas(one)              # κ undefined (one label), cy shares nothing
    assert labeller_kappas({}) == {"pairs": [], "mean": None, "n_pairs": 0}


def test_the_report_compares_300_labellers_and_refuses_more_than_it_can(run):
    """Every pair of 300 labellers, as the plain definition gives them; over the cap, an error says what to do."""
    from debias.validity.agreement import MAX_PAIRS_LISTED
    from debias.validity.labels import MAX_LABELLERS

    store = LabelStore(run)
    keys = list(load_run(run).images)
    labels = _many_labellers(keys, 300, seed=3, share=0.5)
    store.append([LabelRecord(k, label, who, "t") for k, per_image in labels.items()
                  for who, label in per_image.items()])
    result = validity_for_run(run).to_dict()
    assert len(result["labellers"]) == 300 and result["n_labels"] == sum(len(v) for v in labels.values())
    every = _pairwise_kappas(labels)
    kappas = result["overall"]["kappa_labellers"]
    assert (kappas["mean"], kappas["n_pairs"]) == (every["mean"], every["n_pairs"]) and every["n_pairs"] > 44_000
    # listed: the 45 pairs that share the most images (the first of equals), in the order of the names
    most = sorted(sorted(range(every["n_pairs"]), key=lambda i: -every["pairs"][i]["n"])[:MAX_PAIRS_LISTED])
    assert kappas["pairs"] == [every["pairs"][i] for i in most] and len(most) == MAX_PAIRS_LISTED

    extra = [LabelRecord(keys[0], "male", f"more {i}", "t") for i in range(MAX_LABELLERS - 300 + 1)]
    store.append(extra)
    with pytest.raises(InputError, match=rf"labels\.jsonl: {MAX_LABELLERS + 1} labellers, more than the "
                                         rf"{MAX_LABELLERS} .*move the other labellers' lines"):
        validity_for_run(run)


def test_a_label_file_past_the_line_cap_is_refused_with_what_to_do(run, tmp_path, monkeypatch):
    from debias.validity import labels

    monkeypatch.setattr(labels, "MAX_LABEL_LINES", 3)
    store = LabelStore(run)
    store.append([LabelRecord(key_of("nurse", i), "female", "ann", "t") for i in range(3)])
    path = _csv(tmp_path, f"image,label,labeller\n{key_of('pilot', 0)},male,ann\n")
    with pytest.raises(InputError, match=r"importing 1 labels would take .*labels\.jsonl past the 3 lines"):
        import_labels_csv(path, run)
    store.add(key_of("pilot", 0), "male", "ann")
    with pytest.raises(InputError, match=r"labels\.jsonl: 4 lines, more than the 3 debias reads.*move the other"):
        validity_for_run(run)


def test_confusion_and_agreement_by_hand():
    human = ["female", "female", "female", "male", "male", "unclear", "no_person"]
    pred = ["female", "male", "unclear", "male", "male", "female", "unclear"]
    three = confusion(human, pred)
    assert three.rows == ("female", "male", "unclear")
    assert three.counts == ((1, 1, 1), (0, 2, 0), (1, 0, 1))     # no_person counts as unclear
    cell = three.cells[0][1]
    assert (cell.k, cell.n, cell.rate) == (1, 3, pytest.approx(1 / 3))
    assert (cell.ci_low, cell.ci_high) == wilson_interval(1, 3)
    two = confusion(human, pred, size=2)
    assert two.counts == ((1, 1), (0, 2))
    assert two.to_dict()["cells"]["female"]["male"]["k"] == 1
    a = agreement(human, pred)                                     # readable by people: 5; agree on 3
    assert (a.k, a.n) == (3, 5) and error_rate(human, pred).k == 2
    with pytest.raises(ValueError, match="size"):
        confusion(human, pred, size=4)


def test_holm_and_flagged_professions():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.5]) == [1.0, 1.0]
    from scipy.stats import fisher_exact

    rows = flag_professions({"nurse": (20, 50), "pilot": (3, 50), "baker": (4, 50), "chef": (3, 50), "cook": (0, 0)})
    by = {r["profession"]: r for r in rows}
    assert [r["profession"] for r in rows if r["flagged"]] == ["nurse"]
    assert by["nurse"]["p_value"] == pytest.approx(fisher_exact([[20, 30], [10, 140]])[1])
    assert by["nurse"]["p_holm"] == pytest.approx(4 * by["nurse"]["p_value"])    # smallest of 4 tested
    assert by["pilot"]["p_value"] < 0.05 < by["pilot"]["p_holm"]                 # significant only unadjusted
    assert by["cook"]["p_value"] is None and not by["cook"]["flagged"]


# ---------------------------------------------------------------------------------------- label store
@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run", {"nurse": balanced(12, 1), "pilot": balanced(10, 4), "cook": balanced(8)})


def test_label_store_ignores_a_torn_last_line_and_latest_wins(run):
    store = LabelStore(run)
    store.add(key_of("nurse", 0), "female", "ann")
    store.add(key_of("nurse", 1), "male", "ann")
    with open(store.path, "ab") as fh:                          # a kill -9 in the middle of a write
        fh.write(b'{"key": "' + key_of("nurse", 2).encode() + b'", "label": "fem')
    assert [r.label for r in store.records()] == ["female", "male"]
    store.add(key_of("nurse", 0), "unclear", "ann")             # relabel: the later line wins
    store.add(key_of("nurse", 0), "male", "bob")
    records = LabelStore(run).records()
    assert len(records) == 4
    reader = LabelStore(run)
    latest = reader.latest()
    assert latest[key_of("nurse", 0)] == {"ann": "unclear", "bob": "male"} and reader.skipped_lines == 1
    for bad, match in (("skip", "navigation"), ("back", "navigation"), ("woman", "unknown label")):
        with pytest.raises(InputError, match=match):
            store.add(key_of("nurse", 3), bad, "ann")
    with pytest.raises(InputError, match="labeller"):
        store.add(key_of("nurse", 3), "male", "  ")


def test_a_killed_writer_leaves_a_readable_file(run):
    """kill -9 a process appending labels as fast as it can: every complete line reads, and appending goes on."""
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from debias.validity.labels import LabelStore
        store = LabelStore({str(run)!r})
        i = 0
        while True:
            store.add("k%d" % i, "female", "ann"); i += 1
            if i == 50: print("going", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "going"
    time.sleep(0.2)
    proc.kill()
    proc.wait()
    store = LabelStore(run)
    records = store.records()
    assert len(records) >= 50 and [r.key for r in records] == [f"k{i}" for i in range(len(records))]
    assert store.skipped_lines <= 1
    store.add("after", "male", "ann")
    assert LabelStore(run).records()[-1].key == "after"


def test_label_files_are_private(run):
    """Labels name people: the label file and the sample (which maps ids to professions) are the owner's only."""
    LabelStore(run).add(key_of("nurse", 0), "female", "ann")
    sample_for_run(load_run(run), 3)
    for name in ("labels.jsonl", "sample.json"):
        assert stat.S_IMODE((run / "labels" / name).stat().st_mode) == 0o600, name


def test_the_label_file_and_folder_are_never_symbolic_links(run, tmp_path):
    """A link in labels/ would make an append (the page, --import) write into a file anywhere."""
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not yours\n", encoding="utf-8")
    (run / "labels").mkdir()
    (run / "labels" / "labels.jsonl").symlink_to(elsewhere)
    csv_path = _csv(tmp_path, f"image,label,labeller\n{key_of('nurse', 0)},female,ann\n")
    for write in (lambda: LabelStore(run).add(key_of("nurse", 0), "female", "ann"),
                  lambda: import_labels_csv(csv_path, run)):
        with pytest.raises(InputError, match=r"labels\.jsonl is a symbolic link.*real file"):
            write()
    assert elsewhere.read_text(encoding="utf-8") == "not yours\n"
    shutil.rmtree(run / "labels")
    folder = tmp_path / "other-labels"
    folder.mkdir()
    (run / "labels").symlink_to(folder, target_is_directory=True)
    with pytest.raises(InputError, match=r"labels is a symbolic link.*real folder"):
        LabelStore(run).add(key_of("nurse", 0), "female", "ann")
    with pytest.raises(InputError, match=r"labels is a symbolic link"):
        sample_for_run(load_run(run), 3)
    assert list(folder.iterdir()) == []


# ------------------------------------------------------------------------------------------ CSV import
def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def test_csv_import_accepts_keys_and_file_names(run, tmp_path):
    path = _csv(tmp_path, f"""
        image,label,labeller
        {key_of("nurse", 0)},female,ann
        images/{key_of("nurse", 1)}.png,male,ann
        {key_of("nurse", 1)}.png,no_person,bob
    """)
    records = import_labels_csv(path, run).added
    assert [(r.label, r.labeller) for r in records] == [("female", "ann"), ("male", "ann"), ("no_person", "bob")]
    assert LabelStore(run).latest()[key_of("nurse", 1)] == {"ann": "male", "bob": "no_person"}
    assert records[0].source == "csv:labels.csv"


@pytest.mark.parametrize("body, message", [
    ("image,label\n{k0},female\n", r"labels\.csv:1: the header must be exactly 'image,label,labeller'"),
    ("image,label,labeller\n{k0},female,ann\nnot-an-image,male,ann\n", r"labels\.csv:3: unknown image 'not-an-image'"),
    ("image,label,labeller\n{k0},woman,ann\n", r"labels\.csv:2: unknown label 'woman'"),
    ("image,label,labeller\n{k0},skip,ann\n", r"labels\.csv:2: 'skip' is navigation"),
    ("image,label,labeller\n{k0},female,ann\n{k1},male,ann\n{k0}.png,male,ann\n",
     r"labels\.csv:4: duplicate: image '{k0}\.png' is labelled by 'ann' again \(first on line 2\)"),
])
def test_csv_import_errors_name_the_line(run, tmp_path, body, message):
    k0, k1 = key_of("nurse", 0), key_of("nurse", 1)
    path = _csv(tmp_path, body.format(k0=k0, k1=k1))
    with pytest.raises(InputError, match=message.format(k0=k0)):
        import_labels_csv(path, run)
    assert not LabelStore(run).path.exists()                     # all or nothing


def test_csv_import_lists_every_problem(run, tmp_path):
    path = _csv(tmp_path, f"image,label,labeller\nnope,female,ann\n{key_of('cook', 0)},girl,ann\nx,y\n")
    with pytest.raises(InputError) as err:
        import_labels_csv(path, run)
    text = str(err.value)
    assert "3 problem(s)" in text and ":2: unknown image" in text and ":3: unknown label" in text and ":4: expected 3" in text


def test_csv_import_that_is_not_utf8_or_not_csv_names_file_and_line(run, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(f"image,label,labeller\n{key_of('nurse', 0)},female,ann\n{key_of('nurse', 1)},male,Jos\xe9\n"
                     .encode("latin-1"))
    with pytest.raises(InputError, match=r"labels\.csv:3: not UTF-8 text.*save the CSV as UTF-8"):
        import_labels_csv(path, run)
    path.write_text(f"image,label,labeller\n{key_of('nurse', 0)},female,\"{'a' * 140_000}\"\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"labels\.csv:2: not a readable CSV row \(field larger than field limit"):
        import_labels_csv(path, run)
    assert not LabelStore(run).path.exists()


def test_reimporting_a_csv_skips_the_labels_already_recorded(run, tmp_path):
    rows = [(key_of("nurse", 0), "female", "ann"), (key_of("nurse", 1), "male", "ann"),
            (key_of("nurse", 1), "male", "bob")]
    path = _csv(tmp_path, "image,label,labeller\n" + "".join(f"{k},{lab},{who}\n" for k, lab, who in rows))
    first = import_labels_csv(path, run)
    assert (len(first.added), first.skipped) == (3, 0)
    again = import_labels_csv(path, run)
    assert (again.added, again.skipped) == ([], 3)
    LabelStore(run).add(key_of("nurse", 0), "male", "ann")        # ann changed her mind on the page
    third = import_labels_csv(path, run)                            # the CSV's older label is a relabel, not a repeat
    assert [(r.key, r.label) for r in third.added] == [(key_of("nurse", 0), "female")] and third.skipped == 2
    assert len(LabelStore(run).records()) == 5


def test_the_label_count_is_distinct_images_and_labellers(run):
    store = LabelStore(run)
    store.add(key_of("nurse", 0), "female", "ann")
    store.add(key_of("nurse", 0), "male", "ann")                   # a relabel: still one label of one image
    store.add(key_of("nurse", 0), "male", "bob")
    store.add(key_of("pilot", 1), "male", "ann")
    assert validity_for_run(run).n_labels == 3


@pytest.mark.parametrize("name", ["ann\u202egnp.exe", "an\u2028n", "an\u2029n", "ann\x7f", "an\u200bn", "an\x00n"])
def test_labeller_names_with_control_or_format_characters_are_refused(run, tmp_path, name):
    with pytest.raises(InputError, match=r"labeller name .*U\+[0-9A-F]{4}"):
        LabelStore(run).add(key_of("nurse", 0), "female", name)
    path = tmp_path / "labels.csv"
    path.write_text(f"image,label,labeller\n{key_of('nurse', 0)},female,{name}\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"labels\.csv:2: labeller name"):
        import_labels_csv(path, run)
    assert LabelStore(run).records() == []
    name = "Zoë O'Brien-Łukasz 李"
    assert LabelStore(run).add(key_of("nurse", 0), "female", name).labeller == name


# ------------------------------------------------------------------------------------------- sample
def test_sample_is_stratified_reproducible_and_grows_as_a_prefix(run):
    images = load_run(run)
    a, b = draw_sample(images, 5, seed=3), draw_sample(images, 5, seed=3)
    assert [i.key for i in a.items] == [i.key for i in b.items]
    sizes = {a.strata[s]: n for s, n in a.sizes().items()}
    assert sizes == {"nurse": 5, "pilot": 5, "cook": 5}
    assert sorted(a.strata) == [1, 2, 3]
    assert {i.stratum for i in a.items[:3]} == {1, 2, 3}         # round-robin over professions
    big = draw_sample(images, 100, seed=3)
    assert {a.strata[s]: n for s, n in big.sizes().items()} == {"nurse": 12, "pilot": 10, "cook": 8}
    for stratum in a.strata:                                      # more labels extend the same random order
        small = [i.key for i in a.items if i.stratum == stratum]
        assert [i.key for i in big.items if i.stratum == stratum][:5] == small
    other = draw_sample(images, 5, seed=4)
    assert [i.key for i in other.items] != [i.key for i in a.items]
    assert all(len(i.id) == 16 and i.id not in i.key for i in a.items)
    with pytest.raises(InputError, match="per-profession"):
        draw_sample(images, 0)


def test_load_run_explains_a_missing_audit(tmp_path):
    with pytest.raises(InputError, match="no audit.json"):
        load_run(tmp_path)


# -------------------------------------------------------------------------------------- run summary
def test_validity_for_run_without_and_with_labels(run):
    empty = validity_for_run(run).to_dict()
    assert not empty["has_labels"] and empty["labels_needed"] == {"0.1": 93, "0.05": 381}
    assert [r["more_labels_for_0.05"] for r in empty["professions"]] == [381, 381, 381]
    assert empty["professions"][0]["ppi_share"] is None
    store = LabelStore(run)
    records = []
    for name, n in (("nurse", 12), ("pilot", 10), ("cook", 8)):
        for i in range(n):
            truth = "female" if i % 2 == 0 else "male"
            records.append(LabelRecord(key_of(name, i), truth, "ann", "t"))
            if i < 4:
                records.append(LabelRecord(key_of(name, i), truth if i else "unclear", "bob", "t"))
    store.append(records)
    result = validity_for_run(run, labeller="ann")
    d = result.to_dict()
    json.dumps(d)                                                 # JSON-ready
    rows = {r["profession"]: r for r in d["professions"]}
    assert rows["pilot"]["error_rate"]["k"] == 4 and rows["pilot"]["n_labelled"] == 10
    assert rows["cook"]["ppi_share"]["estimate"] == pytest.approx(0.5)
    assert rows["pilot"]["human_share"]["estimate"] == pytest.approx(0.5)
    assert rows["pilot"]["confusion_2x2"]["counts"] == [[3, 2], [2, 3]]
    assert d["overall"]["agreement"]["n"] == 30 and d["overall"]["agreement"]["k"] == 25
    assert set(d["labellers"]) == {"ann", "bob"} and d["n_labels"] == len(records)
    kappas = d["overall"]["kappa_labellers"]["pairs"]
    assert kappas[0]["raters"] == ["ann", "bob"] and kappas[0]["n"] == 12
    assert "Fisher" in d["overall"]["flag_test"] and "Holm" in d["overall"]["flag_test"]
    assert all("flag" in r for r in d["professions"])


# ------------------------------------------------------------------ the audit's validity block, other classifiers
def test_mean_delta_of_shares():
    from debias.validity.record import mean_delta_of_shares

    assert mean_delta_of_shares([]) == (None, None, None)
    shares = [(0.9, 0.85, 0.95, 0.5), (0.5, 0.45, 0.55, 0.5), (0.2, 0.1, 0.3, 0.3)]
    point, low, high = mean_delta_of_shares(shares)
    assert point == pytest.approx((0.8 + 0.0 + 0.1 / 0.7) / 3)             # Δ = |F − t| / max(t, 1 − t)
    assert low < high and abs((low + high) / 2 - point) < 0.05
    assert mean_delta_of_shares(shares) == (point, low, high)              # seeded: the same shares, the same interval
    tight = mean_delta_of_shares([(f, f - 0.01, f + 0.01, t) for f, _, _, t in shares])
    assert tight[0] == point and tight[2] - tight[1] < high - low


def test_compare_classifiers_by_hand():
    from debias.stats.binary import mean_delta_interval
    from debias.validity import compare_classifiers

    primary = ["female"] * 6 + ["male"] * 4 + ["unclear"] * 2
    other = ["female"] * 3 + ["male"] * 3 + ["male"] * 4 + ["female", "unclear"]
    block = compare_classifiers({"model": "B", "backend": "x"}, [("nurse", 0.5, primary, other),
                                                                 ("cook", 0.5, ["female"] * 20, ["male"] * 20)],
                                tolerance=0.05)
    nurse, cook = block["professions"]
    # both read a gender on the first 10 images; they agree on 3 + 4; the primary's female read male 3 times
    assert (nurse["agreement"]["k"], nurse["agreement"]["n"]) == (7, 10)
    assert (nurse["female_to_male"], nurse["male_to_female"]) == (3, 0)
    assert (nurse["n_female"], nurse["n_male"], nurse["n_unclear"]) == (4, 7, 1)
    assert nurse["share_female"] == pytest.approx(4 / 11) and nurse["kappa"]["n"] == 12
    assert nurse["p_value"] == pytest.approx(0.25)                           # exact McNemar: 3 of 3 at ½, two-sided
    assert cook["p_value"] == pytest.approx(2 * 0.5 ** 20)
    assert cook["p_holm"] == pytest.approx(2 * cook["p_value"]) and nurse["p_holm"] == pytest.approx(0.25)
    assert (cook["disagrees"], nurse["disagrees"], block["disagreeing"]) == (True, False, ["cook"])
    assert (block["agreement"]["k"], block["agreement"]["n"], block["model"]) == (7, 30, "B")
    assert (block["mean_delta"], block["mean_delta_ci_low"], block["mean_delta_ci_high"]) == \
        mean_delta_interval([(4, 7), (0, 20)], [0.5, 0.5])
    assert block["within_tolerance"] == 0 and "McNemar" in block["test"]


def test_validity_block_leads_with_ppi_only_when_every_profession_is_labelled(run):
    from debias.validity import validity_block
    from debias.validity.record import commands_for

    record = json.loads((run / "audit.json").read_text())
    empty = validity_block(run, record)
    assert (empty["has_labels"], empty["headline"], empty["mean_delta"], empty["within_tolerance"]) == (
        False, "classifier", None, None)
    assert empty["commands"] == {"label": "debias label {run_dir}",                 # no path: a copied run keeps it
                                 "import": "debias label {run_dir} --import labels.csv",
                                 "report": "debias report {run_dir}"}
    assert commands_for(empty, run)["import"] == f"debias label {run} --import labels.csv"
    assert empty["labels_needed"] == {"0.1": 93, "0.05": 381} and empty["labels_file"] == "labels/labels.jsonl"

    def label(name: str, n: int) -> list[LabelRecord]:
        return [LabelRecord(key_of(name, i), "female" if i % 2 == 0 else "male", "ann", "t") for i in range(n)]

    store = LabelStore(run)
    store.append(label("nurse", 6) + label("pilot", 6))
    partial = validity_block(run, record)
    assert (partial["headline"], partial["unlabelled_professions"], partial["mean_delta_professions"]) == (
        "classifier", ["cook"], 2)
    store.append(label("cook", 6))
    full = validity_block(run, record)
    plain = validity_for_run(run).to_dict()
    assert full["headline"] == "prediction-powered" and full["unlabelled_professions"] == []
    assert full["overall"] == plain["overall"] and full["n_labels"] == 18 and full["labellers"] == ["ann"]
    extra = ("target", "ppi_delta", "ppi_within_band")
    assert [{k: v for k, v in r.items() if k not in extra} for r in full["professions"]] == plain["professions"]
    shares = [r["ppi_share"]["estimate"] for r in plain["professions"]]
    assert [r["ppi_delta"] for r in full["professions"]] == pytest.approx([abs(f - 0.5) / 0.5 for f in shares])
    assert full["mean_delta"] == pytest.approx(sum(abs(f - 0.5) / 0.5 for f in shares) / 3)
    assert full["within_tolerance"] == sum(abs(f - 0.5) <= 0.05 for f in shares)
