"""What the bench scripts share: the log they print and save, running a command under
/usr/bin/time -v (optionally pinned to one core) and reading its wall, CPU and peak RSS,
and the median summary over rounds."""
import datetime
import io
import os
import pathlib
import re
import subprocess
import sys

LOG = io.StringIO()


def say(line=""):
    print(line, flush=True)
    LOG.write(line + "\n")


def launch(cmd, core=None):
    """Starts cmd under /usr/bin/time -v (and taskset -c CORE when given)."""
    full = ["/usr/bin/time", "-v"] + (["taskset", "-c", str(core)] if core is not None else []) + [str(c) for c in cmd]
    # One BLAS thread: a peer is one process on one core (idle OpenBLAS threads would
    # only compete with it for its core).
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return full, subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def collect(launched):
    """Waits for a launched command; returns (stdout, {"wall", "cpu", "rss"}) in seconds,
    user + sys seconds and MB. A failure is printed and ends the bench."""
    full, p = launched
    stdout, err = p.communicate()
    if p.returncode != 0:
        say(f"FAILED: {' '.join(full)}\n{stdout}\n{err[-3000:]}")
        sys.exit(1)

    def field(name):
        return re.search(re.escape(name) + r":\s*(.+)", err).group(1).strip()

    wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    seconds = sum(float(v) * 60 ** i for i, v in enumerate(reversed(wall.split(":"))))
    cpu = float(field("User time (seconds)")) + float(field("System time (seconds)"))
    rss = int(field("Maximum resident set size (kbytes)")) / 1024
    return stdout, {"wall": seconds, "cpu": cpu, "rss": rss}


def timed(cmd, pin):
    """Runs cmd (on core 0 when pin); returns (stdout, metrics) as `collect`."""
    return collect(launch(cmd, 0 if pin else None))


def say_medians(against, rounds):
    """The summary line: each round's ratios (keys "per core", "per CPU-s", "w2/w1",
    "w2/ceiling") as medians. Single runs on a shared VM swing by ±20 %: the median
    over rounds is the figure."""
    median = lambda key: sorted(x[key] for x in rounds)[len(rounds) // 2]
    per_core = [x["per core"] for x in rounds]
    say(f"median of {len(rounds)} rounds: ours w1 / {against} per core {median('per core'):.2f}x, "
        f"per CPU-s {median('per CPU-s'):.2f}x; w2/w1 {median('w2/w1'):.2f}x; w2 / two w1 processes "
        f"{median('w2/ceiling'):.2f} (range per core {min(per_core):.2f}-{max(per_core):.2f}x)")


def save(root, stage):
    """Writes the log to benches/results/<stage>-<date>.txt."""
    results = pathlib.Path(root) / "benches" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{stage}-{datetime.date.today().isoformat()}.txt"
    path.write_text(LOG.getvalue())
    print(f"saved {path}")
