"""Runs one piece of model-written Python inside the sandbox.

Executed as ``python -IS -c <this source> <settings>`` (settings: a Python dict literal)
with ``<length>\n<code>`` on stdin; stdin then stays open as a lifeline (EOF: the host died,
so everything is killed). Never imported by arpo_jax; standard library only, and few modules
of it, since interpreter start-up is most of a call's cost. In order: read the code, drop to
the per-call uid when started as root (so RLIMIT_NPROC binds), set resource limits, add the
interpreter's site-packages, install the fallback's audit hook if asked, then run the code
as ``python -c`` would, printing a trailing bare expression.
"""

import _ast
import _thread
import os
import resource
import sys


_DYING = []  # non-empty once the host is gone


def _setlimit(res, soft, hard=None):
    hard = soft if hard is None else hard
    _, cur_hard = resource.getrlimit(res)
    if cur_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur_hard), min(hard, cur_hard)
    try:
        resource.setrlimit(res, (soft, hard))
    except (ValueError, OSError):
        pass


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _under(path, roots):
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _only_read_search():
    """Leaves CAP_DAC_READ_SEARCH as the only capability (fallback under root, when the
    interpreter lives in a root-only directory); reads stay guarded by the audit hook."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    data[0].effective = data[0].permitted = 1 << 2  # CAP_DAC_READ_SEARCH
    if _libc().capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        os._exit(70)  # never run model code with leftover capabilities


def _audit_hook(cfg):
    """Best-effort guard for the fallback (no namespaces): files, network, exec, signals."""
    read_roots = list(cfg["read_roots"])
    write_roots = list(cfg["write_roots"])
    denied = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers")
    host_pid = cfg.get("host_pid", -1)
    blocked = {
        "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
        "os.forkpty", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "os.chroot",
        "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
        "os.setuid", "os.setreuid", "os.setresuid",
    }
    realpath = os.path.realpath
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if not isinstance(path, str):
                return
            p = realpath(path)
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags
            )
            if _under(p, denied) or not _under(p, write_roots if writing else read_roots):
                raise PermissionError(13, "Permission denied (sandbox)", path)
        elif event in ("os.listdir", "os.scandir") and isinstance(args[0], (str, bytes)):
            p = realpath(os.fsdecode(args[0]))
            if _under(p, denied) or not _under(p, read_roots):
                raise PermissionError(13, "Permission denied (sandbox)", args[0])
        elif event in blocked:
            raise PermissionError(1, f"{event} is not allowed in the sandbox")
        elif event in ("os.kill", "os.killpg", "signal.pthread_kill"):
            pid = args[0]
            if pid == -1 and _DYING:
                return
            if isinstance(pid, int) and (pid <= 1 or pid == host_pid):
                raise PermissionError(1, "signalling processes outside the sandbox is not allowed")

    return hook


def _lifeline(fd, kill_all, cleanup_dir):
    """Blocks on the host's end of stdin; EOF means the host is gone: take everything down."""
    try:
        while os.read(fd, 1024):
            pass
    except OSError:
        pass
    if kill_all:  # our per-call uid: every process of it is ours
        _DYING.append(True)  # lets the audit hook pass this one kill(-1)
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no new forks from here on
            os.kill(-1, 9)
        except (OSError, ValueError):
            pass
    if cleanup_dir:  # the fallback's private temporary directory (the host cannot remove it now)
        import shutil

        shutil.rmtree(cleanup_dir, ignore_errors=True)
    os._exit(137)


def _prepare(cfg):
    stdin = sys.stdin.buffer
    size = int(stdin.readline())
    code = stdin.read(size).decode("utf-8", "replace")
    life = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if cfg.get("unshare_net") and os.getuid() == 0:
        try:
            _libc().unshare(0x40000000 | 0x08000000 | 0x04000000)  # NEWNET | NEWIPC | NEWUTS
        except Exception:
            pass
    uid = cfg.get("uid")
    if uid is not None and os.getuid() == 0:
        keep = cfg.get("keep_read_search")
        if keep:
            _libc().prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS: keep permitted caps across setuid
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if keep:
            _only_read_search()
    if cfg.get("no_new_privs"):
        try:
            _libc().prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        except Exception:
            pass
    _setlimit(resource.RLIMIT_CORE, 0)
    _setlimit(resource.RLIMIT_CPU, cfg["cpu_seconds"], cfg["cpu_seconds"] + 1)
    _setlimit(resource.RLIMIT_AS, cfg["memory_bytes"])
    _setlimit(resource.RLIMIT_FSIZE, cfg["max_file_bytes"])
    _setlimit(resource.RLIMIT_NOFILE, cfg["max_open_files"])
    _setlimit(resource.RLIMIT_NPROC, cfg["max_processes"])
    if cfg.get("lifeline"):
        _thread.start_new_thread(_lifeline, (life, uid is not None, cfg.get("cleanup_dir")))
    else:
        os.close(life)
    if cfg.get("site_dirs") is not None:
        _add_site_dirs(cfg["site_dirs"])
    if cfg.get("audit"):
        sys.addaudithook(_audit_hook(cfg))
    return code


def _add_site_dirs(dirs):
    """What ``site`` does at start-up (we run with -S), minus hooks useless in a sandbox."""
    import site

    known = set(sys.path)
    for d in dirs:
        if d not in known:
            sys.path.append(d)
            known.add(d)
        try:
            names = sorted(n for n in os.listdir(d) if n.endswith(".pth"))
        except OSError:
            continue
        for name in names:
            if not name.startswith(("__editable__", "distutils-precedence")):
                site.addpackage(d, name, known)
    site.setquit()
    site.sethelper()


def _print_error(etype, value, tb, user_globals, code):
    while tb is not None and tb.tb_frame.f_globals is not user_globals:
        tb = tb.tb_next  # hide the runner's own frames
    try:
        import linecache  # imported only now: these cost ~15 ms of start-up
        import traceback

        linecache.cache["<string>"] = (len(code), None, code.splitlines(True), "<string>")
        traceback.print_exception(etype, value, tb)
    except BaseException:  # e.g. no file descriptors left to import with
        print(f"{etype.__name__}: {value}", file=sys.stderr)


def main():
    cfg = eval(sys.argv[1], {"__builtins__": {}})  # a dict literal written by the host
    code = _prepare(cfg)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(encoding="utf-8", errors="backslashreplace")
        except Exception:
            pass
    module = type(sys)("__main__")  # fresh globals, importable as __main__ (pickle)
    module.__builtins__ = __builtins__
    sys.modules["__main__"] = module
    env = module.__dict__
    sys.argv = ["-c"]
    sys.path.insert(0, "")  # like `python -c`: the working directory (private /tmp)
    try:
        tree = compile(code, "<string>", "exec", _ast.PyCF_ONLY_AST)
        last = None
        if cfg.get("print_last") and tree.body and isinstance(tree.body[-1], _ast.Expr):
            last = _ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<string>", "exec"), env)
        if last is not None:
            value = eval(compile(last, "<string>", "eval"), env)
            if value is not None:
                print(value)
    except SystemExit:
        raise
    except BaseException:
        _print_error(*sys.exc_info(), env, code)
        sys.stdout.flush()
        sys.exit(1)


if __name__ == "__main__":
    main()
