"""Prompt templates: Jinja2 over one table row, strict about missing columns and sandboxed.

A template sees each column as a variable (``{{ category }}``) and the whole row as ``row``
(``{{ row["unit price"] }}`` for a column name that is not an identifier). A column the row lacks is an
error naming the column and the template line, never an empty string. Templates are user input, so they
run in Jinja2's sandbox: ``{{ ''.__class__ }}`` and the like are refused. One row's rendering is also
bounded in output size and in time, so a template cannot hang ``prepare`` or exhaust its memory.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from collections.abc import Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

from bulkinfer.errors import UserError

_UNDEFINED = re.compile(r"^'([^']*)' is undefined$|has no attribute '([^']*)'$")
MAX_OUTPUT_BYTES = 2**20
MAX_SECONDS = 2.0
MAX_NUMBER_BITS = 2**16
"""A number no template needs: Python will not even print an int over 4300 digits (about 14,300 bits)."""


class TemplateProblem(Exception):
    """A row the template cannot render; ``column`` names the missing column when that is the cause."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


class PromptTemplate:
    """A compiled template; ``render(values)`` fills it with one row.

    ``max_bytes`` caps one row's rendered text (UTF-8) and ``max_seconds`` the time one row may take.
    """

    def __init__(
        self, source: str, name: str, max_bytes: int = MAX_OUTPUT_BYTES, max_seconds: float = MAX_SECONDS
    ) -> None:
        self.name = name
        env = _LimitedEnvironment(
            max_bytes,
            max_seconds,
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            finalize=_blank_none,
        )
        try:
            tree = env.parse(source, name=name, filename=name)
            code = env.compile(_bounded(tree), name=name, filename=name)
        except TemplateSyntaxError as exc:
            raise UserError(f"{name} line {exc.lineno}: {exc.message}") from None
        self._env = env
        self._template = env.template_class.from_code(env, code, env.make_globals(None), None)

    @classmethod
    def load(cls, path: Path) -> PromptTemplate:
        try:
            return cls(path.read_text(encoding="utf-8-sig"), path.name)
        except OSError as exc:
            raise UserError(f"cannot read template {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise UserError(f"template {path} is not UTF-8 text: {exc.reason}") from exc

    def render(self, values: Mapping[str, Any]) -> str:
        context = {"row": values, **values}
        try:
            return self._stream(context).strip()
        except _OverLimit as exc:
            raise self._problem(exc, str(exc)) from None
        except UndefinedError as exc:
            match = _UNDEFINED.search(str(exc))
            column = (match.group(1) or match.group(2)) if match else None
            if column is None:
                raise self._problem(exc, str(exc)) from None
            raise self._problem(exc, f"column {column!r} is missing from the row", column) from None
        except SecurityError as exc:
            raise self._problem(exc, f"refused by the sandbox: {exc}") from None
        except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as exc:
            raise self._problem(exc, f"{type(exc).__name__}: {exc}") from None
        except (RecursionError, MemoryError) as exc:  # a macro calling itself; an allocation refused
            raise self._problem(exc, f"{type(exc).__name__}: {exc}") from None

    def _stream(self, context: dict[str, Any]) -> str:
        """The row's text, piece by piece, so it stops at the size cap instead of after building it all."""
        env = self._env
        env.start_row()
        chunks: list[str] = []
        size = 0
        stream = cast(Generator[str, None, None], self._template.generate(context))  # to close it
        try:
            for chunk in stream:
                # isascii() is a flag lookup: most chunks need no encoding to be counted in bytes
                size += len(chunk) if chunk.isascii() else len(chunk.encode("utf-8", "surrogatepass"))
                if size > env.max_bytes:
                    raise _OverLimit(f"output over the {_size_text(env.max_bytes)} limit for one row")
                env.check_time()
                chunks.append(chunk)
        finally:
            stream.close()
        return "".join(chunks)

    def _problem(self, exc: BaseException, message: str, column: str | None = None) -> TemplateProblem:
        line = _template_line(exc, self.name)
        where = f"{self.name} line {line}" if line else self.name
        return TemplateProblem(f"{where}: {message}", column)


class _OverLimit(TemplateError):
    """One row's rendering went over a size or time limit."""


class _LimitedEnvironment(SandboxedEnvironment):
    """The sandbox, with limits on one row's values, output and time.

    Output is capped as it streams, but one expression can build a huge value before anything streams
    (``'x' * 10**10``), so ``*``, ``**`` and ``+`` check the size of their result first. A loop that
    outputs nothing is invisible to the stream, so every ``for`` loop (see ``_bounded``) and every call
    checks the row's deadline. A single call into Python (a filter, a string method) cannot be interrupted.
    """

    intercepted_binops = frozenset({"+", "*", "**"})

    def __init__(self, max_bytes: int, max_seconds: float, **options: Any) -> None:
        super().__init__(**options)
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self._row = threading.local()  # the deadline is per row, and rows may render on several threads

    def start_row(self) -> None:
        self._row.deadline = time.monotonic() + self.max_seconds

    def check_time(self) -> None:
        if time.monotonic() > self._row.deadline:
            raise _OverLimit(f"took over {self.max_seconds:g} s for one row")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        refusal = _binop_refusal(operator, left, right, self.max_bytes)
        if refusal is not None:
            raise _OverLimit(refusal)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.check_time()  # macros, recursive loops and methods all come through here
        return super().call(context, obj, *args, **kwargs)

    def bounded_loop(self, items: Iterable[Any]) -> Iterator[Any]:
        """A ``for`` loop's items, checking the deadline before each: nested loops need no output to hang."""
        for item in items:
            self.check_time()
            yield item

    def bounded_text(self, text: str) -> str:
        """A ``~`` concatenation: doubling a string in a loop outgrows memory long before the deadline."""
        if len(text) > self.max_bytes:
            raise _OverLimit(f"'~' made a value over the {_size_text(self.max_bytes)} limit for one row")
        return text


def _bounded(tree: nodes.Template) -> nodes.Template:
    """The template with each loop's items and each ``~`` passed through the environment's checks."""
    bounded = _Bounds().visit(tree)
    assert isinstance(bounded, nodes.Template)
    return bounded


class _Bounds(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _environment_call("bounded_loop", node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _environment_call("bounded_text", node)


def _environment_call(method: str, argument: nodes.Node) -> nodes.Call:
    function = nodes.EnvironmentAttribute(method, lineno=argument.lineno)
    return nodes.Call(function, [argument], [], None, None, lineno=argument.lineno)


def _binop_refusal(operator: str, left: Any, right: Any, max_bytes: int) -> str | None:
    """Why ``left operator right`` would be too big to compute, or None; checked before computing it."""
    if _is_int(left) and _is_int(right):
        if _result_bits(operator, left, right) > MAX_NUMBER_BITS:
            return f"{operator!r} would make a number over {MAX_NUMBER_BITS} bits"
        return None
    limit = f"would make a value over the {_size_text(max_bytes)} limit for one row"
    if operator == "*":
        sequence, times = (left, right) if _is_int(right) else (right, left)
        if _is_sequence(sequence) and _is_int(times) and len(sequence) * times > max_bytes:
            return f"'*' {limit}"
    if operator == "+" and _is_sequence(left) and _is_sequence(right) and len(left) + len(right) > max_bytes:
        return f"'+' {limit}"
    return None


def _result_bits(operator: str, left: int, right: int) -> int:
    """At least the bits of ``left operator right``, from the operands' sizes alone."""
    if operator == "**":
        return abs(left).bit_length() * right if right > 0 and abs(left) > 1 else 1
    if operator == "*":
        return left.bit_length() + right.bit_length() - 1
    return max(left.bit_length(), right.bit_length())


def _is_int(value: Any) -> bool:
    return isinstance(value, int)


def _is_sequence(value: Any) -> bool:
    """What ``*`` and ``+`` copy: its length in items is at most its size in bytes, so it bounds both."""
    return isinstance(value, str | bytes | list | tuple)


def _size_text(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def _template_line(exc: BaseException, name: str) -> int | None:
    """The template line that failed: Jinja2 rewrites tracebacks so template frames carry its name."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == name]
    return frames[-1].lineno if frames else None


def _blank_none(value: Any) -> Any:
    """A null cell (Parquet, JSONL) renders as nothing, not as ``None``."""
    return "" if value is None else value
