"""Print `python -X importtime` output as a tree of cumulative seconds: `python -X importtime -c "import flows.pipeline" 2>imp.txt; python benchmarks/imptree.py imp.txt [max_depth] [min_seconds]`."""
import sys,re
rows=[]
for line in open(sys.argv[1]):
    m=re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)",line)
    if m: rows.append((int(m[2]),len(m[3])//2,m[4]))
maxd=int(sys.argv[2]) if len(sys.argv)>2 else 2
thr=float(sys.argv[3]) if len(sys.argv)>3 else 0.1
# importtime prints children before parents; print in order with depth filter
tot=sum(c for c,d,n in rows if d==0)
print("total top-level cumulative s", tot/1e6)
for c,d,n in rows:
    if d<=maxd and c/1e6>=thr: print(f"{c/1e6:7.3f} {'  '*d}{n}")
