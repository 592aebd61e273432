"""Sizes of the values a template would build, computed before building them.

One template expression can ask for a huge value in a single step (``'x' * 10**10``, ``'x'|center(10**10)``,
``'%10000000000d' % 1``), and a call into Python cannot be interrupted once it runs. So the sandbox
(``sandbox``) has each result's size predicted here, from the call's arguments alone, and refuses it over
the row's cap before it runs.

Each estimate is about the length of the result, in characters (or in items, for lists): a little over is
fine, under by more than a small factor is not. The sandbox checks the result too, so small factors cannot
compound (``s|forceescape|forceescape``). Nothing here builds what it measures: every estimator takes the
cap (``limit``) and stops counting soon after passing it.
"""

from __future__ import annotations

import operator as _operator
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sized
from itertools import islice
from typing import Any, cast

from jinja2 import Environment, Undefined
from jinja2.constants import LOREM_IPSUM_WORDS
from jinja2.filters import make_attrgetter
from jinja2.utils import Namespace

SIZED = (str, bytes, list, tuple)
_HUGE = 2**63
_FLOAT_DIGITS = 310
"""``'%f' % 1e308`` has 309 digits before the point, whatever its precision."""
_LIPSUM_WORD = max(map(len, LOREM_IPSUM_WORDS.split())) + 2  # and a comma or full stop, and a space


def text_size(value: Any, limit: int) -> int:
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


def formatted_size(value: Any, limit: int) -> int:
    """About the length of one formatted field's value, before its width and precision."""
    return text_size(value, limit) + (_FLOAT_DIGITS if isinstance(value, float) else 0)


def numbers_size(numbers: Iterable[str]) -> int:
    """Widths and precisions, added up: a bound on the padding and digits they ask for."""
    return sum(int(number) if len(number) < 19 else _HUGE for number in numbers)


def _count(value: Any) -> int:
    """An int argument as Python takes it, or 0 when it is not one (the call then fails on its own)."""
    try:
        return _operator.index(value)
    except TypeError:
        return 0


def unsized(value: Any) -> bool:
    """A generator, or anything else that can be iterated only to learn its length."""
    return isinstance(value, Iterable) and not isinstance(value, Sized)


def length(value: Any) -> int:
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


def percent_size(template: str | bytes, values: Any, limit: int) -> int:
    """About ``len(template % values)``, from its conversions' widths, precisions and values."""
    text = template if isinstance(template, str) else template.decode("latin-1")
    positional = iter(values if isinstance(values, tuple) else (values,))
    size = len(text)
    for key, numbers, conversion in _percent_specs(text):
        if conversion == "%":
            continue
        # a '*' width or precision is the next argument
        size += numbers_size(str(abs(_count(next(positional, 0)))) if n == "*" else n for n in numbers)
        if key is None:
            value = next(positional, None)
        else:
            value = _item(values, key if isinstance(template, str) else key.encode("latin-1"))
        size += formatted_size(value, limit)
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
        size += separator + text_size(item, limit)
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


def _center_size(env: Environment, limit: int, value: Any, width: Any = 80) -> int:
    return max(text_size(value, limit), _count(width))


def _indent_size(
    env: Environment, limit: int, s: Any, width: Any = 4, first: Any = False, blank: Any = False
) -> int:
    text = str(s)
    indention = len(width) if isinstance(width, str) else _count(width)
    return len(text) + (len(text.splitlines()) + 2) * indention  # splitlines: \r and \f end lines too


def _replace_size(env: Environment, limit: int, s: Any, old: Any, new: Any, count: Any = None) -> int:
    arguments = text_size(old, limit) + text_size(new, limit)
    if arguments > limit:  # both are made text first
        return arguments
    return _replaced_size(str(s), str(old), str(new), count)


def _join_size(env: Environment, limit: int, value: Any, d: Any = "", attribute: Any = None) -> int:
    items = value if attribute is None else map(make_attrgetter(env, attribute), value)
    return _joined_size(items, text_size(d, limit), limit)


def _sum_size(env: Environment, limit: int, iterable: Any, attribute: Any = None, start: Any = 0) -> int:
    """Summing lists copies them: each partial sum is a new list, so the size is their total."""
    if not isinstance(start, list | tuple):
        return 0
    items = iterable if attribute is None else map(make_attrgetter(env, attribute), iterable)
    size = made = len(start)
    for item in items:
        size += length(item)
        made += size
        if made > limit:
            break
    return made


