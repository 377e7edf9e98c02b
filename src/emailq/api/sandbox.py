"""Jinja's sandbox, with limits on what rendering a guest list may cost.

Jinja's SandboxedEnvironment keeps a template away from Python's internals, not from
spending memory and time: ``{{ 'x' * 500000000 }}`` took 23 s and 2.5 GB. Here each way
a template makes text large, or loops, is bounded:

- a rendered field is at most MAX_FIELD_CHARS characters, counted as it streams out, and
  so is every buffer a template fills on the way (a macro's body, ``{% set %}...``); a
  guest list's fields together are at most MAX_LIST_CHARS;
- what makes a large value from small ones is checked before it runs, against the same
  MAX_FIELD_CHARS: the operators ``* + % ** ~``, str methods (ljust, replace, join,
  format...), the filters that pad, repeat or join, ``{{ value }}`` itself (a list of a
  thousand references to one long string prints a thousand times over), and range()
  (MAX_RANGE numbers at most); integers stay within Python's printable 4,300 digits;
- every loop iteration and every call is a step: MAX_STEPS for one guest's fields;
- a guest list has RENDER_SECONDS to render, checked as it steps.

A template over a limit raises :class:`TemplateLimitError`, which the guest list reports
as a template error of the field being rendered (a 422).
"""

from __future__ import annotations

import functools
import re
import string
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, ValuesView
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from jinja2 import filters, nodes, pass_environment, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Environment
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import Namespace

MAX_FIELD_CHARS = 1_000_000
MAX_LIST_CHARS = 64 * 1024 * 1024
MAX_RANGE = 10_000
MAX_STEPS = 10_000
RENDER_SECONDS = 5.0
MAX_INT_DIGITS = 4300  # sys.get_int_max_str_digits(): a larger int could not be printed


class TemplateLimitError(SecurityError):
    """A template went over one of this module's limits."""


@dataclass
class Budget:
    """What one guest list may still spend. Its fields render one at a time."""

    deadline: float = field(default_factory=lambda: time.monotonic() + RENDER_SECONDS)
    chars_left: int = field(default_factory=lambda: MAX_LIST_CHARS)
    steps_left: int = field(default_factory=lambda: MAX_STEPS)

    def next_guest(self) -> None:
        self.steps_left = MAX_STEPS

    @property
    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    def step(self) -> None:
        self.steps_left -= 1
        if self.steps_left < 0:
            raise TemplateLimitError(f"more than {MAX_STEPS} loop iterations and calls")
        # Why every 32nd step: reading the clock costs more than the rest of a step.
        if self.steps_left % 32 == 0 and self.out_of_time:
            raise TemplateLimitError(f"the guest list took over {RENDER_SECONDS} s to render")


_PIECES_PER_CHECK = 16

# The budget of the guest list rendering on this thread (None outside render_field: then
# only the size limits apply).
_budget: ContextVar[Budget | None] = ContextVar("emailq_template_budget", default=None)


def render_field(
    block: Callable[[Context], Iterator[str]], context: Context, budget: Budget
) -> str:
    """One block of a template (a field), rendered within ``budget``."""
    token = _budget.set(budget)
    try:
        output, chunks, size = block(context), [], 0
        # Why in chunks: checking piece by piece cost more than the rendering. A piece is at
        # most MAX_FIELD_CHARS (an expression: _checked_output; literal text: the field's
        # source, which batch.py holds to that size), so a chunk is at most 16 times that.
        while pieces := list(islice(output, _PIECES_PER_CHECK)):  # (empty pieces count)
            chunk = "".join(pieces)
            size += len(chunk)
            _require(size, "the field")
            chunks.append(chunk)
    finally:
        _budget.reset(token)
    if size > budget.chars_left:
        raise TemplateLimitError(f"the guest list would render over {MAX_LIST_CHARS} characters")
    budget.chars_left -= size
    return "".join(chunks)


def _step() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.step()


def _require(size: int, what: str) -> None:
    if size > MAX_FIELD_CHARS:
        raise TemplateLimitError(f"{what} would be over {MAX_FIELD_CHARS} characters")


# Sizes


_SEQUENCES = (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)


def _size(value: Any, limit: int = MAX_FIELD_CHARS) -> int:
    """About how many characters ``str(value)`` has; counting stops once past ``limit``.

    One step per element, so a structure that holds one long string many times over (or
    itself) counts every time: printing it would.
    """
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, bool | float) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() * 3 // 10 + 2
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            if total <= limit:
                stack += item.keys()
                stack += item.values()
        elif isinstance(item, _SEQUENCES):
            total += 2 + 2 * len(item)
            if total <= limit:
                stack += item
        elif isinstance(item, Namespace):  # its repr shows its attributes
            stack.append(object.__getattribute__(item, "_Namespace__attrs"))
        else:  # Undefined, Jinja helpers, generators: short reprs
            total += 16
    return total


