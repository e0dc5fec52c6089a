"""The multilingual table end to end: the temperature-sampled epoch on literal counts, the one-language-per-row
validation cache, per-language evaluation, the per-language claims on literal frames, and a smoke run through
the CLI (run, plot, report)."""

import gzip
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from switchrepro.cli import main
from switchrepro.data import MC4_TASK, UDHR_TASK, DataError, cache
from switchrepro.data import multilingual as ml
from switchrepro.experiments import claims as C
from switchrepro.experiments import runner, tables
from switchrepro.experiments.tables import multilingual as ML
from switchrepro.train import trainer

# --------------------------------------------------------------------------------------------- sampling


def _records(counts):
    """{lang: [article byte lengths]} -> records with texts of those lengths."""
    return [{"lang": lang, "id": f"{lang}/{i}", "text": "x" * n} for lang, sizes in counts.items()
            for i, n in enumerate(sizes)]


def test_resample_gives_each_language_its_share_on_literal_counts():
    # a: 4 articles of 100 bytes, b: 1 of 100; 500 bytes in all, half each.
    # a: ratio 250/400 = 0.625 -> 0 whole copies + round(0.625 x 4) = 3 articles; b: 2.5 -> 2 copies + round(0.5) = 1
    out = ml.resample(_records({"a": [100] * 4, "b": [100]}), {"a": 0.5, "b": 0.5}, seed=0)
    langs = [r["lang"] for r in out]
    assert langs.count("a") == 3 and langs.count("b") == 3
    assert len({r["id"] for r in out if r["lang"] == "a"}) == 3  # a subsample: three different articles
    # alpha = 1 (probabilities proportional to the data) gives the data back, shuffled
    records = _records({"a": [100, 300], "b": [200, 50, 50]})
    same = ml.resample(records, ml.sampling_table({"a": 400, "b": 300}, alpha=1.0), seed=3)
    assert sorted(r["id"] for r in same) == sorted(r["id"] for r in records)
    assert ml.resample(records, {"a": 0.5, "b": 0.5}, seed=3) == ml.resample(records, {"a": 0.5, "b": 0.5}, seed=3)


def test_resample_of_the_committed_corpus_follows_the_sampling_table():
    manifest = ml.load_manifest()
    table = manifest["sampling"]["all"]
    out = ml.resample(list(ml.iter_records("train")), table, seed=0)
    got = pd.Series({r["lang"]: 0 for r in out})
    for r in out:
        got[r["lang"]] += len(r["text"].encode("utf-8"))
    share = got / got.sum()
    # whole articles: each language within one article's share of its target (articles are < 5 kB of 4.8 MB)
    assert (share - pd.Series(table)).abs().max() < 0.001
    smallest, largest = min(table, key=table.get), max(table, key=table.get)
    assert share[largest] / share[smallest] == pytest.approx(table[largest] / table[smallest], rel=0.2)


def test_resample_needs_every_language():
    with pytest.raises(ValueError, match="missing"):
        ml.resample(_records({"a": [10], "b": [10]}), {"a": 1.0})


# ------------------------------------------------------------------------------------ validation cache


@pytest.fixture(scope="module")
def validation(cache_root):
    return cache.load(cache.ensure_cache(UDHR_TASK, "validation", 64, 16, 160, cache_root))


def test_validation_rows_hold_one_language_each(validation):
    """Every row's uncorrupted input bytes come from the held-out text of the language its id names."""
    codes = validation.meta["languages"]
    assert list(codes) == list(ml.language_codes()) and len(validation.languages) == validation.num_examples == 160
    assert sum(validation.meta["rows_per_language"]) == 160
    held = {}
    for r in ml.iter_records("validation"):
        held[r["lang"]] = held.get(r["lang"], b"") + r["text"].encode("utf-8") + b"\n"
    ids = validation.languages
    assert len(set(ids.tolist())) >= 3  # the first rows span several languages, in file order
    assert (np.diff(ids) >= 0).all()
    for i in range(0, 160, 7):
        tokens = np.asarray(validation.arrays["encoder_input_tokens"][i])
        spans, current = [], []
        for t in tokens:  # bytes are ids 3..258; sentinels and EOS split the kept spans
            if 3 <= t < 259:
                current.append(t - 3)
            elif current:
                spans.append(bytes(current))
                current = []
        spans.append(bytes(current))
        text = held[codes[ids[i]]]
        assert all(s in text for s in spans if len(s) >= 4), (i, codes[ids[i]])


