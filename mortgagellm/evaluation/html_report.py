"""The run report as one self-contained HTML page: the same Markdown report.md holds, rendered by
Python-Markdown (tables, footnotes), with every plot inlined as a data: URI.

The page fetches nothing: a Content-Security-Policy allows images from data: only and no script,
so it reads the same opened from a laptop, an artifact store or an air-gapped review machine.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:.2em .5em}
td{font-variant-numeric:tabular-nums}img{max-width:100%}code{font-size:90%}"""
_IMG = re.compile(r'<img alt="([^"]*)" src="([^":]+)"')


def render(markdown_text: str, assets: Path, title: str) -> str:
    """report.md's text as a page; image links resolve against `assets` and are inlined. A
    linked image that is missing raises FileNotFoundError naming it (a page with a broken plot
    is not a report)."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "footnotes"])

    def inline(match: re.Match) -> str:
        data = (assets / match.group(2)).read_bytes()
        return (f'<img alt="{match.group(1)}" '
                f'src="data:image/png;base64,{base64.b64encode(data).decode()}"')

    body = _IMG.sub(inline, body)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
