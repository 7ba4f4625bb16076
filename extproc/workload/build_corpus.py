"""Regenerate ``extproc/data/corpus/``: real text per category, taken only from redistributable sources
found on a stock Debian + CPython machine, so the demo's prompts look like traffic without shipping
anything we may not ship.

Run: ``python -m extproc.workload.build_corpus [--out DIR]``. Files are copied verbatim (the Vim and
licence texts require unmodified copies), with the PSF and Vim licence texts alongside.
``PROVENANCE.md`` is rewritten with each file's source path, licence, size and SHA-256.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "corpus"
SPECIAL_TOKEN_MARK = "<|"  # tiktoken-style special tokens make encode() raise; keep them out


@dataclass(frozen=True)
class Source:
    category: str
    name: str  # file name inside the category folder
    path: Path
    licence: str


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _include() -> Path:
    return Path(sysconfig.get_paths()["include"])


def _vim_runtime() -> Path:
    found = sorted(glob.glob("/usr/share/vim/vim[0-9]*"))
    if not found:
        raise FileNotFoundError("no /usr/share/vim/vimNN runtime (Debian package vim-runtime) for the CJK texts")
    return Path(found[-1])


# Prose is plain English paragraphs. The Apache/MPL texts (indented clauses) and the Python reference
# manual (inline code) read as code to a character-level classifier, so they are left out.
PROSE_LICENCES = ("GPL-2", "GPL-3", "LGPL-2.1", "GFDL-1.3", "Artistic", "CC0-1.0")
IDLE_NOTES = ("NEWS.txt", "HISTORY.txt")
# Code files get a ``.txt`` suffix so linters, test collectors and packagers leave them alone.
PYTHON_MODULES = ("textwrap.py", "heapq.py", "fractions.py", "graphlib.py", "shlex.py", "colorsys.py", "bisect.py")
C_HEADERS = ("object.h", "listobject.h", "pymacro.h", "unicodeobject.h")
# UTF-8 twins of CPython's CJK codec test texts; twins with identical content are left out.
CJK_CODEC_TEXTS = ("gb2312", "gbk", "gb18030", "big5", "euc_jp", "euc_jisx0213")
VIM_TUTORS = (("ja", "tutor.ja.utf-8"), ("zh_cn", "tutor.zh_cn.utf-8"))

PSF, VERBATIM, VIM = "PSF", "verbatim", "Vim"


def sources() -> list[Source]:
    stdlib, include = _stdlib(), _include()
    out = [
        Source("prose", f"licence-{n}.txt", Path("/usr/share/common-licenses") / n, VERBATIM) for n in PROSE_LICENCES
    ]
    out += [Source("prose", f"idle-{n}", stdlib / "idlelib" / n, PSF) for n in IDLE_NOTES]
    out += [Source("code", f"python-{n}.txt", stdlib / n, PSF) for n in PYTHON_MODULES]
    out += [Source("code", f"c-{n}.txt", include / n, PSF) for n in C_HEADERS]
    out += [
        Source("cjk", f"cpython-{n}-utf8.txt", stdlib / "test" / "cjkencodings" / f"{n}-utf8.txt", PSF)
        for n in CJK_CODEC_TEXTS
    ]
    vim = _vim_runtime()
    out += [Source("cjk", f"vim-tutor-{lang}.txt", vim / "tutor" / f, VIM) for lang, f in VIM_TUTORS]
    return out


def _display(path: Path) -> str:
    """Source paths as a reader can find them on another machine: CPython-relative where possible."""
    for root, label in ((_stdlib(), "Lib"), (_include(), "Include")):
        if path.is_relative_to(root):
            return f"CPython {sys.version.split()[0]} {label}/{path.relative_to(root)}"
    return str(path)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_text(name: str, data: bytes) -> None:
    text = data.decode("utf-8")  # raises on non-UTF-8 sources: the corpus must be clean UTF-8
    if SPECIAL_TOKEN_MARK in text and "|>" in text:
        raise ValueError(f"{name}: contains a special-token-like marker; pick another source")


def build(out: Path) -> list[tuple[str, str, str, int, str]]:
    """Write the corpus under ``out``; return (file, source, licence, bytes, sha256) rows."""
    wanted = sources()
    missing = [str(src.path) for src in wanted if not src.path.is_file()]
    if missing:
        raise FileNotFoundError(f"corpus sources missing: {', '.join(missing)}")
    if out.exists():
        shutil.rmtree(out)
    rows: list[tuple[str, str, str, int, str]] = []

    def write(rel: str, data: bytes, source: str, licence: str) -> None:
        _check_text(rel, data)
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        rows.append((rel, source, licence, len(data), _sha256(data)))

    for src in wanted:
        write(f"{src.category}/{src.name}", src.path.read_bytes(), _display(src.path), src.licence)
    licences = out / "LICENSES"
    licences.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_stdlib() / "LICENSE.txt", licences / "PSF-LICENSE.txt")
    shutil.copyfile(_vim_runtime() / "doc" / "uganda.txt", licences / "VIM-LICENSE.txt")
    (out / "PROVENANCE.md").write_text(provenance(rows))
    return rows


def provenance(rows: list[tuple[str, str, str, int, str]]) -> str:
    lines = [
        "# Prompt corpus: provenance",
        "",
        "Real text for the workload prompts, one folder per category (`prose`, `code`, `cjk`; `mixed` is",
        "interleaved `prose` and `cjk` at prompt-build time). Regenerate with",
        "`python -m extproc.workload.build_corpus`; this file is written by that script.",
        f"Built with Python {sys.version.split()[0]} on the sources listed below.",
        "",
        "Licence column:",
        "- **PSF**: Python Software Foundation License Agreement (copy in `LICENSES/PSF-LICENSE.txt`).",
        "- **Vim**: unmodified parts of Vim (Debian `vim-runtime`), which the Vim licence lets anyone",
        "  distribute with the licence text (`LICENSES/VIM-LICENSE.txt`, a copy of `doc/uganda.txt`).",
        "- **verbatim**: licence documents from Debian's `/usr/share/common-licenses`, whose verbatim copying",
        "  is permitted; they are sample English prose here and license nothing in this repository.",
        "",
        "| file | source | licence | bytes | sha256 |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| `{f}` | `{s}` | {lic} | {n:,} | `{h[:16]}` |" for f, s, lic, n, h in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (replaced)")
    args = parser.parse_args(argv)
    try:
        rows = build(args.out)
    except (OSError, ValueError) as exc:
        print(f"build_corpus: error: {exc}", file=sys.stderr)
        return 1
    total = sum(r[3] for r in rows)
    print(f"wrote {len(rows)} files, {total:,} bytes of text to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
