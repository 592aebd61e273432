"""A template cannot hang ``prepare`` or exhaust its memory: one row's output, values and time are capped.

Each over-limit row is a ``TemplateProblem`` (a problem line for that row), never a crash or a hang. Time
limits here are short so the suite stays fast; each test that could hang is also bounded by the limit it
checks, so a regression fails slowly rather than never.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bulkinfer.tables.builder import RecordSpec
from bulkinfer.tables.template import MAX_NUMBER_BITS, PromptTemplate, TemplateProblem
from tests.unit.test_tables import build_all, write_csv

ROW = {"name": "Mug"}


def problem(source: str, max_bytes: int = 2**20, max_seconds: float = 0.3) -> str:
    template = PromptTemplate(source, "p.j2", max_bytes=max_bytes, max_seconds=max_seconds)
    with pytest.raises(TemplateProblem) as caught:
        template.render(ROW)
    return caught.value.message


def test_templates_within_the_limits_render_as_before() -> None:
    source = "{{ name ~ '!' }} {{ 'ab' * 3 }} {{ [1] + [2] }} {{ 2 ** 10 }}"
    source += "{% for i in range(3) %}{{ i }}{% endfor %}"
    assert PromptTemplate(source, "p.j2").render(ROW) == "Mug! ababab [1, 2] 1024012"


def test_output_stops_at_the_byte_cap() -> None:
    source = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
    assert problem(source, max_bytes=5000) == "p.j2: output over the 5000 bytes limit for one row"
    assert problem(source, max_seconds=30) == "p.j2: output over the 1 MiB limit for one row"


def test_the_byte_cap_counts_utf8_bytes_not_characters() -> None:
    template = PromptTemplate("{{ 'é' * 600 }}", "p.j2", max_bytes=1024)
    with pytest.raises(TemplateProblem, match="output over the 1 KiB limit"):
        template.render(ROW)
    assert PromptTemplate("{{ 'é' * 500 }}", "p.j2", max_bytes=1024).render(ROW) == "é" * 500


@pytest.mark.parametrize(
    ("source", "operator"),
    [
        ("{{ 'x' * 10**10 }}", "'*'"),
        ("{{ 10**10 * 'x' }}", "'*'"),
        ("{{ [0] * 10**10 }}", "'*'"),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "'+'",
        ),
    ],
)
def test_a_value_over_the_cap_is_refused_before_it_is_built(source: str, operator: str) -> None:
    assert problem(source) == f"p.j2 line 1: {operator} would make a value over the 1 MiB limit for one row"


def test_concatenation_in_a_loop_stops_at_the_cap() -> None:
    source = "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    assert problem(source) == "p.j2 line 1: '~' made a value over the 1 MiB limit for one row"


@pytest.mark.parametrize(
    "source", ["{{ 10 ** (10 ** 10) }}", "{{ 7 ** 100000 }}", "{{ (2 ** 40000) * (2 ** 40000) }}"]
)
def test_huge_numbers_are_refused_before_they_are_computed(source: str) -> None:
    assert problem(source).endswith(f"would make a number over {MAX_NUMBER_BITS} bits")


def test_compiling_a_huge_constant_expression_does_not_compute_it() -> None:
    started = time.monotonic()
    PromptTemplate("{{ 'x' * 10**10 }}{{ 9 ** (9 ** 9) }}", "p.j2")  # Jinja folds constants it may compute
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}done",
        "{% set s %}{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
        "{% endset %}",
    ],
    ids=["silent nested loops", "exponential macro", "loops inside a set block"],
)
def test_a_row_that_runs_past_the_time_limit_stops_without_output(source: str) -> None:
    assert problem(source, max_seconds=0.2) == "p.j2 line 1: took over 0.2 s for one row"


def test_a_macro_calling_itself_forever_is_a_problem_not_a_crash() -> None:
    assert problem("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").startswith(
        "p.j2 line 1: RecursionError"
    )


def test_a_row_over_a_limit_is_a_problem_line_and_the_next_row_still_builds(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", "name,times\nMug,3\nJug,10000000000\n")
    template = PromptTemplate("{{ name * (times | int) }}", "p.j2")
    records, problems = build_all(table, RecordSpec(template))
    assert [r["modelInput"]["messages"][0]["content"][0]["text"] for r in records] == ["MugMugMug"]
    [over] = problems
    assert (over.where, over.kind) == ("t.csv line 3", "template")
    assert over.message == "p.j2 line 1: '*' would make a value over the 1 MiB limit for one row"
