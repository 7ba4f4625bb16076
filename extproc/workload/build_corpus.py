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

PSF, VERBATIM, VIM, MATPLOTLIB = "PSF", "verbatim", "Vim", "matplotlib"

# ``extra/``: more kinds of text for the estimator accuracy benchmark (benchmarks/accuracy.py). The
# workload's prompts read only the top-level category folders, so the shipped bytes/token table stays
# valid. Prose here includes what a character classifier finds hard: indented licence clauses, HTML,
# German and Russian; code covers shell, PowerShell, fish, Vim script, JavaScript and CSS.
EXTRA_PROSE_LICENCES = ("Apache-2.0", "MPL-2.0")
EXTRA_IDLE = ("README.txt", "TODO.txt", "help.html")
EXTRA_TUTORS = (("prose", "de"), ("prose", "ru"), ("cjk", "ko"), ("cjk", "zh_tw"))
EXTRA_VENV_SCRIPTS = ("common/activate", "common/Activate.ps1", "posix/activate.fish")
EXTRA_PYTHON = ("json/encoder.py", "string.py")
EXTRA_VIM_SCRIPTS = ("autoload/ccomplete.vim", "syntax/python.vim")
EXTRA_MPL_WEB = ("js/mpl.js", "css/page.css", "css/boilerplate.css")
EXTRA_CJK_CODEC_TEXTS = ("euc_kr",)
# Functions whose signatures and docstrings become OpenAI tool definitions (tool-JSON text).
TOOL_MODULES = ("textwrap", "shlex", "heapq", "bisect", "fractions", "statistics", "string", "json", "base64")


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
    return out + extra_sources()


def _matplotlib_web() -> Path:
    import matplotlib  # a dependency of the package; its web backend ships JavaScript and CSS

    return Path(matplotlib.__file__).parent / "backends" / "web_backend"


def _matplotlib_licence() -> Path:
    from importlib.metadata import distribution

    files = distribution("matplotlib").files or []
    found = [f for f in files if f.name == "LICENSE" and ".dist-info" in str(f.parent)]
    if not found:
        raise FileNotFoundError("matplotlib's LICENSE is not in its installed metadata")
    return Path(str(found[0].locate()))


def extra_sources() -> list[Source]:
    stdlib, vim, web = _stdlib(), _vim_runtime(), _matplotlib_web()
    out = [
        Source("extra/prose", f"licence-{n}.txt", Path("/usr/share/common-licenses") / n, VERBATIM)
        for n in EXTRA_PROSE_LICENCES
    ]
    out += [
        Source("extra/prose", f"idle-{n}.txt".replace(".txt.txt", ".txt"), stdlib / "idlelib" / n, PSF)
        for n in EXTRA_IDLE
    ]
    out += [
        Source(f"extra/{cat}", f"vim-tutor-{lang}.txt", vim / "tutor" / f"tutor.{lang}.utf-8", VIM)
        for cat, lang in EXTRA_TUTORS
    ]
    out += [
        Source("extra/code", f"venv-{Path(n).name}.txt", stdlib / "venv" / "scripts" / n, PSF)
        for n in EXTRA_VENV_SCRIPTS
    ]
    out += [Source("extra/code", f"python-{n.replace('/', '-')}.txt", stdlib / n, PSF) for n in EXTRA_PYTHON]
    out += [Source("extra/code", f"vim-{Path(n).name}.txt", vim / n, VIM) for n in EXTRA_VIM_SCRIPTS]
    out += [Source("extra/code", f"matplotlib-{Path(n).name}.txt", web / n, MATPLOTLIB) for n in EXTRA_MPL_WEB]
    out += [
        Source("extra/cjk", f"cpython-{n}-utf8.txt", stdlib / "test" / "cjkencodings" / f"{n}-utf8.txt", PSF)
        for n in EXTRA_CJK_CODEC_TEXTS
    ]
    return out


