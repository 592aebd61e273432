"""Prompt templates: Jinja2 over one table row, strict about missing columns and sandboxed.

A template sees each column as a variable (``{{ category }}``) and the whole row as ``row``
(``{{ row["unit price"] }}`` for a column name that is not an identifier). A column the row lacks is an
error naming the column and the template line, never an empty string. Templates are user input, so they
run in Jinja2's sandbox (``sandbox``): ``{{ ''.__class__ }}`` and the like are refused. One row's
rendering is also bounded in output size and in time, so a template cannot hang ``prepare`` or exhaust
its memory.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any, cast

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError, TemplateError

from bulkinfer.errors import UserError
from bulkinfer.tables.sandbox import MAX_NUMBER_BITS as MAX_NUMBER_BITS
from bulkinfer.tables.sandbox import LimitedEnvironment, OverLimit, bounded
from bulkinfer.tables.sizes import size_text

_UNDEFINED = re.compile(r"^'([^']*)' is undefined$|has no attribute '([^']*)'$")
MAX_OUTPUT_BYTES = 2**20
MAX_SECONDS = 2.0


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
        env = LimitedEnvironment(
            max_bytes,
            max_seconds,
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
        )
        try:
            tree = env.parse(source, name=name, filename=name)
            code = env.compile(bounded(tree), name=name, filename=name)
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
        except OverLimit as exc:
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
                    raise OverLimit(f"output over the {size_text(env.max_bytes)} limit for one row")
                env.check_time()
                chunks.append(chunk)
        finally:
            stream.close()
        return "".join(chunks)

    def _problem(self, exc: BaseException, message: str, column: str | None = None) -> TemplateProblem:
        line = _template_line(exc, self.name)
        where = f"{self.name} line {line}" if line else self.name
        return TemplateProblem(f"{where}: {message}", column)


def _template_line(exc: BaseException, name: str) -> int | None:
    """The template line that failed: Jinja2 rewrites tracebacks so template frames carry its name."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == name]
    return frames[-1].lineno if frames else None
