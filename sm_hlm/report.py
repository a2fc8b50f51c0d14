"""Rendering of report tables as text, HTML and LaTeX.

A report is a title, a list of :class:`Section` objects (a table, or a list
of label/value pairs) and notes.  The three renderers share one layout:

* text: every line at most ``width`` (default 100) characters; one rule
  width throughout (the widest section, capped at ``width``); text columns
  that would make a table too wide are wrapped, never cut;
* HTML: one ``<div>`` of plain, escaped ``<table>`` elements (Jupyter's
  ``_repr_html_``);
* LaTeX: one ``table`` float holding one booktabs ``tabular`` (needs
  ``\\usepackage{booktabs}``), with caption and label.

:func:`abbreviate` shortens labels as R's ``abbreviate`` (lme4 uses it for
the correlation of the fixed effects).
"""
from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Section", "abbreviate", "render_text", "render_html", "render_latex",
           "DEFAULT_WIDTH"]

#: widest line of a text report
DEFAULT_WIDTH = 100
_SEP = "  "


@dataclass
class Section:
    """One block of a report.

    Attributes
    ----------
    frame
        The table (values formatted by ``float_format`` / ``formats``), or
        None for a pairs section.
    title
        Heading printed above the block (may hold line breaks).
    index, header
        Print the row labels / the column labels.
    float_format
        printf format of float cells.
    formats
        Column name -> printf format overriding ``float_format``.
    pairs
        Label/value pairs (a "key: value" block) instead of a table.
    align
        "l" or "r": align every data column so (None: text left, numbers right).
    breaks
        Body row position -> sub-heading printed (after a thin rule) before
        that row; the columns stay aligned across the whole table.
    """

    frame: pd.DataFrame | None = None
    title: str | None = None
    index: bool = True
    header: bool = True
    float_format: str = "%.4f"
    formats: dict[str, str] = field(default_factory=dict)
    pairs: list[tuple[str, str]] | None = None
    align: str | None = None
    breaks: dict[int, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------

def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(float(value)) else fmt % value
    if value is pd.NA:
        return ""
    return str(value)


def _df_format(col: pd.Series) -> str:
    """Degrees of freedom: whole numbers as such, others to one decimal."""
    v = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return "%.0f" if v.size and np.all(v == np.round(v)) else "%.1f"


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").strip("()*"))
    except ValueError:
        return False
    return True


def _is_text(col: pd.Series) -> bool:
    """A column of strings that are not all formatted numbers (left-aligned)."""
    vals = [v for v in col if not (isinstance(v, str) and v == "") and v is not None]
    return bool(vals) and all(isinstance(v, str) for v in vals) and \
        not all(_is_number(v) for v in vals)


def section_cells(sec: Section) -> tuple[list[str] | None, list[list[str]], list[str]]:
    """Header, body cells and alignments ("l"/"r") of a table section."""
    df = sec.frame
    assert df is not None
    cols = list(df.columns)
    fmts = []
    for c in cols:
        if str(c) in sec.formats:
            fmts.append(sec.formats[str(c)])
        elif str(c) == "df":
            fmts.append(_df_format(df[c]))
        else:
            fmts.append(sec.float_format)
    body = [[_fmt(v, f) for v, f in zip(row, fmts)] for row in df.itertuples(index=False)]
    aligns = ([sec.align] * len(cols) if sec.align else
              ["l" if _is_text(df[c]) else "r" for c in cols])
    header = [str(c) for c in cols] if sec.header else None
    if sec.index:
        body = [[str(i)] + r for i, r in zip(df.index, body)]
        aligns = ["l"] + aligns
        if header is not None:
            header = [str(df.index.name or "")] + header
    return header, body, aligns


# ---------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------

def _wrap(text: str, width: int, indent: str = "  ") -> list[str]:
    """Greedy wrap breaking after spaces, ``:``, ``]``, ``)`` or ``,``; continuation
    lines indented; pieces longer than a line are cut."""
    if len(text) <= width:
        return [text]
    width = max(width, len(indent) + 4)
    tokens = [t for t in re.split(r"(?<=[\s:\]),])", text) if t]
    lines: list[str] = []
    cur = ""
    for tok in tokens:
        room = width - (len(indent) if lines else 0)
        if len(cur) + len(tok.rstrip()) <= room:
            cur += tok
            continue
        if cur.strip():
            lines.append(cur.rstrip())
            cur = ""
        room = width - len(indent)
        while len(tok.rstrip()) > room:
            lines.append(tok[:room])
            tok = tok[room:]
        cur = tok.lstrip() if lines else tok
    if cur.strip():
        lines.append(cur.rstrip())
    return [ln if i == 0 else indent + ln for i, ln in enumerate(lines)]


def _table_lines(header: list[str] | None, body: list[list[str]], aligns: list[str],
                 width: int, breaks: dict[int, str] | None = None) -> list[str]:
    rows = ([header] if header is not None else []) + body
    if not rows:
        return []
    k = len(aligns)
    widths = [max(len(r[j]) for r in rows) for j in range(k)]
    # shrink the widest text column until the table fits (its cells wrap)
    floor = 12
    while sum(widths) + len(_SEP) * (k - 1) > width:
        text_cols = [j for j in range(k) if aligns[j] == "l" and widths[j] > floor]
        if not text_cols:
            break
        j = max(text_cols, key=lambda c: widths[c])
        excess = sum(widths) + len(_SEP) * (k - 1) - width
        widths[j] = max(floor, widths[j] - excess)
    if sum(widths) + len(_SEP) * (k - 1) > width and k > 2:
        # still too wide (many numeric columns): print column blocks, as R
        # prints a wide matrix, each block repeating the first column
        blocks, cur = [], [1]
        for j in range(2, k):
            if widths[0] + sum(widths[c] + len(_SEP) for c in cur + [j]) > width:
                blocks.append(cur)
                cur = []
            cur.append(j)
        blocks.append(cur)
        out: list[str] = []
        for b in blocks:
            cols = [0] + b
            if out:
                out.append("")
            out += _table_lines(None if header is None else [header[c] for c in cols],
                                [[r[c] for c in cols] for r in body], [aligns[c] for c in cols],
                                width, breaks)
        return out
    out = []
    n_head = 1 if header is not None else 0
    total = sum(widths) + len(_SEP) * (k - 1)
    for pos, r in enumerate(rows):
        if breaks and pos - n_head in breaks:
            out.append("-" * total)
            out += _wrap(breaks[pos - n_head], total)
        cells = [_wrap(r[j], widths[j]) if aligns[j] == "l" else [r[j]] for j in range(k)]
        depth = max(len(c) for c in cells)
        for d in range(depth):
            parts = []
            for j in range(k):
                s = cells[j][d] if d < len(cells[j]) else ""
                parts.append(s.ljust(widths[j]) if aligns[j] == "l" else s.rjust(widths[j]))
            out.append(_SEP.join(parts).rstrip())
    return out


def _pairs_lines(pairs: list[tuple[str, str]], width: int) -> list[str]:
    if not pairs:
        return []
    half = (len(pairs) + 1) // 2
    left, right = pairs[:half], pairs[half:]
    kl = max(len(k) for k, _ in left)
    vl = max(len(v) for _, v in left)
    kr = max((len(k) for k, _ in right), default=0)
    vr = max((len(v) for _, v in right), default=0)
    gap = 4
    if kl + 1 + vl + gap + kr + 1 + vr <= width:
        lines = []
        for i in range(half):
            k1, v1 = left[i]
            s = f"{k1.ljust(kl)} {v1.ljust(vl)}"
            if i < len(right):
                k2, v2 = right[i]
                s += " " * gap + f"{k2.ljust(kr)} {v2}"
            lines.append(s.rstrip())
        return lines
    kw = min(max(len(k) for k, _ in pairs), width // 2)
    lines = []
    for k, v in pairs:
        for i, piece in enumerate(_wrap(f"{k.ljust(kw)} {v}", width)):
            lines.append(piece)
    return lines


def section_lines(sec: Section, width: int) -> list[str]:
    """The body of one section (no title), every line at most ``width``."""
    if sec.pairs is not None:
        return _pairs_lines(sec.pairs, width)
    header, body, aligns = section_cells(sec)
    return _table_lines(header, body, aligns, width, sec.breaks)


def render_text(title: str | None, sections: Sequence[Section], notes: Sequence[str],
                *, width: int = DEFAULT_WIDTH) -> str:
    """Title, rule, sections separated by thin rules, rule, notes."""
    blocks = [section_lines(s, width) for s in sections]
    natural = max([len(line) for b in blocks for line in b] + [len(title or "")] + [40])
    rule_w = min(width, natural)
    blocks = [[("-" * rule_w if line and set(line) == {"-"} else line) for line in b]
              for b in blocks]
    note_w = max(rule_w, min(width, 80))
    out: list[str] = []
    if title:
        out += [t.center(rule_w).rstrip() for t in _wrap(title, rule_w)]
    out.append("=" * rule_w)
    for i, (sec, block) in enumerate(zip(sections, blocks)):
        if i:
            out.append("-" * rule_w)
        if sec.title:
            for t in sec.title.split("\n"):
                out += _wrap(t, rule_w)
        out += block
    out.append("=" * rule_w)
    for note in notes:
        for para in str(note).split("\n"):
            out += _wrap(para, note_w)
    return "\n".join(out)


# ---------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------

def _html_table(sec: Section) -> str:
    esc = html.escape
    td = 'style="text-align:{}"'
    parts = ['<table class="simpletable" style="border-collapse:collapse; margin:0 0 0.8em 0">']
    if sec.title:
        cap = "<br/>".join(esc(t) for t in sec.title.split("\n"))
        parts.append(f'<caption style="text-align:left; font-weight:bold">{cap}</caption>')
    if sec.pairs is not None:
        half = (len(sec.pairs) + 1) // 2
        left, right = sec.pairs[:half], sec.pairs[half:]
        for i in range(half):
            cells = list(left[i]) + (list(right[i]) if i < len(right) else ["", ""])
            parts.append("<tr>" + "".join(
                f'<td {td.format("left")}>{esc(c)}</td>' for c in cells) + "</tr>")
    else:
        header, body, aligns = section_cells(sec)
        if header is not None:
            parts.append("<thead><tr>" + "".join(
                f'<th {td.format("left" if a == "l" else "right")}>{esc(h)}</th>'
                for h, a in zip(header, aligns)) + "</tr></thead>")
        parts.append("<tbody>")
        for pos, r in enumerate(body):
            if pos in sec.breaks:
                parts.append(f'<tr><td colspan="{len(r)}" style="text-align:left; '
                             f'font-weight:bold">{esc(sec.breaks[pos])}</td></tr>')
            parts.append("<tr>" + "".join(
                f'<td {td.format("left" if a == "l" else "right")}>{esc(c)}</td>'
                for c, a in zip(r, aligns)) + "</tr>")
        parts.append("</tbody>")
    parts.append("</table>")
    return "\n".join(parts)


def render_html(title: str | None, sections: Sequence[Section], notes: Sequence[str]) -> str:
    """One ``<div>``: a heading, one table per section, the notes as paragraphs."""
    out = ['<div class="sm-hlm-summary">']
    if title:
        out.append(f"<h3>{html.escape(title)}</h3>")
    out += [_html_table(s) for s in sections]
    for note in notes:
        out.append("<p>" + "<br/>".join(html.escape(t) for t in str(note).split("\n")) + "</p>")
    out.append("</div>")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# LaTeX
# ---------------------------------------------------------------------------

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
        "|": r"\textbar{}"}


def tex_escape(text: str) -> str:
    """Escape LaTeX's special characters."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def render_latex(title: str | None, sections: Sequence[Section], notes: Sequence[str], *,
                 label: str = "tab:hlm", caption: str | None = None) -> str:
    """One ``table`` float with one booktabs ``tabular``; sections separated by midrules."""
    grids: list[tuple[Section, list[list[str]] | None, list[list[str]]]] = []
    ncol = 2
    for sec in sections:
        if sec.pairs is not None:
            half = (len(sec.pairs) + 1) // 2
            left, right = sec.pairs[:half], sec.pairs[half:]
            body = [list(left[i]) + (list(right[i]) if i < len(right) else ["", ""])
                    for i in range(half)]
            grids.append((sec, None, body))
            ncol = max(ncol, 4)
        else:
            header, body, _ = section_cells(sec)
            grids.append((sec, [header] if header is not None else None, body))
            ncol = max(ncol, len(body[0]) if body else len(header or []))
    cap = caption if caption is not None else (title or "Model estimates")
    lines = ["% requires \\usepackage{booktabs}", "\\begin{table}[htbp]", "\\centering",
             f"\\caption{{{tex_escape(cap)}}}", f"\\label{{{label}}}",
             "\\begin{tabular}{l" + "r" * (ncol - 1) + "}", "\\toprule"]

    def row(cells: list[str]) -> str:
        cells = [tex_escape(c) for c in cells] + [""] * (ncol - len(cells))
        if cells[0].startswith("["):        # not the optional argument of the \\ before
            cells[0] = "{}" + cells[0]
        return " & ".join(cells) + " \\\\"

    for i, (sec, header, body) in enumerate(grids):
        if i:
            lines.append("\\midrule")
        if sec.title:
            for t in sec.title.split("\n"):
                lines.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\textit{{{tex_escape(t)}}}}} \\\\")
        if header:
            lines.append(row(header[0]))
            lines.append("\\cmidrule(l){2-" + str(ncol) + "}" if sec.index else "\\midrule")
        for pos, r in enumerate(body):
            if pos in sec.breaks:
                lines.append("\\midrule")
                lines.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\textit{{"
                             f"{tex_escape(sec.breaks[pos])}}}}} \\\\")
            lines.append(row(r))
    lines += ["\\bottomrule", "\\end{tabular}"]
    if notes:
        lines.append("\\par\\smallskip\\footnotesize")
        lines.append(" \\\\\n".join(tex_escape(n).replace("\n", " \\\\\n") for n in notes))
    lines.append("\\end{table}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# R's abbreviate
# ---------------------------------------------------------------------------

def _strip_chars(name: str, minlen: int) -> str:
    """R's internal abbreviation of one string (character classes used)."""
    b = list(name.strip())
    if len(b) <= minlen:
        return "".join(b)
    nspace = sum(ch.isspace() for ch in b[1:])

    def short() -> bool:
        return len(b) - nspace <= minlen

    def first(i: int) -> bool:
        return b[i - 1].isspace()

    def last(i: int) -> bool:
        return not b[i - 1].isspace() and (i + 1 >= len(b) or b[i + 1].isspace())

    def vowel(i: int) -> bool:
        return b[i] in "aeiou"

    done = short()
    passes = [lambda i: vowel(i) and last(i), lambda i: vowel(i) and not first(i),
              lambda i: b[i].islower() and last(i), lambda i: b[i].islower() and not first(i),
              lambda i: not first(i) and not b[i].isspace()]
    for rule in passes:
        if done:
            break
        for i in range(len(b) - 1, 0, -1):
            if i < len(b) and rule(i):
                del b[i]
            if short():
                done = True
                break
    if len(b) > minlen:
        b = [b[0]] + [ch for ch in b[1:] if not ch.isspace()]
    return "".join(b)


def abbreviate(names: Sequence[str], minlength: int = 4) -> list[str]:
    """Abbreviate labels as R's ``abbreviate(names, minlength)`` (unique results).

    Lower-case vowels are dropped from the right (word ends first), then
    lower-case letters, then any character but a word's first; labels that
    end up equal are abbreviated again with a larger ``minlength``.
    """
    names = [str(n).strip() for n in names]
    uniq = list(dict.fromkeys(names))
    out = {n: _strip_chars(n, minlength) for n in uniq}
    ml = minlength
    while True:
        vals = list(out.values())
        dup = {v for v in vals if vals.count(v) > 1}
        if not dup:
            break
        ml += 1
        for n in uniq:
            if out[n] in dup:
                out[n] = _strip_chars(n, ml)
        if ml > max(len(n) for n in uniq):
            break
    return [out[n] for n in names]
