"""Prompt templates: Jinja2 over one table row, strict about missing columns and sandboxed.

A template sees each column as a variable (``{{ category }}``) and the whole row as ``row``
(``{{ row["unit price"] }}`` for a column name that is not an identifier). A column the row lacks is an
error naming the column and the template line, never an empty string. Templates are user input, so they
run in Jinja2's sandbox: ``{{ ''.__class__ }}`` and the like are refused. One row's rendering is also
bounded in output size and in time, so a template cannot hang ``prepare`` or exhaust its memory.
"""

from __future__ import annotations

import operator as _operator
import re
import threading
import time
import traceback
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping, Sized
from functools import update_wrapper
from itertools import islice
from pathlib import Path
from types import BuiltinMethodType, MethodType
from typing import Any, cast

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, UndefinedError, nodes
from jinja2.constants import LOREM_IPSUM_WORDS
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, SandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace, generate_lorem_ipsum
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

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
    (``'x' * 10**10``, ``'x'|center(10**10)``, ``'%10000000000d' % 1``), and a call into Python cannot be
    interrupted. So each operator, filter, string method and format that can make a value bigger than its
    inputs has the size of its result predicted from its arguments, and is refused over the cap before it
    runs; text that Python would build whole from a container (``{{ items }}``, ``items|string``) or from
    a macro's output is measured first too. A loop that outputs nothing is invisible to the stream, so
    every ``for`` loop (see ``_bounded``) and every call checks the row's deadline.
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
            raise _OverLimit(f"took over {self.max_seconds:g} s for one row")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        refusal = _binop_refusal(operator, left, right, self.max_bytes)
        if refusal is not None:
            raise _OverLimit(refusal)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.check_time()  # macros, recursive loops and methods all come through here
        owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
        kinds, predict = _METHOD_SIZES.get(name, ((), _no_size))
        if isinstance(owner, kinds):
            if name in _GATHERED and args and _unsized(args[0]):
                args = (self._gathered(name, args[0]), *args[1:])
            named = {k: v for k, v in kwargs.items() if k not in _JINJA_CALL_KEYWORDS}
            self.check_size(name, _predicted(predict, owner, self.max_bytes, *args, **named))
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
            raise _OverLimit(f"output over the {_size_text(self.max_bytes)} limit for one row")
        return "".join(pieces)

    def output_value(self, value: Any) -> Any:
        """What ``{{ value }}`` outputs: nothing for a null cell (Parquet, JSONL), and no container whose
        text would be over the cap (Python builds it whole before the stream can count it)."""
        if value is None:
            return ""
        if not isinstance(value, str | int | float) and _text_size(value, self.max_bytes) > self.max_bytes:
            raise _OverLimit(f"output over the {_size_text(self.max_bytes)} limit for one row")
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
            raise _OverLimit(f"'~' made a value over the {_size_text(self.max_bytes)} limit for one row")
        return text

    def check_size(self, name: str, size: int) -> None:
        if size > self.max_bytes:
            raise _OverLimit(
                f"{name!r} would make a value over the {_size_text(self.max_bytes)} limit for one row"
            )

    def check_text(self, name: str, value: Any) -> None:
        """Refuse ``value`` if ``str(value)``, which ``name`` is about to build, would be over the cap."""
        if not isinstance(value, str):
            self.check_size(name, _text_size(value, self.max_bytes))

    def _check_growth(self, name: str, source: Any, result: Any) -> None:
        """Refuse a result over the cap that is bigger than what it was made from."""
        if isinstance(result, _SIZED) and len(result) > self.max_bytes and len(result) > _length(source):
            raise _OverLimit(f"{name!r} made a value over the {_size_text(self.max_bytes)} limit for one row")

    def _limited(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """A filter (or ``lipsum``) that is refused when its result would be over the cap."""
        lead = 1 if hasattr(function, "jinja_pass_arg") else 0  # Jinja passes a context or environment first
        predict = _FILTER_SIZES.get(name)
        reads_text = name not in _ITEM_FILTERS
        makes_text = reads_text or predict is not None  # the others return their items, or their arguments

        def limited(*args: Any, **kwargs: Any) -> Any:
            value: Any = args[lead] if len(args) > lead else None
            if name in _GATHERED and _unsized(value):  # measured, then used: so held as a list
                value = self._gathered(name, value)
                args = (*args[:lead], value, *args[lead + 1 :])
            if reads_text:
                self.check_text(name, value)
            if predict is not None:
                self.check_size(name, _predicted(predict, self, *args[lead:], **kwargs))
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

    def __init__(self, env: _LimitedEnvironment, **kwargs: Any) -> None:
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
        self.size += _numbers_size(re.findall(r"\d+", format_spec))
        self.size += _formatted_size(value, self.limits.max_bytes)
        self.limits.check_size("format", self.size)
        return super().format_field(value, format_spec)


class _LimitedEscapeFormatter(_LimitedFormatter, SandboxedEscapeFormatter):
    """``Markup.format``: the same limits, with the values escaped."""


def _predicted(predict: Callable[..., int], *args: Any, **kwargs: Any) -> int:
    """The predicted size, or 0 when the arguments do not fit: the call then fails, building nothing."""
    try:
        return predict(*args, **kwargs)
    except TypeError:
        return 0


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
    limit = f"would make a value over the {_size_text(max_bytes)} limit for one row"
    if operator == "*":
        sequence, times = (left, right) if _is_int(right) else (right, left)
        if _is_sequence(sequence) and _is_int(times) and len(sequence) * times > max_bytes:
            return f"'*' {limit}"
    if operator == "+" and _is_sequence(left) and _is_sequence(right) and len(left) + len(right) > max_bytes:
        return f"'+' {limit}"
    if (
        operator == "%"
        and isinstance(left, str | bytes)
        and _percent_size(left, right, max_bytes) > max_bytes
    ):
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


# Sizes, predicted before the work is done. Each is about the length of the result, in characters (or in
# items, for lists), from the arguments alone; a little over is fine, under by more than a small factor
# is not. The result is then checked too, so small factors cannot compound (``s|forceescape|forceescape``).

_SIZED = (str, bytes, list, tuple)
_HUGE = 2**63
_FLOAT_DIGITS = 310
"""``'%f' % 1e308`` has 309 digits before the point, whatever its precision."""
_LIPSUM_WORD = max(map(len, LOREM_IPSUM_WORDS.split())) + 2  # and a comma or full stop, and a space


def _text_size(value: Any, limit: int) -> int:
    """About ``len(str(value))``, counted without building it; see ``_measure``."""
    if isinstance(value, str | bytes):  # most values: no walk needed
        return len(value)
    return _measure(value, limit)[0]


def _measure(value: Any, limit: int) -> tuple[int, int, int]:
    """About ``len(str(value))``, its number of items and its depth of nesting, without building it.

    Counting stops soon after the size passes ``limit``: a list can hold the same long string a million
    times, and a list can hold itself, so walking it all could take as long as building its text.
    """
    size = items = depth = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending and size <= limit:
        item, level = pending.pop()
        items += 1
        depth = max(depth, level)
        children = _children(item)
        if children is None:
            size += _scalar_size(item, quoted=level > 0)
            continue
        size += 2 + 2 * len(children)  # brackets, and a separator after each item
        if size <= limit:
            pending.extend((child, level + 1) for child in children)
    return size, items, depth


def _children(value: Any) -> Collection[Any] | None:
    """What ``str(value)`` shows of a container, or None for a value that is not one."""
    if isinstance(value, str | bytes | range | Undefined | Iterator):  # a range or generator shows no items
        return None
    if isinstance(value, Namespace):
        return [object.__getattribute__(value, "_Namespace__attrs")]
    if isinstance(value, Mapping):
        return [part for pair in value.items() for part in pair]
    return value if isinstance(value, Collection) else None


def _scalar_size(value: Any, quoted: bool) -> int:
    if isinstance(value, str | bytes):
        return len(value) + (2 if quoted else 0)  # a string in a container shows its quotes
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() * 30103 // 100000 + 1 + (value < 0)  # its decimal digits, and a sign
    return 0 if isinstance(value, Undefined) else 24


def _formatted_size(value: Any, limit: int) -> int:
    """About the length of one formatted field's value, before its width and precision."""
    return _text_size(value, limit) + (_FLOAT_DIGITS if isinstance(value, float) else 0)


def _numbers_size(numbers: Iterable[str]) -> int:
    """Widths and precisions, added up: a bound on the padding and digits they ask for."""
    return sum(int(number) if len(number) < 19 else _HUGE for number in numbers)


def _count(value: Any) -> int:
    """An int argument as Python takes it, or 0 when it is not one (the call then fails on its own)."""
    try:
        return _operator.index(value)
    except TypeError:
        return 0


def _unsized(value: Any) -> bool:
    """A generator, or anything else that can be iterated only to learn its length."""
    return isinstance(value, Iterable) and not isinstance(value, Sized)


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict | set | frozenset) else 0


