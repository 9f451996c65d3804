"""Many numbers as text in one pass of numpy, byte for byte what Python prints for each.

Mask outlines and runs are thousands of numbers an item; printing them one at a time (``round``, ``%``,
``json.dumps``) cost more than tracing the masks. These functions build the characters of all of them at once in
a ``uint8`` table (one row per number, unused cells 0, squeezed out at the end) and give the joined text:

- :func:`fixed_texts`: ``"%.<digits>f" % v`` (YOLO's coordinates);
- :func:`rounded_texts`: ``repr(round(v, digits))``, which is how ``json.dumps`` prints ``round(v, digits)``
  (Label Studio's and COCO's coordinates);
- :func:`int_texts`: ``str(i)`` (``json.dumps`` of an int; RLE counts).

Each takes a list of groups (an item's outlines, its masks' runs) and gives one text per group from one table:
a numpy call costs microseconds, so it is paid per item, not per outline. ``join_*`` do one group.

Rounding is Python's (correct rounding of the exact binary value, ties to even). ``v * 10**digits`` is rounded
with numpy: the product is the double nearest the exact one, so it falls on the same side of every half-integer
(half-integers below ``2**52`` are doubles) unless it lies on one; there the product's rounding error (Dekker's
exact product) says which side the exact value is on. ``repr(round(v, d))`` is the ``%.<d>f`` text with its
trailing zeros cut (one kept): a decimal of at most 15 significant digits is the shortest text of the double nearest
it. Numbers that are not finite, not below ``1e15`` (``repr`` turns to exponents from ``1e16``) or not below
``2**52`` once scaled make the call print them one by one, in Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_LIMIT = 1e15
_EXACT = 2.0**52  # below this, doubles are spaced at most 1/2 apart: every half-integer is one
_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's splitter for Dekker's exact product
_ZERO = ord("0")
_GROUP_END = b"\n"  # ends a group's last number in the shared table; no number or separator holds it


def join_fixed(values: np.ndarray, digits: int, separators: Sequence[str] = (" ",)) -> str:
    """``"%.<digits>f"`` of every value of ``values`` (``(n,)`` or ``(n, len(separators))``), each followed by
    its column's separator, the last one left off: ``join_fixed([[1, 2], [3, 4]], 1, (" ", "; "))`` is
    ``"1.0 2.0; 3.0 4.0"``."""
    return fixed_texts([values], digits, separators)[0]


def join_rounded(values: np.ndarray, digits: int, separators: Sequence[str] = (", ",)) -> str:
    """As :func:`join_fixed`, with each value printed as ``repr(round(v, digits))`` (``json.dumps`` of it)."""
    return rounded_texts([values], digits, separators)[0]


def join_ints(values: np.ndarray, separator: str = ", ") -> str:
    """``str(i)`` of every integer of ``values`` (1-D), joined by ``separator``: ``", "`` gives the inside of
    ``json.dumps(list_of_ints)``."""
    return int_texts([values], separator)[0]


def fixed_texts(groups: Sequence[np.ndarray], digits: int, separators: Sequence[str] = (" ",)) -> list[str]:
    """:func:`join_fixed` of each of ``groups``, from one table."""
    return _decimal_texts(groups, digits, separators, trim=False)


def rounded_texts(groups: Sequence[np.ndarray], digits: int, separators: Sequence[str] = (", ",)) -> list[str]:
    """:func:`join_rounded` of each of ``groups``, from one table."""
    return _decimal_texts(groups, digits, separators, trim=True)


def rounded_row_texts(
    rows: np.ndarray, sizes: Sequence[int], digits: int, separators: Sequence[str] = (", ",)
) -> list[str]:
    """:func:`rounded_texts` of groups given as consecutive ``rows`` (``(n, len(separators))``), ``sizes[i]`` rows
    in group ``i``: for callers that compute all their groups in one array (no split, no concatenation)."""
    return _decimal_texts((rows, sizes), digits, separators, trim=True)


def int_texts(groups: Sequence[np.ndarray], separator: str = ", ") -> list[str]:
    """:func:`join_ints` of each of ``groups`` (1-D), from one table."""
    ends = _encoded([separator])
    arrays = [np.asarray(g, dtype=np.int64).reshape(-1) for g in groups]
    sizes = [len(a) for a in arrays]
    if not any(sizes):
        return ["" for _ in arrays]
    ints = np.concatenate(arrays)
    magnitude = np.abs(ints)
    head = _digit_table(magnitude, ints < 0)
    table = _with_ends(head, _group_ends(sizes, len(ints)), ends, 1)
    return _split(table, sizes)


def _decimal_texts(
    groups: Sequence[np.ndarray] | tuple[np.ndarray, Sequence[int]], digits: int, separators: Sequence[str], trim: bool
) -> list[str]:
    """The texts of ``groups``: a list of arrays, or ``(rows, sizes)`` (:func:`rounded_row_texts`)."""
    if digits < 1:
        raise ValueError("digits must be 1 or more")
    ends = _encoded(separators)
    columns = len(separators)
    if isinstance(groups, tuple):
        rows, sizes = np.asarray(groups[0], dtype=np.float64).reshape(-1, columns), list(groups[1])
        if sum(sizes) != len(rows):
            raise ValueError(f"the group sizes add up to {sum(sizes)}, not the {len(rows)} rows given")
        if not any(sizes):
            return ["" for _ in sizes]
        arrays = None
        flat = rows.reshape(-1)
    else:
        arrays = [np.asarray(g, dtype=np.float64).reshape(-1, columns) for g in groups]
        sizes = [len(a) for a in arrays]
        if not any(sizes):
            return ["" for _ in arrays]
        flat = np.concatenate(arrays).reshape(-1)
    magnitude = np.abs(flat)
    power = 10.0**digits
    scaled = magnitude * power
    if not (np.all(magnitude < _LIMIT) and np.all(scaled < _EXACT)):  # nan, inf, huge: as Python prints them
        if arrays is None:
            arrays = np.split(flat.reshape(-1, columns), np.cumsum(sizes)[:-1])
        return [_join_in_python(a, digits, separators, trim) for a in arrays]
    units = np.rint(scaled)  # ties to even, as Python; a product on a tie is settled below
    ties = np.flatnonzero(scaled - np.floor(scaled) == 0.5)
    if len(ties):
        error = _product_error(magnitude[ties], power, scaled[ties])  # exact value = product + error
        on_tie = scaled[ties]
        units[ties] = np.where(error > 0, np.ceil(on_tie), np.where(error < 0, np.floor(on_tie), units[ties]))
    whole, fraction = np.divmod(units.astype(np.int64), 10**digits)
    head = _digit_table(whole, np.signbit(flat))
    body = np.empty((len(flat), head.shape[1] + 1 + digits), np.uint8)
    body[:, : head.shape[1]] = head
    body[:, head.shape[1]] = ord(".")
    start = head.shape[1] + 1
    rest = _narrow(fraction)
    later = np.zeros(len(flat), bool)  # whether a digit right of this one is not 0
    for j in reversed(range(digits)):  # the last digit first: one division a digit
        rest, digit = _divmod10(rest)
        cell = body[:, start + j]
        cell[:] = _ZERO + digit
        if trim and j:  # a digit stays when it or a later one is not 0 (the first is always kept)
            later |= digit != 0
            cell[~later] = 0
    table = _with_ends(body, _group_ends([n * columns for n in sizes], len(flat)), ends, columns)
    return _split(table, sizes)


def _encoded(separators: Sequence[str]) -> list[bytes]:
    ends = [s.encode("ascii") for s in separators]
    if any(_GROUP_END in end or b"\0" in end for end in ends):  # they would split or vanish from the text
        raise ValueError(f"a separator cannot hold a line break or a NUL: {list(separators)}")
    return ends


def _product_error(a: np.ndarray, b: float, product: np.ndarray) -> np.ndarray:
    """``a * b - product`` exactly (Dekker), where ``product`` is the double ``a * b``."""
    a_high = a * _SPLIT - (a * _SPLIT - a)
    a_low = a - a_high
    b_high = b * _SPLIT - (b * _SPLIT - b)
    b_low = b - b_high
    return ((a_high * b_high - product) + a_high * b_low + a_low * b_high) + a_low * b_low


def _digit_table(magnitude: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """One row per integer: a sign cell (``-`` where ``negative``), then its digits right aligned (leading cells
    0)."""
    places = len(str(int(magnitude.max())))
    table = np.zeros((len(magnitude), 1 + places), np.uint8)
    table[negative, 0] = ord("-")
    rest = _narrow(magnitude)
    for j in reversed(range(places)):  # the units first: one division a digit
        column = table[:, 1 + j]
        if j < places - 1:
            leading = rest == 0  # nothing left above the units: a leading zero, not printed
        rest, digit = _divmod10(rest)
        column[:] = _ZERO + digit
        if j < places - 1:
            column[leading] = 0
    return table


def _narrow(ints: np.ndarray) -> np.ndarray:
    """Non-negative ``ints`` as uint32 where they fit (numpy divides those about twice as fast)."""
    return ints.astype(np.uint32) if not len(ints) or int(ints.max()) < 2**32 else ints


def _divmod10(ints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    quotient = ints // 10
    return quotient, ints - quotient * 10


def _group_ends(value_counts: list[int], total: int) -> np.ndarray:
    """Whether each of ``total`` numbers is the last of its group."""
    last = np.zeros(total, bool)
    last[np.cumsum([n for n in value_counts if n]) - 1] = True
    return last


def _with_ends(body: np.ndarray, group_end: np.ndarray, ends: list[bytes], columns: int) -> np.ndarray:
    """``body`` with each number's separator after it (its column's; ``_GROUP_END`` after a group's last)."""
    width = max(max(len(e) for e in ends), len(_GROUP_END))
    table = np.zeros((len(body), body.shape[1] + width), np.uint8)
    table[:, : body.shape[1]] = body
    cells = table[:, body.shape[1] :].reshape(-1, columns, width)
    for column, end in enumerate(ends):
        cells[:, column, : len(end)] = np.frombuffer(end, np.uint8)
    tail = table[group_end, body.shape[1] :]
    tail[:] = 0
    tail[:, : len(_GROUP_END)] = np.frombuffer(_GROUP_END, np.uint8)
    table[group_end, body.shape[1] :] = tail
    return table


def _split(table: np.ndarray, sizes: list[int]) -> list[str]:
    """The table's characters, its 0 cells left out, cut into the groups' texts (``""`` for an empty group)."""
    flat = table.reshape(-1)
    pieces = iter(flat[flat != 0].tobytes().decode("ascii").split(_GROUP_END.decode("ascii")))
    return [next(pieces) if n else "" for n in sizes]


def _join_in_python(array: np.ndarray, digits: int, separators: Sequence[str], trim: bool) -> str:
    parts = []
    for row in array.tolist():
        for value, end in zip(row, separators):
            parts.append((repr(round(value, digits)) if trim else f"{value:.{digits}f}") + end)
    text = "".join(parts)
    return text[: len(text) - len(separators[-1])]
