"""The markup parser alone, on in-memory cell sources (fast tier)."""
from __future__ import annotations

import pytest

from attnkit.authoring import markup
from attnkit.authoring.markup import HIDDEN, MARK_SCHEME, SOLUTION, MarkupError, parse, regions, render


def test_labelled_region_with_stub():
    """Does a labelled region keep its label, indentation, solution and stub apart?"""
    src = ("class M:\n"
           "    def f(self):\n"
           "        ### BEGIN SOLUTION (e)\n"
           "        p = torch.softmax(s, dim=-1)\n"
           "        ### STUB: p = torch._____(s, dim=-1)  # (e)\n"
           "        ### END SOLUTION\n"
           "        return p")
    items = parse(src)
    (region,) = [i for i in items if isinstance(i, markup.Region)]
    assert (region.kind, region.label, region.indent) == (SOLUTION, "e", "        ")
    assert region.body == ["        p = torch.softmax(s, dim=-1)"]
    assert region.stub == ["p = torch._____(s, dim=-1)  # (e)"]
    out, used = render(src, solutions="stub")
    assert "        p = torch._____(s, dim=-1)  # (e)" in out.split("\n") and "softmax" not in out and not used
    assert render(src)[0].split("\n")[2] == "        p = torch.softmax(s, dim=-1)"


def test_unlabelled_region_without_stub_gets_the_default_stub():
    """Does an unlabelled region without a STUB line become nbgrader's code stub at its indentation?"""
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION"
    (region,) = regions(src)
    assert region.label == "" and region.stub == []
    out, _ = render(src, solutions="stub")
    assert out == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"


def test_replace_by_label_and_default_label():
    """Can a fixture replace a region by its label, and an unlabelled one by the cell's grade_id?"""
    src = "### BEGIN SOLUTION (A)\nanswer_A = 1\n### END SOLUTION\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION"
    out, used = render(src, replace={"A": ["answer_A = 3"], "cell7": ["x = 5"]}, default_label="cell7")
    assert out == "answer_A = 3\nx = 5" and used == {"A", "cell7"}


def test_multi_line_stub_keeps_relative_indentation():
    src = "    ### BEGIN SOLUTION (g)\n    y = 1\n    ### STUB: if x:\n    ### STUB:     y = _____\n    ### END SOLUTION"
    out, _ = render(src, solutions="stub")
    assert out == "    if x:\n        y = _____"


@pytest.mark.parametrize("begin,end", [("###BEGIN SOLUTION", "###END SOLUTION"),
                                       ("#  BEGIN SOLUTION (a)", "#   END SOLUTION"),
                                       ("### BEGIN SOLUTION(a)", "### END SOLUTION")])
def test_markers_with_other_spacing(begin, end):
    """Are markers found the way nbgrader finds them, whatever the spacing around the words?"""
    (region,) = regions(f"{begin}\nx = 1\n##STUB:x = _____\n{end}")
    assert region.body == ["x = 1"] and region.stub == ["x = _____"]


def test_hidden_region_answer_texts_and_mark_scheme():
    """Are ANSWER TEXT lines read from hidden regions, and hidden/mark-scheme regions dropped by default?"""
    src = ("check(a)\n### BEGIN HIDDEN TESTS\n### ANSWER TEXT: [d, k]\n#  ANSWER TEXT:  N C M \nhidden_check(a)\n"
           "### END HIDDEN TESTS\n### BEGIN MARK SCHEME\nfull marks if ...\n### END MARK SCHEME")
    hidden, scheme = regions(src)
    assert hidden.kind == HIDDEN and hidden.answers == ["[d, k]", "N C M"] and hidden.body == ["hidden_check(a)"]
    assert scheme.kind == MARK_SCHEME
    assert render(src)[0] == "check(a)"
    kept, _ = render(src, keep=(HIDDEN,))
    assert "hidden_check(a)" in kept and "ANSWER TEXT: [d, k]" in kept and "full marks" not in kept


@pytest.mark.parametrize("src,where", [
    ("### BEGIN SOLUTION\nx = 1", "line 1"),                                        # unterminated
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION (b)\n### END SOLUTION", "line 2"),       # nested
    ("### BEGIN HIDDEN TESTS\n### BEGIN SOLUTION\n### END SOLUTION", "line 2"),       # solution inside hidden
    ("x = 1\n### END SOLUTION", "line 2"),                                          # END without BEGIN
    ("### BEGIN SOLUTION\nx\n### END HIDDEN TESTS", "line 3"),                       # mismatched END
    ("### STUB: x = _____", "line 1"),                                              # stub outside a region
    ("### BEGIN HIDDEN TESTS\n### STUB: x\n### END HIDDEN TESTS", "line 2"),          # stub in a hidden region
    ("### BEGIN HIDDEN TESTS\n### ANSWER TEXT:\n### END HIDDEN TESTS", "line 2"),     # empty answer text
])
def test_malformed_regions_raise_with_their_place(src, where):
    """Does a malformed region raise one clear error naming the notebook, the cell and the line?"""
    with pytest.raises(MarkupError) as err:
        parse(src, notebook="q3.ipynb", cell="q3_mha")
    assert str(err.value).startswith(f"q3.ipynb, cell q3_mha, {where}: ")


def test_secret_lines_are_long_lines_of_the_kinds_asked():
    src = "### BEGIN HIDDEN TESTS\nok\nexpect(f(x) == 3, 'msg')\n### END HIDDEN TESTS"
    assert markup.secret_lines(src) == ["expect(f(x) == 3, 'msg')"]
    assert markup.secret_lines(src, (SOLUTION,)) == []


def test_contains_marker_and_normalise():
    assert markup.contains_marker("a\n### BEGIN HIDDEN TESTS") == "BEGIN HIDDEN TESTS"
    assert markup.contains_marker("just prose about a solution") is None
    assert markup.normalise(" W_k :  [d,\n k] ") == "W_k : [d, k]"