def _digits(number: int) -> int:
    return number.bit_length() * 3 // 10 + 1


def _product_size(left: Any, right: Any) -> int:
    if isinstance(left, int) and isinstance(right, int):
        if _digits(left) + _digits(right) > MAX_INT_DIGITS:
            raise TemplateLimitError(f"a product would be over {MAX_INT_DIGITS} digits")
        return 0
    if isinstance(right, int) and not isinstance(left, int | float):
        return _size(left) * max(right, 0)
    if isinstance(left, int) and not isinstance(right, int | float):
        return _size(right) * max(left, 0)
    return 0


def _check_power(base: Any, exponent: Any) -> None:
    if not (isinstance(base, int) and isinstance(exponent, int) and exponent > 0):
        return  # floats overflow on their own, with an error
    if abs(base) > 1 and base.bit_length() * exponent * 3 // 10 > MAX_INT_DIGITS:
        raise TemplateLimitError(f"a power would be over {MAX_INT_DIGITS} digits")


_PRINTF_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")


def _printf_size(template: str, values: Any) -> int:
    """The size of ``template % values``: widths and precisions are lengths."""
    total = len(template) + _size(values)
    for width, precision in _PRINTF_FIELD.findall(template):
        if "*" in (width, precision):
            raise TemplateLimitError("'*' widths and precisions are not allowed")
        total += int(width or 0) + int(precision or 0)
    return total


def _format_size(template: str, args: Any, kwargs: Any) -> int:
    """The size of ``template.format(*args, **kwargs)``: widths and precisions are lengths."""
    total = len(template) + _size(args) + _size(kwargs)
    for _text, _field, spec, _conversion in string.Formatter().parse(template):
        if spec and "{" in spec:
            raise TemplateLimitError("format specs may not hold replacement fields")
        total += sum(int(number) for number in re.findall(r"\d+", spec or ""))
    return total


def _replace_size(text: str, old: str, new: str, count: int | None) -> int:
    occurrences = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        occurrences = min(occurrences, count)
    return len(text) + occurrences * max(len(new) - len(old), 0)


def _lines_size(text: str, per_line: int) -> int:
    return len(text) + (text.count("\n") + 1) * per_line


def _str_method_size(text: str, method: str, args: tuple[Any, ...]) -> int:
    """The size of a call to ``text``'s ``method`` that can grow it, else 0."""
    first = args[0] if args else None
    if method in ("ljust", "rjust", "center", "zfill") and isinstance(first, int):
        return first
    if method == "expandtabs":
        tabsize = first if isinstance(first, int) else 8
        return len(text) + text.count("\t") * tabsize
    if method == "replace" and len(args) >= 2:
        count = args[2] if len(args) > 2 else None
        return _replace_size(text, str(args[0]), str(args[1]), count)
    if method == "join" and isinstance(first, list | tuple):
        return _size(first) + len(text) * len(first)
    return 0


# The filters that can make their output much larger than their input, each checked first;
# every other filter is checked on its input and its output (see LimitedSandbox).


def _center(value: str, width: int = 80) -> str:
    _require(width, "|center")
    return filters.do_center(value, width)


def _indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    _require(_lines_size(str(s), width if isinstance(width, int) else len(width)), "|indent")
    return filters.do_indent(s, width, first, blank)


@pass_eval_context
def _replace(eval_ctx: EvalContext, s: str, old: str, new: str, count: int | None = None) -> str:
    _require(_replace_size(str(s), str(old), str(new), count), "|replace")
    return filters.do_replace(eval_ctx, s, old, new, count)


@pass_eval_context
def _join(
    eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None
) -> str:
    items = list(value)
    _require(_size(items) + len(str(d)) * len(items), "|join")
    return filters.sync_do_join(eval_ctx, items, d, attribute)


