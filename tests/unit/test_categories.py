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