def _tojson_size(env: Environment, limit: int, value: Any, indent: Any = None) -> int:
    size, items, depth = _measure(value, limit)
    step = len(indent) if isinstance(indent, str) else _count(indent)
    return size + step + items * (1 + depth * step)


def _pprint_size(env: Environment, limit: int, value: Any) -> int:
    size, items, depth = _measure(value, limit)
    return size + items * (1 + depth)


def _wordwrap_size(
    env: Environment,
    limit: int,
    s: Any,
    width: Any = 79,
    break_long_words: Any = True,
    wrapstring: Any = None,
    break_on_hyphens: Any = True,
) -> int:
    """Two lines hold more than ``width`` characters (or the second would have fit on the first)."""
    text = str(s)
    lines = min(len(text) + 1, 2 * len(text) // max(_count(width), 1) + len(text.splitlines()) + 1)
    joint = 1 if wrapstring is None else text_size(wrapstring, limit)
    return len(text) + lines * joint


def _urlize_size(env: Environment, limit: int, value: Any, *args: Any, **kwargs: Any) -> int:
    """Each link gets the ``target`` and ``rel`` attributes."""
    named = dict(zip(("trim_url_limit", "nofollow", "target", "rel"), args, strict=False)) | kwargs
    extra = sum(text_size(named.get(name) or "", limit) for name in ("target", "rel"))
    text = str(value)
    return len(text) + len(text.split()) * extra


def _format_size(env: Environment, limit: int, /, value: Any, *args: Any, **kwargs: Any) -> int:
    # positional-only: the filter passes any keyword on to '%', ``limit=`` and ``env=`` included
    return percent_size(str(value), kwargs or args, limit)


def _batch_size(env: Environment, limit: int, value: Any, linecount: Any, fill_with: Any = None) -> int:
    return 0 if fill_with is None else _count(linecount)  # the last batch is filled up to linecount


def _slice_size(env: Environment, limit: int, value: Any, slices: Any, fill_with: Any = None) -> int:
    return _count(slices)  # as many lists, however few the items


def _lipsum_size(
    env: Environment, limit: int, n: Any = 5, html: Any = True, min: Any = 20, max: Any = 100
) -> int:
    return _count(n) * (_count(max) * _LIPSUM_WORD + 9)  # each paragraph: under max words, in <p></p>


FILTER_SIZES: dict[str, Callable[..., int]] = {
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
"""The filters (and ``lipsum``) that can make a value bigger than their arguments. Each estimator takes the
environment (for attribute lookups, made as the filter makes them), the cap, then the filter's arguments."""
_ITEM_FILTER_NAMES = """abs attr batch count d default dictsort filesizeformat first float groupby int items
join last length list map max min pprint random reject rejectattr reverse round select selectattr slice sort
sum tojson unique lipsum"""
ITEM_FILTERS = frozenset(_ITEM_FILTER_NAMES.split())
"""Filters that do not make their value into text (or measure it themselves); the others are refused a
value whose text would be over the cap (``[s] * 1000|upper``)."""
GATHERED = frozenset({"join", "sum", "extend"})
"""What measures every item of its argument: a generator is gathered into a list first, then used."""


def _padded_size(text: str | bytes, limit: int, width: Any, *args: Any) -> int:
    return max(len(text), _count(width))


def _tabs_size(text: str | bytes, limit: int, tabsize: Any = 8) -> int:
    tabs = text.count("\t") if isinstance(text, str) else text.count(b"\t")
    return len(text) + tabs * max(_count(tabsize), 0)


def _replace_method_size(text: str | bytes, limit: int, old: Any, new: Any, count: Any = -1) -> int:
    # a Markup escapes its arguments, which makes them text
    return text_size(old, limit) + text_size(new, limit) + _replaced_size(text, old, new, count)


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


def no_size(*args: Any, **kwargs: Any) -> int:
    return 0


def _to_bytes_size(number: int, limit: int, length: Any = 1, *args: Any, **kwargs: Any) -> int:
    return _count(length)


_STRINGS = (str, bytes)
METHOD_SIZES: dict[str, tuple[tuple[type, ...], Callable[..., int]]] = {
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


def size_text(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def predicted(predict: Callable[..., int], *args: Any, **kwargs: Any) -> int:
    """The predicted size, or 0 when the arguments do not fit: the call then fails, building nothing."""
    try:
        return predict(*args, **kwargs)
    except TypeError:
        return 0