_PERCENT_SPEC = re.compile(r"[-+ #0]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?(.?)", re.DOTALL)


def _percent_specs(text: str) -> Iterator[tuple[str | None, list[str], str]]:
    """Each ``%`` conversion in ``text``: its mapping key, its width and precision, its conversion."""
    start = text.find("%")
    while start != -1:
        key, position = None, start + 1
        if text.startswith("(", position):  # a key may hold parentheses, balanced, as Python counts them
            depth = 1
            position += 1
            while depth and position < len(text):
                depth += {"(": 1, ")": -1}.get(text[position], 0)
                position += 1
            key = text[start + 2 : position - 1]
        match = _PERCENT_SPEC.match(text, position)
        assert match is not None  # every part of the pattern is optional
        yield key, [number for number in match.group(1, 2) if number], match[3]
        start = text.find("%", match.end())


def _percent_size(template: str | bytes, values: Any, limit: int) -> int:
    """About ``len(template % values)``, from its conversions' widths, precisions and values."""
    text = template if isinstance(template, str) else template.decode("latin-1")
    positional = iter(values if isinstance(values, tuple) else (values,))
    size = len(text)
    for key, numbers, conversion in _percent_specs(text):
        if conversion == "%":
            continue
        # a '*' width or precision is the next argument
        size += _numbers_size(str(abs(_count(next(positional, 0)))) if n == "*" else n for n in numbers)
        if key is None:
            value = next(positional, None)
        else:
            value = _item(values, key if isinstance(template, str) else key.encode("latin-1"))
        size += _formatted_size(value, limit)
        if size > limit:
            break
    return size


