"""firesandbox's code interpreter: E2B's runCode contexts inside the guest.

  ci.py serve   the prewarmed runtime: started before the template's
                snapshot, with numpy, pandas and matplotlib loaded. It
                forks one process per context (so a context starts with
                them loaded) and answers the agent's prewarm protocol on
                fd 3, forking the relay too.
  ci.py relay   one host call: a request on stdin, the answer on stdout
                (for an execution, E2B's NDJSON events as they come).

Contexts keep their variables between executions. A relay that goes away
(the host cancelled its exec: the HTTP client disconnected) interrupts
the running cell.
"""

import array
import ast
import base64
import builtins
import io
import json
import linecache
import os
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import threading
import traceback

RUNTIME = os.path.dirname(os.path.abspath(__file__))
CONTROL = os.path.join(RUNTIME, "ci.sock")
LANGUAGES = ("python", "bash")
MAX_LINE = 4 << 20


def context_socket(cid):
    return os.path.join(RUNTIME, "ctx-%s.sock" % cid)


def send_line(sock, msg):
    sock.sendall((json.dumps(msg) + "\n").encode())


def read_line(f):
    line = f.readline(MAX_LINE)
    return json.loads(line) if line.strip() else None


# ---------------------------------------------------------------- relay

def relay(req):
    op = req.get("op")
    if op == "execute":
        return relay_execute(req)
    if op not in ("create", "list", "delete", "restart"):
        return answer({"error": "unknown op %r" % op, "status": 400})
    if op == "create":
        req["env"] = dict(os.environ)
    return answer(ask_server(req))


def answer(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()
    return 0


def ask_server(req):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(CONTROL)
    except OSError as e:
        return {"error": "the code interpreter is not running: %s" % e, "status": 503}
    with s, s.makefile("r") as f:
        send_line(s, req)
        return read_line(f) or {"error": "the code interpreter closed the connection", "status": 500}


def relay_execute(req):
    cid = req.get("context_id")
    if not cid:
        got = ask_server({"op": "default", "language": req.get("language") or "python",
                          "env": dict(os.environ), "cwd": os.getcwd()})
        if "error" in got:
            return answer(got)
        cid = got["context"]["id"]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(context_socket(cid))
    except OSError:
        return answer({"error": "Context %s not found" % cid, "status": 404})
    with s:
        send_line(s, {"code": req.get("code", ""), "env_vars": req.get("env_vars") or {}})
        out = sys.stdout.buffer
        while True:
            b = s.recv(65536)
            if not b:
                return 0
            out.write(b)
            out.flush()


# ---------------------------------------------------------------- contexts

class Emitter:
    """Sends a cell's events to its relay; a gone relay is remembered."""

    def __init__(self, conn):
        self.conn, self.lock, self.gone = conn, threading.Lock(), False

    def __call__(self, ev):
        data = (json.dumps(ev) + "\n").encode()
        with self.lock:
            if self.gone:
                return
            try:
                self.conn.sendall(data)
            except OSError:
                self.gone = True


class Stream(io.TextIOBase):
    """A cell's stdout or stderr: whole lines become events (print's text
    and its newline arrive as one), the rest at flush and at the end."""

    def __init__(self, kind, emit):
        self.kind, self.emit, self.buf = kind, emit, ""

    def write(self, s):
        self.buf += s
        if "\n" in self.buf:
            done, _, self.buf = self.buf.rpartition("\n")
            self.emit({"type": self.kind, "text": done + "\n"})
        return len(s)

    def flush(self):
        if self.buf:
            self.emit({"type": self.kind, "text": self.buf})
            self.buf = ""

    def writable(self):
        return True

    @property
    def encoding(self):
        return "utf-8"


REPRS = (("_repr_html_", "html"), ("_repr_markdown_", "markdown"), ("_repr_svg_", "svg"),
         ("_repr_png_", "png"), ("_repr_jpeg_", "jpeg"), ("_repr_latex_", "latex"),
         ("_repr_json_", "json"), ("_repr_javascript_", "javascript"))


def rich(obj):
    """The formats of a value, as IPython's display formatter finds them."""
    d = {}
    for meth, key in REPRS:
        f = getattr(obj, meth, None)
        if not callable(f):
            continue
        try:
            r = f()
        except Exception:
            continue
        if isinstance(r, tuple):
            r = r[0]
        if r is None:
            continue
        if key in ("png", "jpeg") and isinstance(r, bytes):
            r = base64.b64encode(r).decode()
        d[key] = r
    if isinstance(obj, (dict, list)) and "json" not in d:
        try:
            json.dumps(obj)
            d["json"] = obj
        except (TypeError, ValueError):
            pass
    fig = figure_png(obj)
    if fig:
        d["png"] = fig
    try:
        d["text"] = repr(obj)
    except Exception as e:
        d["text"] = "<unrepresentable %s: %s>" % (type(obj).__name__, e)
    return d


def figure_png(obj):
    mpl = sys.modules.get("matplotlib.figure")
    if mpl is None or not isinstance(obj, mpl.Figure):
        return None
    buf = io.BytesIO()
    obj.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


class PythonKernel:
    def __init__(self):
        self.ns = {"__name__": "__main__", "__builtins__": builtins}
        self.count = 0

    def run(self, code, emit):
        self.count += 1
        name = "<cell-%d>" % self.count
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        self.ns["display"] = lambda *objs: [emit(dict(rich(o), type="result", is_main_result=False)) for o in objs]
        out, err = sys.stdout, sys.stderr
        streams = Stream("stdout", emit), Stream("stderr", emit)
        sys.stdout, sys.stderr = streams
        value = None
        try:
            tree = ast.parse(code, name, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, name, "exec"), self.ns)
            if last is not None:
                value = eval(compile(last, name, "eval"), self.ns)
        except BaseException as e:  # SystemExit and KeyboardInterrupt too: the context lives on
            for st in streams:
                st.flush()
            self.flush_figures(emit)
            emit({"type": "error", "name": type(e).__name__, "value": str(e), "traceback": format_tb(e)})
            return
        finally:
            for st in streams:
                st.flush()
            sys.stdout, sys.stderr = out, err
        self.flush_figures(emit)
        if value is not None:
            self.ns["_"] = value
            emit(dict(rich(value), type="result", is_main_result=True))

    def flush_figures(self, emit):
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        for num in plt.get_fignums():
            fig = plt.figure(num)
            try:
                emit({"type": "result", "png": figure_png(fig), "text": repr(fig), "is_main_result": False})
            except Exception as e:
                emit({"type": "stderr", "text": "could not render figure %d: %s\n" % (num, e)})
        plt.close("all")