def _tool(name: str, fn: object) -> dict | None:
    """An OpenAI tool definition from a stdlib function: docstring as description, parameters from
    the signature (type from the default's type, else string)."""
    import inspect

    doc = inspect.getdoc(fn)
    try:
        sig = inspect.signature(fn)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not doc:
        return None
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
    props: dict[str, dict[str, str]] = {}
    required = []
    for pname, param in sig.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or pname == "self":
            continue
        default = param.default
        kind = kinds.get(type(default), "string") if default is not param.empty else "string"
        props[pname] = {"type": kind, "description": f"the {pname} argument of {name}"}
        if default is param.empty:
            required.append(pname)
    return {
        "type": "function",
        "function": {
            "name": name.replace(".", "_"),
            "description": doc,
            "parameters": {"type": "object", "properties": props, "required": required},
        },
    }


def tool_definitions() -> bytes:
    """JSON list of tool definitions derived from the public functions of ``TOOL_MODULES`` (PSF text)."""
    import importlib
    import inspect
    import json

    tools = []
    for mod_name in TOOL_MODULES:
        mod = importlib.import_module(mod_name)
        for name, fn in sorted(vars(mod).items()):
            if name.startswith("_") or not (inspect.isfunction(fn) or inspect.isbuiltin(fn)):
                continue
            if getattr(fn, "__module__", mod_name) != mod_name:
                continue
            tool = _tool(f"{mod_name}.{name}", fn)
            if tool is not None:
                tools.append(tool)
    return (json.dumps(tools, indent=1, ensure_ascii=False) + "\n").encode()


def _display(path: Path) -> str:
    """Source paths as a reader can find them on another machine: CPython-relative where possible."""
    for root, label in ((_stdlib(), "Lib"), (_include(), "Include")):
        if path.is_relative_to(root):
            return f"CPython {sys.version.split()[0]} {label}/{path.relative_to(root)}"
    web = _matplotlib_web()
    if path.is_relative_to(web.parent.parent):  # the installed matplotlib package, wherever the venv is
        from importlib.metadata import version

        return f"matplotlib {version('matplotlib')} {path.relative_to(web.parent.parent.parent)}"
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
    modules = ", ".join(TOOL_MODULES)
    write(
        "extra/tools/stdlib-tools.json.txt",
        tool_definitions(),
        f"CPython {sys.version.split()[0]} docstrings of {modules}",
        PSF,
    )
    licences = out / "LICENSES"
    licences.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_stdlib() / "LICENSE.txt", licences / "PSF-LICENSE.txt")
    shutil.copyfile(_vim_runtime() / "doc" / "uganda.txt", licences / "VIM-LICENSE.txt")
    shutil.copyfile(_matplotlib_licence(), licences / "MATPLOTLIB-LICENSE.txt")
    (out / "PROVENANCE.md").write_text(provenance(rows))
    return rows


def provenance(rows: list[tuple[str, str, str, int, str]]) -> str:
    lines = [
        "# Prompt corpus: provenance",
        "",
        "Real text for the workload prompts and the accuracy benchmark, one folder per category (`prose`,",
        "`code`, `cjk`; `mixed` is interleaved `prose` and `cjk` at prompt-build time). Regenerate with",
        "`python -m extproc.workload.build_corpus`; this file is written by that script.",
        f"Built with Python {sys.version.split()[0]} on the sources listed below.",
        "",
        "Licence column:",
        "- **PSF**: Python Software Foundation License Agreement (copy in `LICENSES/PSF-LICENSE.txt`).",
        "- **Vim**: unmodified parts of Vim (Debian `vim-runtime`), which the Vim licence lets anyone",
        "  distribute with the licence text (`LICENSES/VIM-LICENSE.txt`, a copy of `doc/uganda.txt`).",
        "- **matplotlib**: files of matplotlib's web backend, under the matplotlib licence (PSF-based;",
        "  copy in `LICENSES/MATPLOTLIB-LICENSE.txt`).",
        "- `extra/` holds more kinds of text for `benchmarks/accuracy.py` (prose that looks like code, HTML,",
        "  German, Russian, Korean, traditional Chinese, shell/PowerShell/fish/Vim script/JavaScript/CSS, and",
        "  tool definitions generated from stdlib docstrings); workload prompts do not read it.",
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
