"""A process that leaves its instance's process group and, told to stop, starts one more — as the bootstrap's
pip may start a build step at the moment its VM or box goes. Neither is then in the instance's process
group nor a child of its leader; a fake that deletes the instance must still end both."""

ESCAPER = """\
import signal, subprocess, sys, time
def on_term(*_):
    subprocess.Popen(["sleep", "600"], start_new_session=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("escaper ready", flush=True)
time.sleep(600)
"""
ESCAPER_LINE = f"setsid python3 -c '{ESCAPER}' &"  # one line of a start script (bash)
