"""The Jinja2 sandbox prompt templates run in, with limits on what one row may build, output and take.

Jinja2's ``SandboxedEnvironment`` refuses unsafe attributes; ``LimitedEnvironment`` adds the limits of
one row: a cap on the size of every value it builds and on its output, and a deadline. Sizes are
predicted (``sizes``) so that a value over the cap is refused before it is built, not after.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import update_wrapper
from itertools import islice
from types import BuiltinMethodType, MethodType
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, SandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import generate_lorem_ipsum
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from bulkinfer.tables.sizes import (
    FILTER_SIZES,
    GATHERED,
    ITEM_FILTERS,
    METHOD_SIZES,
    SIZED,
    formatted_size,
    length,
    no_size,
    numbers_size,
    percent_size,
    predicted,
    size_text,
    text_size,
    unsized,
)

MAX_NUMBER_BITS = 2**16
"""A number no template needs: Python will not even print an int over 4300 digits (about 14,300 bits)."""
_JINJA_CALL_KEYWORDS = frozenset({"_loop_vars", "_block_vars"})
"""What Jinja passes to ``call`` inside a loop or block for its own use, and removes before calling."""


class OverLimit(TemplateError):
    """One row's rendering went over a size or time limit."""


class LimitedEnvironment(SandboxedEnvironment):
    """The sandbox, with limits on one row's values, output and time.

    Output is capped as it streams, but one expression can build a huge value before anything streams
    (``'x' * 10**10``, ``'x'|center(10**10)``, ``'%10000000000d' % 1``), and a call into Python cannot be
    interrupted. So each operator, filter, string method and format that can make a value bigger than its
    inputs has the size of its result predicted from its arguments, and is refused over the cap before it
    runs; text that Python would build whole from a container (``{{ items }}``, ``items|string``) or from
    a macro's output is measured first too. A loop that outputs nothing is invisible to the stream, so
    every ``for`` loop (see ``bounded``) and every call checks the row's deadline.
    """

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, max_bytes: int, max_seconds: float, **options: Any) -> None:
        super().__init__(**options)
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self._row = threading.local()  # the deadline is per row, and rows may render on several threads
        self.finalize = self.output_value
        self.filters = {name: self._limited(name, function) for name, function in self.filters.items()}
        self.globals["lipsum"] = self._limited("lipsum", generate_lorem_ipsum)

    def start_row(self) -> None:
        self._row.deadline = time.monotonic() + self.max_seconds

    def check_time(self) -> None:
        if time.monotonic() > self._row.deadline:
            raise OverLimit(f"took over {self.max_seconds:g} s for one row")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        refusal = _binop_refusal(operator, left, right, self.max_bytes)
        if refusal is not None:
            raise OverLimit(refusal)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.check_time()  # macros, recursive loops and methods all come through here
        owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
        kinds, predict = METHOD_SIZES.get(name, ((), no_size))
        if isinstance(owner, kinds):
            if name in GATHERED and args and unsized(args[0]):
                args = (self._gathered(name, args[0]), *args[1:])
            named = {k: v for k, v in kwargs.items() if k not in _JINJA_CALL_KEYWORDS}
            self.check_size(name, predicted(predict, owner, self.max_bytes, *args, **named))
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(owner, str | bytes):  # growth by a bounded factor, repeated: s.encode().hex()
            self._check_growth(name, owner, result)
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` and ``format_map``, through a formatter that refuses a field over the cap."""
        if not (
            isinstance(value, MethodType | BuiltinMethodType)
            and value.__name__ in ("format", "format_map")
            and isinstance(value.__self__, str)
        ):
            return None
        text: str = value.__self__
        formatter: _LimitedFormatter
        if isinstance(text, Markup):
            formatter = _LimitedEscapeFormatter(self, escape=text.escape)
        else:
            formatter = _LimitedFormatter(self)
        with_map = value.__name__ == "format_map"

        def format_text(*args: Any, **kwargs: Any) -> str:
            if with_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs = args[0]
                args = ()
            return type(text)(formatter.vformat(text, args, kwargs))

        return update_wrapper(format_text, value)

    def concat(self, pieces: Iterable[str]) -> str:
        """A macro's, call block's or ``{% set %}`` block's output, joined only if it is within the cap."""
        pieces = pieces if isinstance(pieces, list) else list(pieces)
        if sum(map(len, pieces)) > self.max_bytes:
            raise OverLimit(f"output over the {size_text(self.max_bytes)} limit for one row")
        return "".join(pieces)

    def output_value(self, value: Any) -> Any:
        """What ``{{ value }}`` outputs: nothing for a null cell (Parquet, JSONL), and no container whose
        text would be over the cap (Python builds it whole before the stream can count it)."""
        if value is None:
            return ""
        if not isinstance(value, str | int | float) and text_size(value, self.max_bytes) > self.max_bytes:
            raise OverLimit(f"output over the {size_text(self.max_bytes)} limit for one row")
        return value

    def bounded_loop(self, items: Iterable[Any]) -> Iterator[Any]:
        """A ``for`` loop's items, checking the deadline before each: nested loops need no output to hang."""
        for item in items:
            self.check_time()
            yield item

    def bounded_piece(self, value: Any) -> Any:
        """One operand of ``~``, refused if its text would be over the cap before it is built."""
        self.check_text("~", value)
        return value

    def bounded_text(self, text: str) -> str:
        """A ``~`` concatenation: doubling a string in a loop outgrows memory long before the deadline."""
        if len(text) > self.max_bytes:
            raise OverLimit(f"'~' made a value over the {size_text(self.max_bytes)} limit for one row")
        return text

    def check_size(self, name: str, size: int) -> None:
        if size > self.max_bytes:
            raise OverLimit(
                f"{name!r} would make a value over the {size_text(self.max_bytes)} limit for one row"
            )

    def check_text(self, name: str, value: Any) -> None:
        """Refuse ``value`` if ``str(value)``, which ``name`` is about to build, would be over the cap."""
        if not isinstance(value, str):
            self.check_size(name, text_size(value, self.max_bytes))

    def _check_growth(self, name: str, source: Any, result: Any) -> None:
        """Refuse a result over the cap that is bigger than what it was made from."""
        if isinstance(result, SIZED) and len(result) > self.max_bytes and len(result) > length(source):
            raise OverLimit(f"{name!r} made a value over the {size_text(self.max_bytes)} limit for one row")

    def _limited(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """A filter (or ``lipsum``) that is refused when its result would be over the cap."""
        lead = 1 if hasattr(function, "jinja_pass_arg") else 0  # Jinja passes a context or environment first
        predict = FILTER_SIZES.get(name)
        reads_text = name not in ITEM_FILTERS
        makes_text = reads_text or predict is not None  # the others return their items, or their arguments

        def limited(*args: Any, **kwargs: Any) -> Any:
            value: Any = args[lead] if len(args) > lead else None
            if name in GATHERED and unsized(value):  # measured, then used: so held as a list
                value = self._gathered(name, value)
                args = (*args[:lead], value, *args[lead + 1 :])
            if reads_text:
                self.check_text(name, value)
            if predict is not None:
                self.check_size(name, predicted(predict, self, self.max_bytes, *args[lead:], **kwargs))
            result = function(*args, **kwargs)
            if makes_text:
                self._check_growth(name, value, result)
            return result

        return update_wrapper(limited, function)

    def _gathered(self, name: str, items: Iterable[Any]) -> list[Any]:
        """A generator's items as a list, refused when there are more than any value within the cap."""
        most = max(self.max_bytes, MAX_RANGE)
        gathered = list(islice(items, most + 1))
        if len(gathered) > most:
            self.check_size(name, self.max_bytes + 1)
        return gathered


class _LimitedFormatter(SandboxedFormatter):
    """``str.format`` in the sandbox, refusing a field whose width, precision or value is over the cap.

    Widths can come from arguments (``'{:{}}'.format(1, 10**10)``), so each field is checked as Python
    formats it, after they are filled in; ``size`` adds up the call's result as it goes.
    """

    def __init__(self, env: LimitedEnvironment, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self.limits = env
        self.size = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self.size = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:  # !r and !s build the value's text whole
            self.limits.check_text("format", value)
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        self.size += numbers_size(re.findall(r"\d+", format_spec))
        self.size += formatted_size(value, self.limits.max_bytes)
        self.limits.check_size("format", self.size)
        return super().format_field(value, format_spec)


class _LimitedEscapeFormatter(_LimitedFormatter, SandboxedEscapeFormatter):
    """``Markup.format``: the same limits, with the values escaped."""


def bounded(tree: nodes.Template) -> nodes.Template:
    """The template with each loop's items and each ``~`` passed through the environment's checks."""
    result = _Bounds().visit(tree)
    assert isinstance(result, nodes.Template)
    return result


class _Bounds(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _environment_call("bounded_loop", node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [_environment_call("bounded_piece", piece) for piece in node.nodes]
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
    limit = f"would make a value over the {size_text(max_bytes)} limit for one row"
    if operator == "*":
        sequence, times = (left, right) if _is_int(right) else (right, left)
        if _is_sequence(sequence) and _is_int(times) and len(sequence) * times > max_bytes:
            return f"'*' {limit}"
    if operator == "+" and _is_sequence(left) and _is_sequence(right) and len(left) + len(right) > max_bytes:
        return f"'+' {limit}"
    if operator == "%" and isinstance(left, str | bytes) and percent_size(left, right, max_bytes) > max_bytes:
        return f"'%' {limit}"
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
