import pytest

from extproc.algorithm import Categorizer, CategoryParams

ENGLISH = (
    "The committee met on Tuesday to discuss the proposed changes to the library's opening hours. "
    "Several members argued that longer evening hours would serve students better, while others "
    "worried about the cost of additional staff. After a long discussion, they agreed to run a trial."
)
PYTHON = '''def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

if __name__ == "__main__":
    print([fib(i) for i in range(10)])
'''
CHINESE = "机器学习是人工智能的一个分支。它使计算机能够在没有明确编程的情况下从数据中学习，并随着经验的积累而不断改进。"
JAPANESE = (
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
    "何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。"
)
MIXED = ENGLISH + "\n" + CHINESE


@pytest.mark.parametrize(
    ("text", "category"),
    [
        (ENGLISH, "prose"),
        (PYTHON, "code"),
        (CHINESE, "cjk"),
        (JAPANESE, "cjk"),
        (MIXED, "mixed"),
        ("Here is code:\n```js\nconsole.log(1)\n```", "code"),
        ("", "prose"),
    ],
)
def test_real_snippets(text, category):
    assert Categorizer().classify(text) == category


def test_disabled_category_falls_back_to_default():
    c = Categorizer(CategoryParams(enabled=("prose", "code"), default="prose"))
    assert c.classify(CHINESE) == "prose"
    assert c.structured() == "prose"


def test_huge_text_is_sampled_not_scanned_whole():
    text = ENGLISH * 20000  # ~5 MB
    assert Categorizer().classify(text) == "prose"


# -- odd text: its own category (random identifiers, base64, hex, digit runs) ------------------------
import base64 as _b64  # noqa: E402
import random as _random  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from extproc.algorithm.categories import odd_text  # noqa: E402

_WORDS = ENGLISH.replace(".", " ").replace(",", " ").split()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=48, max_size=6000))
def test_base64_of_any_bytes_is_odd(data):
    assert Categorizer().classify("Check this: " + _b64.b64encode(data).decode()) == "odd"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=64, max_size=6000), st.sampled_from(["", " ", ", ", "\n"]))
def test_digit_runs_and_number_lists_are_odd(digits, sep):
    text = sep.join(digits[i : i + 7] for i in range(0, len(digits), 7))
    assert Categorizer().classify(text) == "odd"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), min_size=3, max_size=800), st.integers(0, 2**32 - 1))
def test_prose_of_real_words_is_never_odd(words, seed):
    rng = _random.Random(seed)  # capitalised sentence starts and a year now and then, as prose has
    text = " ".join(
        w.capitalize() if rng.random() < 0.1 else (str(rng.randint(1900, 2030)) if rng.random() < 0.02 else w)
        for w in words
    )
    assert Categorizer().classify(text) != "odd"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000))
def test_the_detector_takes_any_bytes(raw):
    assert odd_text(raw, 0.2) in (True, False)


def test_a_few_characters_are_never_odd():
    # found by test_prose_of_real_words_is_never_odd: a year and two capitals are 60 % digits/capitals
    assert Categorizer().classify("1909 The A") != "odd"
    assert not odd_text(b"1909 2010 2020", 0.2)
    assert odd_text(b"1909 2010 2020 " * 8, 0.2)


def test_random_identifiers_hex_and_uuids_are_odd_and_the_corpus_is_not():
    rng = _random.Random(0)
    alnum = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(3000))
    hexes = rng.randbytes(1500).hex()
    uuids = " ".join(f"{rng.getrandbits(128):032x}" for _ in range(60))
    for text in (alnum, hexes, hexes.upper(), uuids):
        assert Categorizer().classify(text) == "odd", text[:40]
    from pathlib import Path

    corpus = Path(__file__).resolve().parents[2] / "extproc" / "data" / "corpus"
    for path in sorted(corpus.glob("**/*.txt")):
        text = path.read_text(encoding="utf-8")
        windows = [text[i : i + 4096] for i in range(0, max(1, len(text) - 4096), 2048)]
        assert all(Categorizer().classify(w) != "odd" for w in windows), path.name
