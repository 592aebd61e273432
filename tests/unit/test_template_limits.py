"""A template cannot hang ``prepare`` or exhaust its memory: one row's output, values and time are capped.

Each over-limit row is a ``TemplateProblem`` (a problem line for that row), never a crash or a hang. Time
limits here are short so the suite stays fast; each test that could hang is also bounded by the limit it
checks, so a regression fails slowly rather than never.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bulkinfer.tables.builder import RecordSpec
from bulkinfer.tables.template import MAX_NUMBER_BITS, PromptTemplate, TemplateProblem
from tests.unit.test_tables import build_all, write_csv

if sys.platform == "linux":  # for a memory ceiling
    import resource

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


# One call into Python cannot be interrupted, so a filter, method or format that would build a value over
# the cap must be refused from its arguments, before it runs. N is a size that would need a terabyte, and
# each test runs under a memory ceiling: a check that came after the allocation fails the test at once
# (a MemoryError, not the refusal), rather than exhausting the machine.

N = 10**12
S = "{% set s = 'x' * 2**20 %}"  # a value at the cap
MANY = "[s] * 2**20"  # a million references to it: a small list whose text is a terabyte


@contextmanager
def memory_ceiling() -> Iterator[None]:
    """At most 2 GiB more address space than the process already holds, while the row renders.

    Lifted before pytest reports a failure, so the report itself has room.
    """
    statm = Path("/proc/self/statm")
    if sys.platform != "linux" or not statm.exists():
        yield  # the refusals are still checked; only the safety net is missing
        return
    used = int(statm.read_text().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    ceiling = used + 2**31 if hard == resource.RLIM_INFINITY else min(used + 2**31, hard)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def refused(source: str) -> str:
    """The row's problem, with a deadline long enough that only a size check can refuse it."""
    with memory_ceiling():
        return problem(source.replace("N", str(N)), max_seconds=30)


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("{{ 'x'|center(N) }}", "center"),
        ("{{ 'x'.center(N) }}", "center"),
        ("{{ 'x'.ljust(N) }}", "ljust"),
        ("{{ 'x'.rjust(N, '-') }}", "rjust"),
        ("{{ 'x'.zfill(N) }}", "zfill"),
        ("{{ 'a\tb'.expandtabs(N) }}", "expandtabs"),
        ("{{ ('\t' * 2**20).expandtabs(tabsize=2**20) }}", "expandtabs"),
        (S + "{{ s|replace('x', s) }}", "replace"),
        (S + "{{ s.replace('x', s) }}", "replace"),
        (S + "{{ 'x'|replace('x', " + MANY + ") }}", "replace"),
        (S + "{{ (" + MANY + ")|join }}", "join"),
        (S + "{{ range(100000)|join(s) }}", "join"),
        (S + "{{ range(100000)|map('string')|join(s) }}", "join"),
        (S + "{{ s.join(" + MANY + ") }}", "join"),
        (S + "{{ s.join(range(100000)|map('string')) }}", "join"),
        ("{{ '%Nd' % 1 }}", "%"),
        ("{{ '%-*s' % (N, 'x') }}", "%"),
        ("{{ '%.Nf' % 1.5 }}", "%"),
        ("{{ '%(a)Ns' % {'a': 1} }}", "%"),
        ("{{ '%((a))Ns' % {'(a)': 1} }}", "%"),
        (S + "{{ '%s%s' % (s, s) }}", "%"),
        (S + "{{ '%r' % (" + MANY + ",) }}", "%"),
        ("{{ '{:>N}'.format(1) }}", "format"),
        ("{{ '{:>{}}'.format(1, N) }}", "format"),
        ("{{ '{0:.{1}f}'.format(1.5, N) }}", "format"),
        ("{{ '{w:{w}}'.format_map({'w': N}) }}", "format"),
        ("{{ ('{:>N}'|safe).format('<') }}", "format"),
        (S + "{{ '{!r}'.format(" + MANY + ") }}", "format"),
        (S + "{{ '{}{}'.format(s, s) }}", "format"),
        ("{{ '%Nd'|format(1) }}", "format"),
        ("{{ '%(a)Nd'|format(a=1) }}", "format"),
        ("{{ '%(env)Ns'|format(env=1) }}", "format"),  # keywords named like the check's own arguments
        ("{{ '%(limit)Ns'|format(limit=1) }}", "format"),
        ("{{ 'x'|indent(N) }}", "indent"),
        ("{{ 'x'|indent(N, true) }}", "indent"),
        (S + "{{ ('\\r' * 2**20)|indent(s) }}", "indent"),  # \r ends a line too
        (S + "{{ s|wordwrap(1, wrapstring=s) }}", "wordwrap"),
        (S + "{{ 'a.io b.io'|urlize(target=s) }}", "urlize"),
        ("{{ 'x'|tojson(N) }}", "tojson"),
        (S + "{{ (" + MANY + ")|tojson }}", "tojson"),
        (S + "{{ (" + MANY + ")|pprint }}", "pprint"),
        (S + "{{ (" + MANY + ")|string }}", "string"),
        (S + "{{ (" + MANY + ")|upper }}", "upper"),
        (S + "{{ (" + MANY + ") ~ '' }}", "~"),
        ("{{ [1]|batch(N, 0)|first }}", "batch"),
        ("{{ [1]|slice(N)|first }}", "slice"),
        ("{{ ([[0] * 2**20] * 2**20)|sum(start=[]) }}", "sum"),
        ("{{ lipsum(n=N) }}", "lipsum"),
        ("{{ lipsum(1, min=N - 1, max=N) }}", "lipsum"),
        (S + "{{ 'x'.translate({120: s}) }}{{ s.translate({120: s}) }}", "translate"),
        ("{% set l = [0] * 2**20 %}{{ l.extend(l) }}", "extend"),
        ("{% set l = [0] %}{% for i in range(100000) %}{{ l.extend(range(100000)) }}{% endfor %}", "extend"),
        ("{{ (1).to_bytes(N, 'big') }}", "to_bytes"),
    ],
)
def test_a_call_over_the_cap_is_refused_before_it_runs(source: str, name: str) -> None:
    assert refused(source) == f"p.j2 line 1: {name!r} would make a value over the 1 MiB limit for one row"