def _item(values: Any, key: Any) -> Any:
    try:
        return values[key]
    except (LookupError, TypeError):
        return None  # and Python's own '%' fails the same way


def _joined_size(items: Iterable[Any], separator: int, limit: int) -> int:
    size = -separator
    for item in items:
        size += separator + _text_size(item, limit)
        if size > limit:
            break
    return size


def _replaced_size(text: str | bytes, old: Any, new: Any, count: Any) -> int:
    if not (isinstance(old, type(text)) and isinstance(new, type(text))):
        return 0  # and str.replace fails
    found = cast(Any, text).count(old) if old else len(text) + 1
    if count is not None and _count(count) >= 0:
        found = min(found, _count(count))
    return len(text) + found * max(0, len(new) - len(old))


def _center_size(env: _LimitedEnvironment, value: Any, width: Any = 80) -> int:
    return max(_text_size(value, env.max_bytes), _count(width))


def _indent_size(
    env: _LimitedEnvironment, s: Any, width: Any = 4, first: Any = False, blank: Any = False
) -> int:
    text = str(s)
    indention = len(width) if isinstance(width, str) else _count(width)
    return len(text) + (len(text.splitlines()) + 2) * indention  # splitlines: \r and \f end lines too


def _replace_size(env: _LimitedEnvironment, s: Any, old: Any, new: Any, count: Any = None) -> int:
    arguments = _text_size(old, env.max_bytes) + _text_size(new, env.max_bytes)
    if arguments > env.max_bytes:  # both are made text first
        return arguments
    return _replaced_size(str(s), str(old), str(new), count)


def _join_size(env: _LimitedEnvironment, value: Any, d: Any = "", attribute: Any = None) -> int:
    items = value if attribute is None else map(make_attrgetter(env, attribute), value)
    return _joined_size(items, _text_size(d, env.max_bytes), env.max_bytes)


def _sum_size(env: _LimitedEnvironment, iterable: Any, attribute: Any = None, start: Any = 0) -> int:
    """Summing lists copies them: each partial sum is a new list, so the size is their total."""
    if not isinstance(start, list | tuple):
        return 0
    items = iterable if attribute is None else map(make_attrgetter(env, attribute), iterable)
    size = made = len(start)
    for item in items:
        size += _length(item)
        made += size
        if made > env.max_bytes:
            break
    return made


def _tojson_size(env: _LimitedEnvironment, value: Any, indent: Any = None) -> int:
    size, items, depth = _measure(value, env.max_bytes)
    step = len(indent) if isinstance(indent, str) else _count(indent)
    return size + step + items * (1 + depth * step)


def _pprint_size(env: _LimitedEnvironment, value: Any) -> int:
    size, items, depth = _measure(value, env.max_bytes)
    return size + items * (1 + depth)


