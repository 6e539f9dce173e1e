#!/usr/bin/env python3
"""functions_run.py BINARY OUT -- ARGS...

Runs BINARY ARGS under gdb with a one-shot breakpoint on every function and
appends the names of the functions that ran to OUT, in the order they first
ran. With TERM_AFTER=S in the environment, the process gets SIGTERM S seconds
after the guest's first "probe: " line (for guests that never stop). Exits
non-zero unless the program ran to its end (killed after 10 minutes).
Used by order.sh; needs gdb and nm (binutils)."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

binary, out = sys.argv[1], sys.argv[2]
args = sys.argv[sys.argv.index("--") + 1:]
term_after = float(os.environ.get("TERM_AFTER", "0"))

by_address = {}
nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True)
for line in nm.stdout.splitlines():
    fields = line.split()
    if len(fields) == 3 and fields[1] in "tTwW":
        by_address.setdefault(int(fields[0], 16), fields[2])
start = next(a for a, n in by_address.items() if n == "_start")
addresses = sorted(by_address)

# The binary is position independent: breakpoints are set relative to
# _start once the program is loaded (starti).
# Signals (herd's vCPU kicks, the SIGTERM below) pass straight through: only
# the breakpoints stop the program.
commands = ["set pagination off", "set confirm off", "set print thread-events off",
            "handle all nostop noprint pass", "starti"]
commands += [f"tbreak *(0x{a:x} + (long)&_start - 0x{start:x})" for a in addresses]
commands += ["continue"] * (len(addresses) + 50)
with tempfile.NamedTemporaryFile("w", suffix=".gdb", delete=False) as script:
    script.write("\n".join(commands) + "\n")

try:
    gdb = subprocess.Popen(["gdb", "-q", "-batch", "-x", script.name, "--args", binary] + args,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)

    def stop_the_vm():
        time.sleep(term_after)
        # Only gdb's own child: never another herd on this machine.
        pids = subprocess.run(["pgrep", "-P", str(gdb.pid)], capture_output=True, text=True).stdout
        for pid in pids.split():
            os.kill(int(pid), signal.SIGTERM)

    # Nothing here may run for ever: a scenario that hangs is killed.
    watchdog = threading.Timer(600, gdb.kill)
    watchdog.start()
    lines = []
    stopping = False
    for line in gdb.stdout:
        lines.append(line)
        if term_after and not stopping and line.startswith("probe: "):
            stopping = True
            threading.Thread(target=stop_the_vm, daemon=True).start()
    gdb.wait()
    watchdog.cancel()
finally:
    os.unlink(script.name)
# gdb numbers the breakpoints 1.. in the order they were set.
hits = re.findall(r"Temporary breakpoint (\d+), 0x", "".join(lines))
# The program must have run to its end (gdb itself exits 1: the spare
# `continue`s fail once it has).
ended = re.search(r"\[Inferior 1 \(process \d+\) exited (normally|with code \d+)\]", "".join(lines))
# gdb sometimes loses the exit itself in a race with the exiting threads
# (its next `continue` fails, ending the script): reaching _fini is the end.
fini = next((a for a, n in by_address.items() if n == "_fini"), None)
if not ended and fini is not None and str(addresses.index(fini) + 1) in hits:
    ended = True
if not hits or not ended:
    sys.exit(f"functions_run.py: the program did not run to its end under gdb "
             f"({len(hits)} functions seen): {' '.join(args)}")
with open(out, "a") as f:
    f.writelines(by_address[addresses[int(h) - 1]] + "\n" for h in hits)
print(f"{len(hits)} functions ran: {' '.join(args)}")
