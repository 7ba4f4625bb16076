"""The shipped bytes-per-token table, its sampler, and agreement between the table and a fresh
measurement with the real BPE; the corpus matches its provenance note."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from extproc.workload import build_corpus
from extproc.workload.bytes_per_token import (
    DEFAULT_PATH,
    WINDOWS,
    BytesPerTokenTable,
    default_table,
    format_table,
    measure_ratios,
    sample_bytes_per_token,
)
from extproc.workload.corpus import CORPUS_DIR
from extproc.workload.mix import CATEGORIES


def test_shipped_table_covers_every_category_encoding_and_window():
    table = default_table()
    assert table.encodings == ["cl100k_base", "o200k_base"]
    for encoding in table.encodings:
        assert table.categories(encoding) == sorted(CATEGORIES)
    data = json.loads(DEFAULT_PATH.read_text())
    assert data["windows"] == list(WINDOWS)
    entry = data["encodings"]["cl100k_base"]["cjk"]
    assert entry["all"]["n"] == sum(w["n"] for w in entry["by_window"].values())
    # CJK packs fewer bytes per token than English prose (the reason categories exist)
    assert table.mean("cjk") < table.mean("mixed") < table.mean("prose")
    assert "cl100k_base" in format_table(data)


def test_sampler_stays_within_measured_range_and_follows_window_size():
    table = default_table()
    rng = np.random.default_rng(0)
    data = table.data["encodings"]["cl100k_base"]["code"]
    short = table.sample("code", 20_000, rng, prompt_tokens=40)
    long = table.sample("code", 20_000, rng, prompt_tokens=9000)
    q50, q8000 = data["by_window"]["50"]["quantiles"], data["by_window"]["8000"]["quantiles"]
    assert q50[0] <= short.min() and short.max() <= q50[-1]
    assert q8000[0] <= long.min() and long.max() <= q8000[-1]
    assert long.std() < short.std()  # long prompts average out
    assert long.mean() == pytest.approx(data["by_window"]["8000"]["mean"], rel=0.02)
    mixed_sizes = np.array([30] * 5000 + [8000] * 5000)
    per_size = table.sample_for_sizes("code", mixed_sizes, np.random.default_rng(5))
    assert per_size[5000:].std() < per_size[:5000].std()
    assert q50[0] <= per_size[:5000].min() and per_size[5000:].max() <= q8000[-1]
    one = sample_bytes_per_token("prose", np.random.default_rng(1))
    assert isinstance(one, float) and one == sample_bytes_per_token("prose", np.random.default_rng(1))


def test_fresh_measurement_agrees_with_the_shipped_table():
    shipped = default_table().data["encodings"]["cl100k_base"]
    for category in ("prose", "cjk"):
        fresh = measure_ratios(category, 1000, 25, np.random.default_rng(123))
        assert fresh.mean() == pytest.approx(shipped[category]["by_window"]["1000"]["mean"], rel=0.05)


def test_unknown_names_and_bad_tables_are_clear_errors(tmp_path: Path):
    table = default_table()
    with pytest.raises(ValueError, match="category 'klingon'"):
        table.sample("klingon", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="encoding 'p50k_base'"):
        table.sample("prose", 1, np.random.default_rng(0), encoding="p50k_base")
    bad = tmp_path / "bpt.json"
    bad.write_text('{"windows": [50]}')
    with pytest.raises(ValueError, match="not a bytes-per-token table"):
        BytesPerTokenTable.load(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match=r"bpt.json:1: invalid JSON"):
        BytesPerTokenTable.load(bad)


def _provenance_rows() -> dict[str, tuple[int, str]]:
    text = (CORPUS_DIR / "PROVENANCE.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \| .* \| ([\d,]+) \| `([0-9a-f]{16})` \|$", text, re.M)
    return {name: (int(size.replace(",", "")), digest) for name, size, digest in rows}


def test_corpus_files_match_their_provenance_note():
    rows = _provenance_rows()
    files = {p.relative_to(CORPUS_DIR).as_posix() for p in CORPUS_DIR.glob("**/*.txt") if p.parent.name != "LICENSES"}
    assert files == set(rows) and {f.split("/")[0] for f in files} == {"prose", "code", "cjk", "extra"}
    for name, (size, digest) in rows.items():
        data = (CORPUS_DIR / name).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest()[:16] == digest
    assert (CORPUS_DIR / "LICENSES" / "PSF-LICENSE.txt").is_file()
    assert (CORPUS_DIR / "LICENSES" / "VIM-LICENSE.txt").is_file()
    assert (CORPUS_DIR / "LICENSES" / "MATPLOTLIB-LICENSE.txt").is_file()
    assert sum(s for s, _ in rows.values()) < 1_000_000  # under a megabyte


def test_build_corpus_reproduces_the_shipped_files(tmp_path: Path):
    built_with = re.search(r"Built with Python (\S+)", (CORPUS_DIR / "PROVENANCE.md").read_text())
    if built_with is None or built_with.group(1) != sys.version.split()[0]:
        pytest.skip("corpus sources are files of a specific CPython version")
    if any(not s.path.is_file() for s in build_corpus.sources()):
        pytest.skip("a corpus source (Debian vim-runtime or common-licenses) is not installed here")
    assert build_corpus.main(["--out", str(tmp_path / "corpus")]) == 0
    for name in _provenance_rows():
        assert (tmp_path / "corpus" / name).read_bytes() == (CORPUS_DIR / name).read_bytes()
    assert (tmp_path / "corpus" / "PROVENANCE.md").read_text() == (CORPUS_DIR / "PROVENANCE.md").read_text()
