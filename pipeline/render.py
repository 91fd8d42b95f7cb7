"""Report rendering in one place: a document of blocks written as Markdown, as one
self-contained HTML page (Jinja template ``pipeline/templates/page.html.j2``, one stylesheet)
and to the terminal (rich).

The run report (``pipeline.report``), the stages' report sections (``StageReport.section``)
and ``r1 inspect --html`` (``pipeline.inspect``) build a :class:`Doc`; :func:`fmt` is the one
number format of reports, tables and the terminal.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"
DASH = "–"  # shown for a missing or non-finite value


def fmt(value, digits: int | None = None) -> str:
    """A value as a report shows it: None and non-finite floats as "–"; floats with ``digits``
    decimals (default: 3 below 100, 0 from 100 on: a length in tokens needs no decimals);
    anything else as ``str``.

    >>> fmt(0.12345), fmt(1234.5), fmt(2.0, 1), fmt(None), fmt(float("nan")), fmt(7), fmt("x")
    ('0.123', '1234', '2.0', '–', '–', '7', 'x')
    """
    if value is None:
        return DASH
    if isinstance(value, float):
        if not math.isfinite(value):
            return DASH
        return f"{value:.{(3 if abs(value) < 100 else 0) if digits is None else digits}f}"
    return str(value)


def ci(value, interval) -> str:
    """``value [lo, hi]`` with 3 decimals; the value alone when the interval is missing or not finite.

    >>> ci(0.5, [0.25, 0.75]), ci(0.5, None), ci(None, [0, 1])
    ('0.500 [0.250, 0.750]', '0.500', '–')
    """
    if value is None:
        return DASH
    if not interval or any(not isinstance(c, (int, float)) or not math.isfinite(c) for c in interval):
        return fmt(value, 3)
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def short(ref: str, width: int = 28) -> str:
    """``ref`` cut from the left to ``width`` characters (the end of a path says the most)."""
    return ref if len(ref) <= width else "…" + ref[-(width - 1) :]


def _rich_code(text: str) -> str:
    """rich markup of a line whose `code` spans are shown in cyan (not with their backticks)."""
    from rich.markup import escape

    parts = text.split("`")
    if len(parts) % 2 == 0:  # an odd number of backticks: the text as it is
        return escape(text)
    return "".join(f"[cyan]{escape(p)}[/]" if i % 2 else escape(p) for i, p in enumerate(parts))


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2
    from markupsafe import Markup, escape

    def inline_code(text: str) -> Markup:  # `code` spans of a line of text
        parts = str(escape(text)).split("`")
        if len(parts) % 2 == 0:  # an odd number of backticks: leave the text as it is
            return Markup("".join(parts[:1] + ["`" + p for p in parts[1:]]))
        return Markup("".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)))

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters.update(fmt=fmt, inline_code=inline_code)
    return env


class Doc:
    """A list of blocks rendered both to Markdown and to HTML (so the two never disagree).

    ``out_dir``: where figures are saved as PNG files next to the Markdown (the run report);
    None keeps them in the HTML only (``r1 inspect``). ``dpi``: figure resolution.
    """

    def __init__(self, out_dir: Path | None = None, dpi: int = 100):
        self.out_dir = out_dir
        self.dpi = dpi
        self.blocks: list[dict] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append({"kind": "h", "level": level, "text": text})

    def p(self, text: str) -> None:
        """A paragraph; `backticks` mark code."""
        self.blocks.append({"kind": "p", "text": text})

    def bullets(self, items: list[str]) -> None:
        self.blocks.append({"kind": "ul", "items": list(items)})

    def missing(self, text: str) -> None:
        """A "not in this run" line: what is absent and why, instead of an empty panel."""
        self.blocks.append({"kind": "missing", "text": text})

    def table(self, headers: list[str], rows: list[list], caption: str = "", inline: bool = False) -> None:
        """A table; numbers are right-aligned and written with :func:`fmt`. ``inline``: several
        small tables side by side (HTML)."""
        self.blocks.append(
            {
                "kind": "table",
                "headers": list(headers),
                "rows": [list(r) for r in rows],
                "caption": caption,
                "inline": inline,
            }
        )

    def figure(self, fig, name: str, alt: str) -> None:
        """A matplotlib ``Figure``: saved as ``out_dir/name`` (when there is an ``out_dir``) and
        embedded in the HTML as a data URI. Figures lay themselves out (constrained layout or
        fixed axes): no ``bbox_inches="tight"``, which would draw every figure twice."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi)
        if self.out_dir is not None:
            (self.out_dir / name).write_bytes(buf.getvalue())
        self.blocks.append(
            {
                "kind": "img",
                "name": name if self.out_dir is not None else "",
                "alt": alt,
                "data": base64.b64encode(buf.getvalue()).decode(),
            }
        )

    def samples(self, title: str, question: str, columns: list[tuple[str, str, str]]) -> None:
        """Side-by-side completions of one question: (model, one-line facts, text) per column."""
        self.blocks.append({"kind": "samples", "title": title, "question": question, "columns": list(columns)})

    def browser(self, rows: list[dict]) -> None:
        """The sample browser of ``r1 inspect`` (HTML only; ``templates/browser.js``)."""
        self.blocks.append({"kind": "browser", "rows": rows})

    # -- Markdown

    def markdown(self) -> str:
        out: list[str] = []
        for b in self.blocks:
            kind = b["kind"]
            if kind == "h":
                out += ["#" * b["level"] + " " + b["text"], ""]
            elif kind == "p":
                out += [b["text"], ""]
            elif kind == "ul":
                out += [f"- {item}" for item in b["items"]] + [""]
            elif kind == "missing":
                out += [f"> **Not in this run:** {b['text']}", ""]
            elif kind == "table":

                def cell(c) -> str:
                    return fmt(c).replace("|", "\\|").replace("\n", " ")

                out += [f"*{b['caption']}*", ""] if b["caption"] else []
                out += ["| " + " | ".join(map(cell, b["headers"])) + " |", "|" + "---|" * len(b["headers"])]
                out += ["| " + " | ".join(map(cell, r)) + " |" for r in b["rows"]] + [""]
            elif kind == "img" and b["name"]:
                out += [f"![{b['alt']}]({b['name']})", ""]
            elif kind == "samples":
                out += [f"**{b['title']}**", "", *[f"> {line}" for line in b["question"].splitlines()], ""]
                for model, facts, text in b["columns"]:
                    fence = "~" * max(3, 1 + max((len(run) for run in text.split() if set(run) == {"~"}), default=0))
                    out += [f"*{model}* — {facts}", "", fence, text, fence, ""]
        return "\n".join(out)

    # -- terminal

    def print(self, console) -> None:
        """Print the text blocks and tables with rich (figures, samples and the browser are for
        the HTML page). ``console``: a ``rich.console.Console``."""
        from rich.markup import escape
        from rich.table import Table

        for b in self.blocks:
            kind = b["kind"]
            if kind == "h":
                console.print(f"[bold]{escape(b['text'])}[/]" if b["level"] <= 2 else escape(b["text"]))
            elif kind in ("p", "missing"):
                console.print(("not here: " if kind == "missing" else "") + _rich_code(b["text"]))
            elif kind == "ul":
                console.print("\n".join(f"- {_rich_code(item)}" for item in b["items"]))
            elif kind == "table":
                numeric = [
                    bool(b["rows"])
                    and all(
                        isinstance(r[i], (int, float)) and not isinstance(r[i], bool)
                        for r in b["rows"]
                        if r[i] not in (None, "")
                    )
                    for i in range(len(b["headers"]))
                ]
                t = Table(title=escape(b["caption"]) if b["caption"] else None)
                for h, right in zip(b["headers"], numeric):
                    t.add_column(escape(h), justify="right" if right else "left")
                for r in b["rows"]:
                    t.add_row(*[escape(fmt(c)) for c in r])
                console.print(t)

    # -- HTML

    def html(self, title: str) -> str:
        """One self-contained page (``templates/page.html.j2``): figures as data URIs, no links."""
        return _environment().get_template("page.html.j2").render(title=title, blocks=self.blocks)