@pass_environment
def _wordwrap(
    environment: Environment,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    breaks = len(str(s)) // max(width, 1) + str(s).count("\n") + 1
    _require(len(str(s)) + breaks * len(wrapstring or "\n"), "|wordwrap")
    return filters.do_wordwrap(
        environment, s, width, break_long_words, wrapstring, break_on_hyphens
    )


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    _require(_printf_size(str(value), args or kwargs), "|format")
    return filters.do_format(value, *args, **kwargs)


def _batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    _require(linecount, "|batch")
    return filters.do_batch(value, linecount, fill_with)


def _slice(value: Iterable[Any], slices: int, fill_with: Any = None) -> Iterator[list[Any]]:
    _require(slices, "|slice")
    return filters.sync_do_slice(list(value), slices, fill_with)


@pass_environment
def _sum(
    environment: Environment,
    iterable: Iterable[Any],
    attribute: str | int | None = None,
    start: Any = 0,
) -> Any:
    # Why numbers only: adding up lists or strings copies the total at every item.
    if not isinstance(start, int | float):
        raise TemplateLimitError("|sum adds numbers only")
    return filters.sync_do_sum(environment, iterable, attribute, start)


_GROWING_FILTERS: dict[str, Callable[..., Any]] = {
    "center": _center, "indent": _indent, "replace": _replace, "join": _join,
    "wordwrap": _wordwrap, "format": _format, "batch": _batch, "slice": _slice, "sum": _sum,
}  # fmt: skip


def _checked_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # keeps jinja_pass_arg: the context comes first as before
    def checked(*args: Any, **kwargs: Any) -> Any:
        _require(_size(args) + _size(kwargs), f"the input of |{name}")
        result = function(*args, **kwargs)
        if isinstance(result, str):
            _require(len(result), f"|{name}")
        return result

    return checked


def _limited_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateLimitError(f"range() of more than {MAX_RANGE} numbers")
    return numbers


def _checked_output(value: Any) -> Any:
    """Every ``{{ value }}``, before it becomes text."""
    if type(value) is str and len(value) <= MAX_FIELD_CHARS:  # most: nothing to walk
        return value
    _require(_size(value), "an expression")
    return value


class _BoundedBuffer(list[str]):
    """Where a macro's body or a ``{% set %}`` block collects its output."""

    size = 0

    def append(self, piece: str) -> None:
        self.size += len(piece)
        _require(self.size, "a block")
        super().append(piece)

    def extend(self, pieces: Iterable[str]) -> None:
        for piece in pieces:
            self.append(piece)


class _LimitedCodeGenerator(CodeGenerator):
    """Jinja's code generator, but every for loop's iterable passes through
    :meth:`LimitedSandbox.limited_iteration`, the operands of ``~`` through
    :meth:`LimitedSandbox.checked_concat`, and buffers are bounded."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        # Before any code is written: the generator collects each function's names first.
        for loop in node.find_all(nodes.For):
            counted = nodes.EnvironmentAttribute("limited_iteration", lineno=loop.lineno)
            loop.iter = nodes.Call(counted, [loop.iter], [], None, None, lineno=loop.lineno)
        super().visit_Template(node, frame)

    def buffer(self, frame: Frame) -> None:
        # As Jinja's own (3.1), with a bounded list.
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.bounded_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # As Jinja's own (3.1), with the operands checked before they are joined.
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"{func_name}(environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


class LimitedSandbox(SandboxedEnvironment):
    """Jinja's sandbox with this module's limits."""

    code_generator_class = _LimitedCodeGenerator
    intercepted_binops = frozenset({"*", "+", "%", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_checked_output, **options)
        self.globals["range"] = _limited_range
        del self.globals["lipsum"]  # paragraphs of filler text, sized by its arguments
        self.filters.update(_GROWING_FILTERS)
        self.filters = {name: _checked_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _require(_product_size(left, right), "a product")
        elif operator == "+" and not isinstance(left, int | float):
            _require(_size(left) + _size(right), "a sum")
        elif operator == "%" and isinstance(left, str):
            _require(_printf_size(left, right), "a % format")
        elif operator == "**":
            _check_power(left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _step()
        if getattr(obj, "__func__", None) is LimitedSandbox.limited_iteration:  # a loop starts
            return self.limited_iteration(args[0])
        if isinstance(obj, LoopContext) and args:  # a recursive loop's next level
            args = (self.limited_iteration(args[0]), *args[1:])
        _require(_size(args) + _size(kwargs), "the arguments of a call")
        receiver = getattr(obj, "__self__", None)
        if isinstance(receiver, str):
            method = getattr(obj, "__name__", "")
            if method == "join" and args and not isinstance(args[0], list | tuple):
                args = (list(args[0]), *args[1:])  # sized before it is joined
            _require(_str_method_size(receiver, method, args), f"str.{method}")
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        sandboxed = super().wrap_str_format(value)
        if sandboxed is None:
            return None
        template: str = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            _require(_format_size(template, args, kwargs), "str.format")
            return sandboxed(*args, **kwargs)

        return checked

    def limited_iteration(self, iterable: Iterable[Any]) -> Iterator[Any]:
        budget = _budget.get()
        if budget is None:
            yield from iterable
            return
        for item in iterable:
            budget.step()
            yield item

    def checked_concat(self, operands: tuple[Any, ...]) -> tuple[Any, ...]:
        _require(_size(operands), "a ~ concatenation")
        return operands

    def bounded_buffer(self) -> list[str]:
        return _BoundedBuffer()
