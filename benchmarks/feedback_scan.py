"""The feedback leak check on a ~32 MB page: one scan per secret line (before) against one
Aho-Corasick pass for all of them (attnkit.reports.leaks). Prints both times and checks that both
find the same lines.

    .venv/bin/python benchmarks/feedback_scan.py [--mb 32]

Two pages: a flood of printed text (few entities), measured both ways in full; and a flood whose
quotes and brackets became entities, where the old check (hours at 32 MB) is timed on a few lines
and scaled. Two of the assignment's secret lines are planted in each.
"""
from __future__ import annotations

import argparse
import html
import time
from pathlib import Path

from attnkit.authoring import notebooks as nbu
from attnkit.reports import leaks

ROOT = Path(__file__).resolve().parents[1]


def before(page: str, secret: list[str]) -> list[str]:
    """The check as it was: the page unescaped and scanned once per secret line."""
    return [line for line in secret if line in html.unescape(page)]


def make_page(mb: float, secret: list[str], escaped: bool) -> str:
    """A flood of printed output as a feedback page shows it; two secret lines planted in the middle."""
    line = ("step {i}: loss=0.{i:04d} out[0] = tensor([[0.1234, -0.5678]]) {{'q': 'k'}} <attn>\n" if escaped
            else "step {i}: loss=0.{i:04d} out[0] = tensor([[0.1234, -0.5678]]) " + "x" * 60 + "\n")
    lines, size, i = [], 0, 0
    while size < mb * (1 << 20):
        text = html.escape(line.format(i=i))
        lines.append(text)
        size += len(text)
        i += 1
    mid = len(lines) // 2
    lines[mid:mid] = [html.escape(secret[3]) + "\n", html.escape(secret[-1]) + "\n"]
    return "<html><body><pre>" + "".join(lines) + "</pre></body></html>"


def measure(page: str, secret: list[str], sample: int | None) -> None:
    t = time.perf_counter()
    new = leaks(page, secret)
    t_new = time.perf_counter() - t
    print(f"  one pass (Aho-Corasick):    {t_new:8.2f} s   found {len(new)}")
    if sample:   # the old check, timed on the first lines only, then scaled to all of them
        t = time.perf_counter()
        before(page, secret[:sample])
        t_old = (time.perf_counter() - t) * len(secret) / sample
        print(f"  one scan per line (before): {t_old:8.0f} s   (estimated from {sample} of {len(secret)} lines)")
    else:
        t = time.perf_counter()
        old = before(page, secret)
        t_old = time.perf_counter() - t
        print(f"  one scan per line (before): {t_old:8.2f} s   found {len(old)}; same lines: {old == new}")
    print(f"  {t_old / t_new:.0f}x faster")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=32)
    ap.add_argument("--sample", type=int, default=8, help="lines the old check is timed on, for the escaped page")
    args = ap.parse_args()
    secret = nbu.assignment_hidden_lines(sorted((ROOT / "source" / "hw9").glob("*.ipynb")))
    print(f"{len(secret)} secret lines (hw9's hidden tests and mark schemes)")
    page = make_page(args.mb, secret, escaped=False)
    print(f"plain flood (printed text, few entities): {len(page) / (1 << 20):.1f} MB")
    measure(page, secret, None)
    page = make_page(args.mb, secret, escaped=True)
    print(f"escaped flood (quotes and brackets, an entity every few characters): {len(page) / (1 << 20):.1f} MB")
    measure(page, secret, args.sample)


if __name__ == "__main__":
    main()