@pytest.mark.parametrize(
    "source",
    [
        S + "{{ " + MANY + " }}",
        S + "{% set ns = namespace(items=" + MANY + ") %}{{ ns }}",
        S + "{% macro m() %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endmacro %}{{ m()|length }}",
        S + "{% set x %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endset %}{{ x|length }}",
        S + "{% filter length %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endfilter %}",
    ],
    ids=["a list", "a namespace", "a macro", "a set block", "a filter block"],
)
def test_text_over_the_cap_is_refused_before_it_is_joined(source: str) -> None:
    assert refused(source) == "p.j2 line 1: output over the 1 MiB limit for one row"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("{{ ('&' * 2**20)|forceescape|forceescape|forceescape|length }}", "forceescape"),
        ("{{ ('x' * 2**20).encode().hex().encode().hex().encode().hex()|length }}", "hex"),
    ],
)
def test_growth_by_a_small_factor_cannot_compound(source: str, name: str) -> None:
    assert refused(source) == f"p.j2 line 1: {name!r} made a value over the 1 MiB limit for one row"


def test_filters_methods_and_formats_within_the_cap_render_as_before() -> None:
    row = {"name": "Mug", "price": 3.5, "tags": ["a", "b"], "text": "hello world\nsecond line"}
    cases = {
        "{{ name|center(7) }}|": "Mug  |",
        "{{ name.ljust(5, '.') }}{{ name.zfill(5) }}{{ 'a\tb'.expandtabs(2) }}": "Mug..00Muga b",
        "{{ name|replace('u', 'oo') }} {{ name.replace('M', 'J') }}": "Moog Jug",
        "{{ tags|join(', ') }} {{ '-'.join(tags) }} {{ range(3)|map('string')|join }}": "a, b a-b 012",
        "{{ '%s at %.2f' % (name, price) }} {{ '%(name)s' % row }}": "Mug at 3.50 Mug",
        "{{ '%*d|%-*s|' % (3, 7, 2, 'a') }}": "7|a |",
        "{{ '{} at {:.1f}'.format(name, price) }}": "Mug at 3.5",
        "{{ '{n:>{w}}|'.format_map({'n': 1, 'w': 2}) }}": "1|",
        "{{ '%s, %s!'|format('Hello', name) }}": "Hello, Mug!",
        "{{ text|indent(2) }}": "hello world\n  second line",
        "{{ text|wordwrap(6) }}": "hello\nworld\nsecond\nline",
        "{{ tags|tojson }} {{ tags|pprint }}": "[\"a\", \"b\"] ['a', 'b']",
        "{{ tags|string }} {{ tags }} {{ tags ~ 1 }}": "['a', 'b'] ['a', 'b'] ['a', 'b']1",
        "{{ range(5)|batch(2, 0)|list }}": "[[0, 1], [2, 3], [4, 0]]",
        "{{ range(3)|slice(2)|list }} {{ [[1], [2]]|sum(start=[]) }}": "[[0, 1], [2]] [1, 2]",
        "{{ 'x'|truncate(10**12) }} {{ lipsum(1, false, 5, 6)|length > 0 }}": "x True",
        "{% macro m(x) %}[{{ x }}{{ caller() }}]{% endmacro %}{% call m(name) %}!{% endcall %}": "[Mug!]",
        "{% set l = [1] %}{{ l.extend(range(2)) }}{{ l }}": "[1, 0, 1]",
        "{{ (5).to_bytes(2, 'big') }} {{ 'ab'.translate({97: 'xy'}) }}": "b'\\x00\\x05' xyb",
    }
    for source, expected in cases.items():
        assert PromptTemplate(source, "p.j2").render(row) == expected, source
