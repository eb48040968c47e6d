#!/usr/bin/env python3
"""Draws W1 fan-out latency (p50 and p99, configwatch and etcd) against the number
of watchers, as an SVG, from configwatch-bench's summary lines:

    W1 N=10000 configwatch p50=..ms p99=..ms ... etcd p50=..ms p99=..ms ... ratio=..

Several lines for the same N (repeated runs) are reduced to their median.
Usage: bench_w1_svg.py LOG... > tests/bench-w1.svg
"""
import math
import re
import statistics
import sys

LINE = re.compile(r"^W1 N=(\d+) configwatch p50=([\d.]+)ms p99=([\d.]+)ms")
ETCD = re.compile(r" etcd p50=([\d.]+)ms p99=([\d.]+)ms")


def read(paths):
    data = {}  # (series, n) -> [values]
    for path in paths:
        with open(path) as f:
            for line in f:
                m = LINE.match(line)
                if not m:
                    continue
                n = int(m.group(1))
                data.setdefault(("configwatch p50", n), []).append(float(m.group(2)))
                data.setdefault(("configwatch p99", n), []).append(float(m.group(3)))
                e = ETCD.search(line)
                if e:
                    data.setdefault(("etcd p50", n), []).append(float(e.group(1)))
                    data.setdefault(("etcd p99", n), []).append(float(e.group(2)))
    series = {}
    for (name, n), values in data.items():
        series.setdefault(name, []).append((n, statistics.median(values)))
    for points in series.values():
        points.sort()
    return series


STYLE = {
    "configwatch p50": ("#1f77b4", ""),
    "configwatch p99": ("#1f77b4", "6,4"),
    "etcd p50": ("#d62728", ""),
    "etcd p99": ("#d62728", "6,4"),
}


def svg(series):
    width, height = 720, 440
    left, right, top, bottom = 80, 200, 40, 60
    pw, ph = width - left - right, height - top - bottom
    ns = sorted({n for pts in series.values() for n, _ in pts}) or [1000, 10000]
    ys = [v for pts in series.values() for _, v in pts if v > 0] or [1.0, 100.0]
    xmin, xmax = math.log10(min(ns)), math.log10(max(ns))
    if xmax - xmin < 1e-9:
        xmin, xmax = xmin - 0.5, xmax + 0.5
    ymin = math.floor(math.log10(min(ys)))
    ymax = math.ceil(math.log10(max(ys)))
    if ymax == ymin:
        ymax += 1

    def x(n):
        return left + (math.log10(n) - xmin) / (xmax - xmin) * pw

    def y(v):
        return top + ph - (math.log10(max(v, 10**ymin)) - ymin) / (ymax - ymin) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left + pw / 2}" y="22" text-anchor="middle" font-size="15">'
        "W1 fan-out: delivery latency against watchers (medians of runs)</text>",
    ]
    for d in range(ymin, ymax + 1):
        yy = y(10**d)
        out.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + pw}" y2="{yy:.1f}" stroke="#ddd"/>')
        label = f"{10**d:g}"
        out.append(f'<text x="{left - 8}" y="{yy + 4:.1f}" text-anchor="end">{label}</text>')
    for n in ns:
        xx = x(n)
        out.append(f'<line x1="{xx:.1f}" y1="{top}" x2="{xx:.1f}" y2="{top + ph}" stroke="#eee"/>')
        label = f"{n // 1000}k" if n >= 1000 else str(n)
        out.append(f'<text x="{xx:.1f}" y="{top + ph + 18}" text-anchor="middle">{label}</text>')
    out.append(
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>'
    )
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 18}" text-anchor="middle">'
        "watchers N (log scale)</text>"
    )
    out.append(
        f'<text x="20" y="{top + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 20 {top + ph / 2})">latency ms (log scale)</text>'
    )
    for i, name in enumerate(STYLE):
        pts = series.get(name)
        color, dash = STYLE[name]
        ly = top + 20 + i * 22
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<line x1="{left + pw + 15}" y1="{ly}" x2="{left + pw + 45}" y2="{ly}" '
            f'stroke="{color}" stroke-width="2"{dash_attr}/>'
        )
        note = "" if pts else " (no data)"
        out.append(f'<text x="{left + pw + 52}" y="{ly + 4}">{name}{note}</text>')
        if not pts:
            continue
        path = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in pts)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash_attr}/>'
        )
        for n, v in pts:
            out.append(f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="3.5" fill="{color}"/>')
            out.append(
                f'<text x="{x(n) + 6:.1f}" y="{y(v) - 6:.1f}" fill="{color}" font-size="10">{v:.1f}</text>'
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.stdout.write(svg(read(sys.argv[1:])))


if __name__ == "__main__":
    main()
