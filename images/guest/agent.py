"""vfnic guest agent: carries out the host's requests over a virtio-serial port.

Started by the guest's init (or the vfnic-agent systemd unit). It opens the
port named `vfnic.agent`, says hello, and then serves requests until the
guest powers off. Each request runs in its own thread, so the host may keep
a server running in the guest while it runs a client next to it.

Wire format, both directions: a frame is one line of JSON (the header),
followed by `header["size"]` bytes of payload::

    host -> guest                                     guest -> host
    {"op":"run","id":N,"argv":[..],"timeout":S}+stdin  {"op":"result","id":N,"rc":..,
                                                          "stdout":LEN,"stderr":LEN,...}+out+err
    {"op":"put","id":N,"path":P,"mode":M}+data         {"op":"ok","id":N}
    {"op":"get","id":N,"path":P}                       {"op":"data","id":N}+data
    {"op":"poweroff","id":N}                           {"op":"ok","id":N}, then power off
                                                      {"op":"error","id":N,"message":..}
                                                      {"op":"hello",...} once at start

The host loads this file as a module to use the same framing functions, so
the format is defined once. It needs only what python3-minimal ships.
"""
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time

PORT_NAME = "vfnic.agent"
PROTOCOL_VERSION = 1
#: Output kept per stream; a command printing more is truncated, not fatal.
OUTPUT_LIMIT = 64 << 20
#: After a timeout kill, how long to keep draining pipes held open by
#: processes that escaped the process group.
DRAIN_SECONDS = 2.0


# --- framing (shared with the host) -------------------------------------------

def encode_frame(header, payload=b""):
    header = dict(header, size=len(payload))
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload


def read_frame(stream):
    """Read one frame from a binary stream with readline()/read(); None at EOF."""
    line = stream.readline()
    if not line:
        return None
    header = json.loads(line)
    size = header.get("size", 0)
    payload = stream.read(size) if size else b""
    if len(payload) != size:
        return None
    return header, payload


# --- running commands ---------------------------------------------------------

class Capture:
    """Reads a child's stdout and stderr until both close or a deadline."""

    def __init__(self, proc):
        self.selector = selectors.DefaultSelector()
        self.chunks = {proc.stdout: [], proc.stderr: []}
        self.sizes = {proc.stdout: 0, proc.stderr: 0}
        self.truncated = False
        for pipe in self.chunks:
            os.set_blocking(pipe.fileno(), False)
            self.selector.register(pipe, selectors.EVENT_READ)

    def pump(self, deadline):
        """Read until both pipes reach EOF (True) or `deadline` passes (False)."""
        while self.selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in self.selector.select(remaining):
                self._read(key.fileobj)
        return True

    def _read(self, pipe):
        data = os.read(pipe.fileno(), 1 << 16)
        if not data:
            self.selector.unregister(pipe)
            return
        keep = max(0, OUTPUT_LIMIT - self.sizes[pipe])
        if len(data) > keep:
            self.truncated = True
            data = data[:keep]
        self.chunks[pipe].append(data)
        self.sizes[pipe] += len(data)

    def output(self, pipe):
        return b"".join(self.chunks[pipe])

    def close(self):
        for pipe in self.chunks:
            pipe.close()
        self.selector.close()


def feed_stdin(proc, data):
    try:
        proc.stdin.write(data)
    except BrokenPipeError:
        pass
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass


