"""teaching.source: the code a lesson shows is read from the package, with its file and line numbers."""

import inspect

import pytest

from rlhf_course.algorithms import ppo, sft
from rlhf_course.teaching import source


def test_an_excerpt_runs_from_its_start_marker_to_the_line_before_its_stop_marker_and_says_where():
    where, code = source.excerpt(sft.train_sft, "# 1.", "# 3.")
    lines, first = inspect.getsourcelines(sft.train_sft)
    start = first + next(i for i, line in enumerate(lines) if "# 1." in line)
    assert where.startswith("`rlhf_course/algorithms/sft.py`, lines ") and where.endswith(
        f"{start}-{start + code.count(chr(10))}"
    )
    assert code.startswith("# 1.") and "sft_step(" in code and "# 3." not in code
    assert not code.startswith(" ")  # dedented


def test_a_marker_that_is_not_in_the_source_is_an_error_that_names_it():
    with pytest.raises(ValueError, match="'# 9. nothing'"):
        source.excerpt(ppo.train_ppo, "# 9. nothing")