def _wordwrap_size(
    env: _LimitedEnvironment,
    s: Any,
    width: Any = 79,
    break_long_words: Any = True,
    wrapstring: Any = None,
    break_on_hyphens: Any = True,
) -> int:
    """Two lines hold more than ``width`` characters (or the second would have fit on the first)."""
    text = str(s)
    lines = min(len(text) + 1, 2 * len(text) // max(_count(width), 1) + len(text.splitlines()) + 1)
    joint = 1 if wrapstring is None else _text_size(wrapstring, env.max_bytes)
    return len(text) + lines * joint


def _urlize_size(env: _LimitedEnvironment, value: Any, *args: Any, **kwargs: Any) -> int:
    """Each link gets the ``target`` and ``rel`` attributes."""
    named = dict(zip(("trim_url_limit", "nofollow", "target", "rel"), args, strict=False)) | kwargs
    extra = sum(_text_size(named.get(name) or "", env.max_bytes) for name in ("target", "rel"))
    text = str(value)
    return len(text) + len(text.split()) * extra


def _format_size(env: _LimitedEnvironment, value: Any, *args: Any, **kwargs: Any) -> int:
    return _percent_size(str(value), kwargs or args, env.max_bytes)


def _batch_size(env: _LimitedEnvironment, value: Any, linecount: Any, fill_with: Any = None) -> int:
    return 0 if fill_with is None else _count(linecount)  # the last batch is filled up to linecount


def _slice_size(env: _LimitedEnvironment, value: Any, slices: Any, fill_with: Any = None) -> int:
    return _count(slices)  # as many lists, however few the items


def _lipsum_size(
    env: _LimitedEnvironment, n: Any = 5, html: Any = True, min: Any = 20, max: Any = 100
) -> int:
    return _count(n) * (_count(max) * _LIPSUM_WORD + 9)  # each paragraph: under max words, in <p></p>


_FILTER_SIZES: dict[str, Callable[..., int]] = {
    "center": _center_size,
    "indent": _indent_size,
    "replace": _replace_size,
    "join": _join_size,
    "sum": _sum_size,
    "tojson": _tojson_size,
    "pprint": _pprint_size,
    "wordwrap": _wordwrap_size,
    "urlize": _urlize_size,
    "format": _format_size,
    "batch": _batch_size,
    "slice": _slice_size,
    "lipsum": _lipsum_size,
}
_ITEM_FILTER_NAMES = """abs attr batch count d default dictsort filesizeformat first float groupby int items
join last length list map max min pprint random reject rejectattr reverse round select selectattr slice sort
sum tojson unique lipsum"""
_ITEM_FILTERS = frozenset(_ITEM_FILTER_NAMES.split())
"""Filters that do not make their value into text (or measure it themselves); the others are refused a
value whose text would be over the cap (``[s] * 1000|upper``)."""
_GATHERED = frozenset({"join", "sum", "extend"})
"""What measures every item of its argument: a generator is gathered into a list first, then used."""


def _padded_size(text: str | bytes, limit: int, width: Any, *args: Any) -> int:
    return max(len(text), _count(width))


def _tabs_size(text: str | bytes, limit: int, tabsize: Any = 8) -> int:
    tabs = text.count("\t") if isinstance(text, str) else text.count(b"\t")
    return len(text) + tabs * max(_count(tabsize), 0)


def _replace_method_size(text: str | bytes, limit: int, old: Any, new: Any, count: Any = -1) -> int:
    # a Markup escapes its arguments, which makes them text
    return _text_size(old, limit) + _text_size(new, limit) + _replaced_size(text, old, new, count)


def _join_method_size(text: str | bytes, limit: int, iterable: Any) -> int:
    return _joined_size(iterable, len(text), limit)


def _translate_size(text: str | bytes, limit: int, table: Any, *args: Any) -> int:
    """A table can map each character to a string."""
    if not isinstance(text, str):
        return len(text)
    values = table.values() if isinstance(table, Mapping) else table
    longest = max((len(v) for v in islice(values, limit) if isinstance(v, str)), default=1)
    return len(text) * max(longest, 1)


def _extend_size(items: list[Any], limit: int, iterable: Any) -> int:
    return len(items) + len(iterable)  # a generator has been gathered into a list


def _no_size(*args: Any, **kwargs: Any) -> int:
    return 0


def _to_bytes_size(number: int, limit: int, length: Any = 1, *args: Any, **kwargs: Any) -> int:
    return _count(length)


_JINJA_CALL_KEYWORDS = frozenset({"_loop_vars", "_block_vars"})
"""What Jinja passes to ``call`` inside a loop or block for its own use, and removes before calling."""
_STRINGS = (str, bytes)
_METHOD_SIZES: dict[str, tuple[tuple[type, ...], Callable[..., int]]] = {
    "center": (_STRINGS, _padded_size),
    "ljust": (_STRINGS, _padded_size),
    "rjust": (_STRINGS, _padded_size),
    "zfill": (_STRINGS, _padded_size),
    "expandtabs": (_STRINGS, _tabs_size),
    "replace": (_STRINGS, _replace_method_size),
    "join": (_STRINGS, _join_method_size),
    "translate": (_STRINGS, _translate_size),
    "extend": ((list,), _extend_size),
    "to_bytes": ((int,), _to_bytes_size),
}
"""The methods of a string, a list or a number whose result can outgrow their object by an argument."""


def _size_text(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def _template_line(exc: BaseException, name: str) -> int | None:
    """The template line that failed: Jinja2 rewrites tracebacks so template frames carry its name."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == name]
    return frames[-1].lineno if frames else None
