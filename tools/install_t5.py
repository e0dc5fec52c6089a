"""Install t5 0.9.4 with its dependency metadata repaired, so `pip check` stays clean.

Why: t5 0.9.4 (the last release) declares `seqio-nightly`, `tfds-nightly`,
`mesh-tensorflow[transformer]` and `transformers` as hard requirements. A plain
`pip install t5` therefore installs a second copy of seqio and of
tensorflow-datasets under other distribution names (two distributions owning
the same `seqio/` and `tensorflow_datasets/` modules) plus mesh-tensorflow,
transformers and their stack, none of which switchrepro imports: we only use
`t5.data.preprocessors.span_corruption` and t5's metrics. Installing with
`--no-deps` instead leaves `pip check` reporting four missing requirements.

So this script downloads the pinned wheel with pip, checks its sha256, rewrites
the Requires-Dist lines (seqio-nightly -> seqio, tfds-nightly ->
tensorflow-datasets, mesh-tensorflow and transformers dropped), marks the
version with the local label `+switchrepro` so nobody mistakes it for the
upstream wheel, and installs it with `--no-deps` (all remaining requirements are
already in pyproject.toml). Usage: python tools/install_t5.py [--python PY]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "0.9.4"
LOCAL = "0.9.4+switchrepro"
WHEEL = f"t5-{VERSION}-py2.py3-none-any.whl"
SHA256 = "53e40efdfc4d8f614cd8d38301e39d5c146f9d5fd66b6823d9c181b60370b2b5"
REPLACE = {"seqio-nightly": "seqio", "tfds-nightly": "tensorflow-datasets"}
DROP = ("mesh-tensorflow", "transformers")


def _rewrite_metadata(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("Version: "):
            line = f"Version: {LOCAL}"
        elif line.startswith("Requires-Dist: "):
            req = line[len("Requires-Dist: "):]
            name = req.split(";")[0].split("(")[0].split("[")[0].strip()
            if "extra ==" not in req:
                if name in DROP:
                    continue
                if name in REPLACE:
                    line = "Requires-Dist: " + req.replace(name, REPLACE[name], 1)
        out.append(line)
    return "\n".join(out) + "\n"


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def repack(src: Path, dst_dir: Path) -> Path:
    old_info, new_info = f"t5-{VERSION}.dist-info/", f"t5-{LOCAL}.dist-info/"
    dst = dst_dir / f"t5-{LOCAL}-py2.py3-none-any.whl"
    with zipfile.ZipFile(src) as zin:
        files = {}
        for info in zin.infolist():
            data = zin.read(info.filename)
            name = info.filename.replace(old_info, new_info)
            if name == new_info + "METADATA":
                data = _rewrite_metadata(data.decode("utf-8")).encode("utf-8")
            files[name] = data
    record = new_info + "RECORD"
    lines = [_record_line(n, d) for n, d in files.items() if n != record]
    files[record] = ("\n".join(lines + [f"{record},,"]) + "\n").encode()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in files.items():
            zout.writestr(zipfile.ZipInfo(name, date_time=(2023, 3, 30, 0, 0, 0)), data)
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable, help="interpreter whose environment gets t5")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([args.python, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp),
                        f"t5=={VERSION}"], check=True)
        wheel = tmp / WHEEL
        got = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if got != SHA256:
            print(f"t5 wheel sha256 mismatch: expected {SHA256}, got {got}", file=sys.stderr)
            return 1
        fixed = repack(wheel, tmp)
        subprocess.run([args.python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                        str(fixed)], check=True)
    print(f"installed t5 {LOCAL} (sha256-checked upstream {VERSION}, nightly requirements repointed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
