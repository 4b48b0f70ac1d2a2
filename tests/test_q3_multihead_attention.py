"""Q3 through the real pipeline: each fixture scores exactly as expected (slow); each blank's visible check on its
own, in this process (fast)."""
import linecache
import sys
from pathlib import Path

import pytest

from attnkit.authoring import markup
from attnkit.authoring import notebooks as nbu
from banks.hw9.q3_multihead_attention import _STUBS, FIXTURES
from harness import bank, bank_test

SOURCE = Path(__file__).resolve().parents[1] / "source" / "hw9"
NB = "q3_multihead_attention"

graded = bank(FIXTURES, [NB])
test_fixture_scores_exactly = pytest.mark.slow(bank_test(FIXTURES))

CHECKS = {"a": "q3a_W_k", "b": "q3b_W_v", "c": "q3c_W_o", "d": "q3d_scores", "e": "q3e_softmax",
          "f": "q3f_weighted_values", "g": "q3g_split_heads", "h": "q3h_output_projection"}


def visible_errors(answers):
    """{test cell: the error its visible part raised, or None}, the student's notebook run here as a kernel would."""
    nb = nbu.fill(nbu.read(SOURCE / f"{NB}.ipynb"), answers)
    sys.path.insert(0, str(SOURCE))
    ns, errors = {"__name__": "__main__"}, {}
    try:
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            source, _ = markup.split_hidden(cell.source)
            name = f"<cell-{i}>"
            linecache.cache[name] = (len(source), None, source.splitlines(True), name)
            try:
                exec(compile(source, name, "exec"), ns)
                error = None
            except Exception as exc:  # noqa: BLE001 (what the cell would show)
                error = f"{type(exc).__name__}: {exc}"
            if nbu.is_test_cell(cell):
                errors[nbu.grade_id(cell)] = error
    finally:
        sys.path.remove(str(SOURCE))
    return errors


@pytest.mark.parametrize("label", sorted(CHECKS))
def test_one_filled_blank_passes_its_visible_check_while_the_others_are_blanks(label):
    """With only this blank filled, does its visible check pass, and does every other blank's check name its own blank?"""
    errors = visible_errors({k: v for k, v in _STUBS.items() if k != label})
    assert errors[CHECKS[label]] is None, errors[CHECKS[label]]
    for other, gid in CHECKS.items():
        if other != label:
            assert errors[gid] == f"AssertionError: ({other}) is still a blank `_____`: fill it in", (gid, errors[gid])


def test_the_untouched_wide_layer_says_not_written_yet():
    """Does the untouched Q3(b) stub define the class, and its check say "not written yet" (no NameError)?"""
    stubs = {r.label: "\n".join(r.stub) for r in nbu.regions(nbu.read(SOURCE / f"{NB}.ipynb"))}
    errors = visible_errors({k: stubs[k] for k in ("wide-init", "wide-methods")})
    assert "not written yet" in errors["q3b_wide_value_test"] and "NameError" not in errors["q3b_wide_value_test"]