def format_tb(e):
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next  # the interpreter's own frames are not the user's
    return "".join(traceback.format_exception(type(e), e, tb))


class BashKernel:
    """A bash process kept between cells: variables, functions and the
    working directory persist."""

    def __init__(self, cwd):
        self.p = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                                  start_new_session=True)
        self.count = 0

    def run(self, code, emit):
        self.count += 1
        mark = "__E2B_%s__" % secrets.token_hex(8)
        script = "%s\nprintf '%s %%s\\n' \"$?\"\nprintf '%s\\n' >&2\n" % (code, mark, mark)
        self.p.stdin.write(script.encode())
        self.p.stdin.flush()
        sel = selectors.DefaultSelector()
        bufs = {}
        for kind, f in (("stdout", self.p.stdout), ("stderr", self.p.stderr)):
            sel.register(f, selectors.EVENT_READ, kind)
            bufs[kind] = b""
        status, open_ = None, 2
        try:
            while open_:
                for key, _ in sel.select():
                    kind = key.data
                    chunk = os.read(key.fileobj.fileno(), 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        open_ -= 1
                        continue
                    bufs[kind] += chunk
                    done, text, bufs[kind], rest = split_mark(bufs[kind], mark.encode())
                    if text:
                        emit({"type": kind, "text": text.decode(errors="replace")})
                    if done:
                        sel.unregister(key.fileobj)
                        open_ -= 1
                        if kind == "stdout":
                            status = int(rest.strip() or b"0")
        except KeyboardInterrupt:
            os.killpg(self.p.pid, signal.SIGINT)
            emit({"type": "error", "name": "KeyboardInterrupt", "value": "", "traceback": ""})
            return
        if status is None:
            emit({"type": "error", "name": "BashExited", "value": "bash exited", "traceback": ""})
        elif status != 0:
            emit({"type": "error", "name": "CommandExitError", "value": "exit status %d" % status, "traceback": ""})


def split_mark(buf, mark):
    """Splits buf at the end marker: (found, text before it, kept, what
    follows it on its line). All text is released as it comes but a tail
    that may be the start of a marker split across reads; the marker may
    follow text on the same line (output without a final newline)."""
    i = buf.find(mark)
    if i >= 0:
        end = buf.find(b"\n", i + len(mark))
        if end < 0:
            return False, buf[:i], buf[i:], b""
        return True, buf[:i], b"", buf[i + len(mark):end]
    keep = 0
    for n in range(min(len(mark) - 1, len(buf)), 0, -1):
        if mark.startswith(buf[-n:]):
            keep = n
            break
    return False, buf[:len(buf) - keep], buf[len(buf) - keep:], b""


def die_with_parent():
    """A context without its server is unreachable: it goes too."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def hang_up(conn):
    """Ends a connection for its peer now: a plain close waits for every
    reference (the watcher's recv, a makefile) to go."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


def close_other_fds(*keep):
    """A forked child keeps only stdio and the descriptors it needs."""
    last = 2
    for fd in sorted(keep):
        os.closerange(last + 1, fd)
        last = fd
    os.closerange(last + 1, os.sysconf("SC_OPEN_MAX"))


def serve_context(listener, language, cwd, env):
    """The life of one context process: one execution at a time."""
    os.setsid()
    die_with_parent()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    import random
    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()
    kernel = BashKernel(cwd) if language == "bash" else PythonKernel()
    main = threading.main_thread().ident
    while True:
        try:
            conn, _ = listener.accept()
        except KeyboardInterrupt:
            continue
        state = {"running": True}
        lock = threading.Lock()

        def watch(conn=conn, state=state, lock=lock):
            try:
                while conn.recv(1):
                    pass
            except OSError:
                pass
            with lock:
                if state["running"]:
                    signal.pthread_kill(main, signal.SIGINT)

        emit = Emitter(conn)
        try:
            with conn.makefile("r") as f:
                req = json.loads(f.readline(MAX_LINE) or "{}")
            threading.Thread(target=watch, daemon=True).start()
            saved = {}
            for k, v in (req.get("env_vars") or {}).items():
                saved[k] = os.environ.get(k)
                os.environ[k] = str(v)
            try:
                kernel.run(req.get("code", ""), emit)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            with lock:
                state["running"] = False
            emit({"type": "number_of_executions", "execution_count": kernel.count})
            emit({"type": "end_of_execution"})
        except KeyboardInterrupt:
            with lock:
                state["running"] = False
        except Exception as e:
            with lock:
                state["running"] = False
            emit({"type": "error", "name": type(e).__name__, "value": str(e), "traceback": format_tb(e)})
            emit({"type": "end_of_execution"})
        finally:
            hang_up(conn)


# ---------------------------------------------------------------- server

class Server:
    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.contexts = {}  # id -> dict(id, language, cwd, pid, pidfd, env)
        self.defaults = {}  # language -> context id
        self.relay = None   # (pid, pidfd) of the forked relay, one at a time
        try:
            self.ctl = socket.socket(fileno=3)
        except OSError:
            self.ctl = None  # started by hand, not as a prewarmed runtime
        if os.path.exists(CONTROL):
            os.unlink(CONTROL)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(CONTROL)
        os.chmod(CONTROL, 0o600)
        self.listener.listen(64)
        self.sel.register(self.listener, selectors.EVENT_READ, self.on_client)
        if self.ctl is not None:
            self.sel.register(self.ctl, selectors.EVENT_READ, self.on_agent)

    def run(self):
        if self.ctl is not None:
            self.ctl.send(json.dumps({"ready": True}).encode())
        while True:
            for key, _ in self.sel.select():
                key.data(key.fileobj)

    # The agent's prewarm protocol: fork the relay, report its end.
    def on_agent(self, ctl):
        size = array.array("i").itemsize
        msg, anc, _, _ = ctl.recvmsg(65536, socket.CMSG_SPACE(4 * size))
        if not msg:
            os._exit(0)
        fds = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(data[: len(data) - len(data) % size])
                fds.extend(a)
        try:
            req = json.loads(msg)
            argv = req["argv"]
        except (ValueError, KeyError, TypeError):
            req, argv = None, []
        ok = (len(fds) == 4 and len(argv) == 3 and os.path.basename(argv[0]) in ("python3", "python")
              and os.path.abspath(argv[1]) == os.path.abspath(__file__) and argv[2] == "relay"
              and self.relay is None)
        if not ok:
            for fd in fds:
                os.close(fd)
            ctl.send(json.dumps({"error": "unsupported command"}).encode())
            return
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                code = self.relay_child(req, fds)
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.relay = (pid, pidfd)
        self.sel.register(pidfd, selectors.EVENT_READ, self.on_relay_exit)
        ctl.send(json.dumps({"pid": pid}).encode())

    def relay_child(self, req, fds):
        stdin, stdout, stderr, gate = fds
        for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
            os.dup2(fd, target)
        for fd in (stdin, stdout, stderr):
            if fd > 2:
                os.close(fd)
        self.ctl.close()
        self.listener.close()
        close_other_fds(gate)
        os.setpgid(0, 0)
        os.read(gate, 1)  # the agent has moved us into the exec's cgroup
        os.close(gate)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(e.split("=", 1) for e in req["env"])
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r"))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w"), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w"), write_through=True)
        return run_relay()

    def on_relay_exit(self, pidfd):
        pid, _ = self.relay
        self.sel.unregister(pidfd)
        os.close(pidfd)
        self.relay = None
        _, status, ru = os.wait4(pid, 0)
        self.ctl.send(json.dumps({"pid": pid, "status": status, "utime_us": int(ru.ru_utime * 1e6),
                                  "stime_us": int(ru.ru_stime * 1e6), "maxrss_kb": ru.ru_maxrss}).encode())

    # Relays' requests.
    def on_client(self, listener):
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            with conn.makefile("r") as f:
                req = read_line(f)
            send_line(conn, self.handle(req or {}))
        except (OSError, ValueError) as e:
            try:
                send_line(conn, {"error": str(e), "status": 400})
            except OSError:
                pass
        finally:
            hang_up(conn)

    def handle(self, req):
        op = req.get("op")
        if op in ("create", "default"):
            lang = req.get("language") or "python"
            if lang not in LANGUAGES:
                return {"error": "language %r: this code interpreter has %s" % (lang, ", ".join(LANGUAGES)), "status": 400}
            if op == "default" and self.defaults.get(lang) in self.contexts:
                return {"context": self.public(self.contexts[self.defaults[lang]])}
            c = self.start(secrets.token_hex(8), lang, req.get("cwd") or os.getcwd(), req.get("env") or {})
            if op == "default":
                self.defaults[lang] = c["id"]
            return {"context": self.public(c)}
        if op == "list":
            return {"contexts": [self.public(c) for c in self.contexts.values()]}
        c = self.contexts.get(req.get("context_id") or "")
        if c is None:
            return {"error": "Context %s not found" % req.get("context_id"), "status": 404}
        self.stop(c)
        if op == "restart":
            self.start(c["id"], c["language"], c["cwd"], c["env"])
        elif op != "delete":
            return {"error": "unknown op %r" % op, "status": 400}
        return {}

    @staticmethod
    def public(c):
        return {"id": c["id"], "language": c["language"], "cwd": c["cwd"]}

    def start(self, cid, language, cwd, env):
        path = context_socket(cid)
        if os.path.exists(path):
            os.unlink(path)
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(path)
        os.chmod(path, 0o600)
        lst.listen(8)
        if not os.path.isdir(cwd):
            cwd = os.environ.get("HOME") or "/"
        pid = os.fork()
        if pid == 0:
            try:
                if self.ctl is not None:
                    self.ctl.close()
                self.listener.close()
                close_other_fds(lst.fileno())
                serve_context(lst, language, cwd, env)
            finally:
                os._exit(0)
        lst.close()
        pidfd = os.pidfd_open(pid)
        c = {"id": cid, "language": language, "cwd": cwd, "pid": pid, "pidfd": pidfd, "env": env}
        self.contexts[cid] = c
        self.sel.register(pidfd, selectors.EVENT_READ, lambda fd, cid=cid: self.on_context_exit(cid))
        return c

    def stop(self, c):
        try:
            os.killpg(c["pid"], signal.SIGKILL)
        except OSError:
            pass
        self.reap(c)

    def on_context_exit(self, cid):
        c = self.contexts.get(cid)
        if c is not None:
            self.reap(c)

    def reap(self, c):
        try:
            self.sel.unregister(c["pidfd"])
        except (KeyError, ValueError):
            pass
        os.close(c["pidfd"])
        try:
            os.waitpid(c["pid"], 0)
        except ChildProcessError:
            pass
        self.contexts.pop(c["id"], None)
        try:
            os.unlink(context_socket(c["id"]))
        except OSError:
            pass


def run_relay():
    try:
        req = json.loads(sys.stdin.read() or "{}")
    except ValueError as e:
        return answer({"error": "bad request: %s" % e, "status": 400})
    try:
        return relay(req)
    except BrokenPipeError:
        return 0


def serve():
    os.umask(0o077)
    os.environ.setdefault("MPLBACKEND", "Agg")
    # Loaded once, shared copy-on-write by every context (the image has
    # them all; a host running this for tests may not).
    for mod in ("numpy", "pandas", "matplotlib", "matplotlib.pyplot"):
        try:
            __import__(mod)
        except ImportError:
            pass
    import gc
    gc.collect()
    gc.freeze()
    Server().run()


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "serve":
        serve()
    elif mode == "relay":
        sys.exit(run_relay())
    else:
        sys.exit("usage: ci.py serve|relay")