def run_command(argv, timeout, stdin, env):
    """Run `argv`; kill its whole process group at `timeout` seconds."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, env=env)
    except OSError as error:
        return {"rc": 127, "timed_out": False, "truncated": False, "duration": 0.0}, \
            b"", f"vfnic-agent: cannot run {argv[0]}: {error}\n".encode()
    threading.Thread(target=feed_stdin, args=(proc, stdin), daemon=True).start()
    capture = Capture(proc)
    finished = capture.pump(started + timeout)
    if finished:
        finished = wait_for_exit(proc, started + timeout)
    if not finished:
        kill_group(proc)
        capture.pump(time.monotonic() + DRAIN_SECONDS)
        proc.wait()
    capture.close()
    status = {"rc": proc.returncode, "timed_out": not finished, "truncated": capture.truncated,
              "duration": round(time.monotonic() - started, 6)}
    return status, capture.output(proc.stdout), capture.output(proc.stderr)


def wait_for_exit(proc, deadline):
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        return False


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- requests -----------------------------------------------------------------

def handle_run(request, payload):
    argv = request.get("argv") or ["/bin/sh", "-c", request["shell"]]
    env = dict(os.environ, **request.get("env", {}))
    status, out, err = run_command(argv, float(request.get("timeout", 60)), payload, env)
    return dict(status, op="result", stdout=len(out), stderr=len(err)), out + err


def handle_put(request, payload):
    path = request["path"]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.vfnic-tmp"
    with open(temporary, "wb") as f:
        f.write(payload)
        os.fchmod(f.fileno(), int(request.get("mode", 0o644)))
    os.rename(temporary, path)
    return {"op": "ok"}, b""


def handle_get(request, _payload):
    with open(request["path"], "rb") as f:
        return {"op": "data"}, f.read()


def power_off():
    """End the guest now. An emergency restart (sysrq b), which QEMU's
    -no-reboot turns into exiting, rather than a power-off: that would run
    every driver's shutdown hook, and hfi1's (6.12, port up) hangs forever.
    The root disk is a discarded snapshot, so nothing is lost but the sync."""
    os.sync()
    with open("/proc/sysrq-trigger", "w") as trigger:
        trigger.write("b")


class Agent:
    HANDLERS = {"run": handle_run, "put": handle_put, "get": handle_get}

    def __init__(self, fd):
        self.fd = fd
        self.reader = os.fdopen(fd, "rb", closefd=False)
        self.write_lock = threading.Lock()

    def send(self, header, payload=b""):
        frame = memoryview(encode_frame(header, payload))
        with self.write_lock:
            while frame:
                frame = frame[os.write(self.fd, frame):]

    def serve(self):
        self.send({"op": "hello", "version": PROTOCOL_VERSION, "kernel": os.uname().release,
                   "uptime": uptime()})
        while True:
            frame = read_frame(self.reader)
            if frame is None:
                return
            header, payload = frame
            if header.get("op") == "poweroff":
                self.send({"op": "ok", "id": header.get("id")})
                power_off()
                return
            threading.Thread(target=self.respond, args=(header, payload), daemon=True).start()

    def respond(self, request, payload):
        handler = self.HANDLERS.get(request.get("op"))
        try:
            if handler is None:
                raise ValueError(f"unknown request {request.get('op')!r}")
            header, data = handler(request, payload)
        except Exception as error:  # reported to the host, which raises it there
            header, data = {"op": "error", "message": f"{type(error).__name__}: {error}"}, b""
        self.send(dict(header, id=request.get("id")), data)


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def virtio_port_entries():
    try:
        return sorted(os.listdir("/sys/class/virtio-ports"))
    except FileNotFoundError:
        return []


def find_port(timeout=60.0):
    """The /dev node of the virtio-serial port named PORT_NAME. The port
    appears when virtio_console binds, which may be just after init starts."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in virtio_port_entries():
            with open(f"/sys/class/virtio-ports/{entry}/name") as f:
                if f.read().strip() == PORT_NAME:
                    return f"/dev/{entry}"
        if time.monotonic() > deadline:
            raise SystemExit(f"vfnic-agent: no virtio-serial port named {PORT_NAME}")
        time.sleep(0.05)


def main():
    port = find_port()
    fd = os.open(port, os.O_RDWR)
    print(f"vfnic-agent: serving on {port} at {uptime():.2f} s", file=sys.stderr, flush=True)
    Agent(fd).serve()


if __name__ == "__main__":
    main()