def test_training_cache_of_the_multilingual_task_is_packed_and_keyed_apart():
    assert cache.is_packed(UDHR_TASK, "train") and not cache.is_packed(UDHR_TASK, "validation")
    assert cache.cache_key(UDHR_TASK, "validation", 64, 16) != cache.cache_key(UDHR_TASK, "train", 64, 16)


def test_mc4_without_its_data_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"c4/multilingual:3.1.0.*tfds build") as e:
        cache.ensure_cache(MC4_TASK, "train", 128, 32, tfds_data_dir=str(tmp_path))
    assert "\n" not in str(e.value)
    out = CliRunner().invoke(main, ["run", "multilingual", "--scale", "paper", "--rows", "mT5-Base",
                                    "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "r")])
    errors = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert out.exit_code == 2 and len(errors) == 1 and "c4/multilingual" in errors[0], out.output


# ---------------------------------------------------------------------------------------- evaluation


def test_evaluate_sums_each_languages_rows():
    """Literal per-row CE sums and token counts: language 0 has rows 0 and 3, language 2 rows 1 and 2."""
    ce = np.array([2.0, 6.0, 3.0, 4.0, 9.0])
    n = np.array([1.0, 2.0, 1.0, 3.0, 0.0])  # the last row is padding: no target token
    batches = [({"i": np.array([0, 1, 2])}, 3), ({"i": np.array([3, 4, 0])}, 2)]
    step = lambda params, b: (ce[b["i"]], n[b["i"]] * (np.arange(3) < 3), {})  # noqa: E731
    out = trainer.evaluate(step, None, batches, languages=np.array([0, 2, 2, 0, 1]),
                           language_names=("aaa", "bbb", "ccc"))
    assert out["eval_neg_log_perplexity"] == pytest.approx(-(2 + 6 + 3 + 4 + 9) / 7)
    assert out["eval_languages"] == {"aaa": pytest.approx(-6 / 4), "ccc": pytest.approx(-9 / 3)}  # bbb: no token


# -------------------------------------------------------------------------------------------- claims


def _frame(gains, steps=(100, 200, 300, 400), seeds=3, dense=(-3.0, -2.5, -2.2, -2.0), lead=None):
    """Per-language curves: dense the same everywhere; Switch = dense + lead(step) + the seed's gain."""
    rows = []
    for lang, per_seed in gains.items():
        for seed in range(seeds):
            for i, step in enumerate(steps):
                rows.append({"table": "multilingual", "row": ML.ML_DENSE, "seed": seed, "step": step, "lang": lang,
                             "nlp": dense[i] + 0.01 * seed})
                ahead = per_seed[seed] if lead is None else lead[lang][i] + per_seed[seed]
                rows.append({"table": "multilingual", "row": ML.ML_SWITCH, "seed": seed, "step": step, "lang": lang,
                             "nlp": dense[i] + 0.01 * seed + ahead})
    return pd.DataFrame(rows)


def _evidence(languages):
    summary = pd.DataFrame({"nlp_mean": [-2.0, -1.9]}, index=[ML.ML_DENSE, ML.ML_SWITCH])
    return C.Evidence(summary, languages=languages)


def test_every_language_claim_on_literal_gains():
    claim = ML.improves_every_language("all")
    up = {"aa": [0.2, 0.25, 0.15], "bb": [0.1, 0.12, 0.11]}
    assert claim.evaluate(_evidence(_frame(up))).status == C.REPRODUCED
    noisy = {**up, "cc": [0.3, -0.2, 0.05]}  # positive in mean, interval across zero
    v = claim.evaluate(_evidence(_frame(noisy)))
    assert v.status == C.INCONCLUSIVE and v.margin == pytest.approx(1.0) and "3/3 languages improved" in v.detail
    worse = {**up, "dd": [-0.3, -0.31, -0.29]}
    v = claim.evaluate(_evidence(_frame(worse)))
    assert v.status == C.NOT_REPRODUCED and v.margin == pytest.approx(2 / 3) and "1 significantly worse" in v.detail
    # the mC4 view keeps only mC4 languages: none here
    assert ML.improves_every_language("mc4").evaluate(_evidence(_frame(up))).status == C.INCONCLUSIVE


def test_speedup_claims_on_literal_curves():
    # Seed-mean dense curve: -2.99, -2.49, -2.19, -1.99, so the target is -1.99, reached at step 400. Switch:
    # "aa" is past it at step 100 (-1.89: 4x); "bb" goes -2.74 -> -1.89 from step 100 to 200, crossing at
    # 100 + 100 x 0.75 / 0.85 = 188.2 (400 / 188.2 = 2.125x); "cc" never gets there.
    lead = {"aa": [1.1, 0.5, 0.2, 0.1], "bb": [0.25, 0.6, 0.3, 0.1], "cc": [-0.5, -0.5, -0.5, -0.5]}
    gains = {lang: [0.0, 0.0, 0.0] for lang in lead}
    frame = _frame(gains, lead=lead)
    v = ML.mean_language_speedup("all").evaluate(_evidence(frame))
    # mean over the two reached: (4 + 2.125) / 2 = 3.0625; one of three never reaches it (> 10%): not "reproduced"
    assert v.margin == pytest.approx(2.0625) and "2 of 3 languages" in v.detail and v.status == C.INCONCLUSIVE
    fast = ML.fast_language_fraction("all").evaluate(_evidence(frame))
    assert fast.margin == pytest.approx(1 / 3 - 0.91) and fast.status == C.NOT_REPRODUCED
    without_cc = frame[frame["lang"] != "cc"]
    assert ML.mean_language_speedup("all").evaluate(_evidence(without_cc)).status == C.REPRODUCED


def test_multilingual_control_gates_the_other_verdicts():
    results = pd.DataFrame([{"table": "multilingual", "row": r, "seed": s, "final_nlp": v + 0.001 * s,
                             "diverged_at": math.nan, "examples_per_sec": 1.0, "wall_seconds": 1.0, "steps": 4}
                            for r, v in ((ML.ML_DENSE, -2.0), (ML.ML_LARGE, -2.5), (ML.ML_SWITCH, -1.9))
                            for s in range(3)])
    verdicts = {v.claim_id: v for v in tables.get("multilingual").evaluate(results, None,
                                                                  languages=_frame({"aa": [0.2, 0.25, 0.15]}))}
    assert verdicts["ml-control-larger-dense"].status == C.NOT_REPRODUCED
    assert verdicts["ml-switch-beats-dense"].status == C.REGIME_INVALID
    assert "as judged alone: reproduced" in verdicts["ml-improves-every-language-all"].detail


# ------------------------------------------------------------------------------------------- the CLI


def test_smoke_run_plot_and_report_through_the_cli(tmp_path, cache_root, cheap_compiles):
    results, runs = tmp_path / "results", tmp_path / "runs"
    common = ["--results-dir", str(results)]
    out = CliRunner().invoke(main, ["run", "multilingual", "--scale", "smoke", "--rows", "mT5-Base,mSwitch-Base",
                                    "--seeds", "1", "--runs-dir", str(runs), *common,
                                    "--gin", f"DataConfig.cache_dir = '{cache_root}'"])
    assert out.exit_code == 0, out.output
    assert "ml-control-larger-dense" in out.output or "Positive control" in out.output
    assert "| all (ours) |" in out.output
    frame = runner.load_languages(results, "smoke", "multilingual")
    assert set(frame["row"]) == {"mT5-Base", "mSwitch-Base"} and set(frame["seed"]) == {0}
    assert set(frame["step"]) == {2, 4} and frame["nlp"].lt(0).all()
    # one value per (run, evaluation, language), the languages of the first 64 held-out rows
    assert not frame.duplicated(["row", "seed", "step", "lang"]).any()
    assert set(frame["lang"]) <= set(ml.language_codes()) and frame["lang"].nunique() >= 2
    per_language = pd.read_csv(results / "smoke" / "multilingual_per_language.csv", dtype={"lang": str})
    assert sorted(per_language["lang"]) == sorted(set(frame["lang"])) and per_language["name"].notna().all()
    assert per_language["gain"].tolist() == sorted(per_language["gain"], reverse=True)
    with gzip.open(results / "smoke" / "multilingual_languages.csv.gz", "rt") as f:
        assert f.readline().strip() == "table,row,seed,step,lang,nlp"
    plot = CliRunner().invoke(main, ["plot", "multilingual", "--scale", "smoke", *common])
    assert plot.exit_code == 0, plot.output
    assert "multilingual_language_gains_all.png" in plot.output
    assert "multilingual_speedup_histogram_all.png" in plot.output
    report = CliRunner().invoke(main, ["report", "--scale", "smoke", *common])
    assert report.exit_code == 0, report.output
    text = (results / "smoke" / "REPORT.md").read_text()
    assert "### Per language" in text and "| paper (mC4) | 101 |" in text
    assert "At least 91% of languages get a >= 4x step speedup, all languages" in text
