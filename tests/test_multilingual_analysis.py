"""Per-language gains and speedups (experiments/multilingual.py) on literal curves."""

import math

import pandas as pd
import pytest

from switchrepro.experiments import multilingual as M

STEPS = [100, 200, 300, 400]
SEED_OFFSET = [0.0, 0.05, -0.05]  # shared by both rows of a seed (they see the same batches)
# language -> (dense base curve, switch base curve, paired final gains per seed)
LANGS = {
    "xx": ([-3.0, -2.5, -2.2, -2.0], [-2.6, -2.1, -1.9, -1.8], [0.2, 0.25, 0.15]),   # crosses at step 250
    "yy": ([-3.0, -2.5, -2.2, -2.0], [-3.5, -3.0, -2.8, -2.6], [-0.6, -0.6, -0.6]),  # never reaches -2.0
    "zz": ([-3.0, -2.5, -2.2, -2.0], [-1.9, -1.8, -1.7, -1.6], [0.4, 0.4, 0.4]),     # ahead from the start
}


def _curves(langs=LANGS, seeds=3):
    rows = []
    for lang, (dense, switch, gains) in langs.items():
        mean_gain = sum(gains[:seeds]) / seeds
        for seed in range(seeds):
            e = SEED_OFFSET[seed]
            for i, step in enumerate(STEPS):
                rows.append({"lang": lang, "row": "mT5", "seed": seed, "step": step, "nlp": dense[i] + e})
                # the switch base curve is the seed mean; each seed moves by its gain's deviation
                rows.append({"lang": lang, "row": "mSwitch", "seed": seed, "step": step,
                             "nlp": switch[i] + e + gains[seed] - mean_gain})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter


def test_paired_gains_use_seed_pairs_and_a_student_t_interval():
    g = M.paired_gains(_curves(), "mT5", "mSwitch").set_index("lang")
    assert list(g.index) == ["xx", "yy", "zz"]
    assert g.loc["xx", "gain"] == pytest.approx(0.2) and g.loc["xx", "std"] == pytest.approx(0.05)
    # t(0.975, 2 dof) = 4.3027; half width 4.3027 * 0.05 / sqrt(3) = 0.12421
    assert g.loc["xx", "low"] == pytest.approx(0.2 - 0.12421, abs=1e-4)
    assert g.loc["xx", "high"] == pytest.approx(0.2 + 0.12421, abs=1e-4)
    assert g.loc["xx", "improved"] and not g.loc["xx", "worse"]
    assert g.loc["yy", "gain"] == pytest.approx(-0.6) and g.loc["yy", "worse"]
    assert g.loc["zz", "improved"] and int(g.loc["zz", "n"]) == 3


def test_one_seed_gives_no_interval():
    g = M.paired_gains(_curves(seeds=1), "mT5", "mSwitch").set_index("lang")
    assert int(g.loc["xx", "n"]) == 1 and math.isnan(g.loc["xx", "low"])
    assert not g["improved"].any() and not g["worse"].any()


def test_language_speedups_on_literal_curves_including_one_never_reached():
    s = M.language_speedups(_curves(), "mT5", "mSwitch").set_index("lang")
    # xx: dense reaches its final -2.0 at step 400; Switch crosses -2.0 between 200 (-2.1) and 300 (-1.9)
    assert s.loc["xx", "dense_steps"] == pytest.approx(400) and s.loc["xx", "switch_steps"] == pytest.approx(250)
    assert s.loc["xx", "speedup"] == pytest.approx(1.6) and s.loc["xx", "target"] == pytest.approx(-2.0)
    assert not s.loc["yy", "reached"] and math.isnan(s.loc["yy", "speedup"])
    assert s.loc["zz", "speedup"] == pytest.approx(4.0)  # at the first evaluation already


def test_summary_over_all_languages_and_a_subset():
    curves = _curves()
    gains, speedups = M.paired_gains(curves, "mT5", "mSwitch"), M.language_speedups(curves, "mT5", "mSwitch")
    everything = M.summarize_languages(gains, speedups)
    assert everything["languages"] == 3 and everything["improved"] == 2
    assert everything["improved_fraction"] == pytest.approx(2 / 3)
    assert everything["improved_significantly"] == 2 and everything["worse_significantly"] == 1
    assert everything["mean_speedup"] == pytest.approx((1.6 + 4.0) / 2)  # over the languages reached
    assert everything["never_reached"] == 1
    assert everything["fast_fraction"] == pytest.approx(1 / 3)  # zz only; yy counts as not fast
    subset = M.summarize_languages(gains, speedups, ["xx", "zz"])
    assert subset["languages"] == 2 and subset["never_reached"] == 0 and subset["fast_fraction"] == 0.5
    assert subset["mean_gain"] == pytest.approx(0.3)
