"""Medians per table cell over the rounds benches/ab-builds.sh made, old vs new
build, and new/old ratios, as a markdown table (usage: ab-summary.py DIR)."""
import glob, re, statistics, sys, collections
out = sys.argv[1]
rows = collections.defaultdict(lambda: collections.defaultdict(list))  # (table,row,col) -> build -> values
for build in ("old", "new"):
    for f in sorted(glob.glob(f"{out}/{build}-*.md")):
        table = 0; header = None
        for line in open(f):
            if line.startswith("| ") and "---" not in line:
                cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
                if header is None or cells[0] in ("server", "backends", "read-policy"):
                    header = cells; table += 1; continue
                for h, c in zip(header[1:], cells[1:]):
                    c = c.rstrip("x%")
                    try: v = float(c)
                    except ValueError: continue
                    rows[(table, cells[0], h)][build].append(v)
            elif not line.startswith("|"):
                header = None if line.strip() == "" else header
print("| table | row | column | old median | new median | new/old | n |")
print("|---|---|---|---|---|---|---|")
for (t, r, h), d in rows.items():
    if not d["old"] or not d["new"]: continue
    o, n = statistics.median(d["old"]), statistics.median(d["new"])
    print(f"| {t} | {r} | {h} | {o:g} | {n:g} | {n/o:.3f} | {len(d['old'])}/{len(d['new'])} |" if o else f"| {t} | {r} | {h} | {o:g} | {n:g} | - | |")
