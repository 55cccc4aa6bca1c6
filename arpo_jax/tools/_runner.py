"""Runs one piece of model-written Python inside the sandbox.

Executed as ``python -IS -c <this source> <settings>`` (settings: a Python dict literal)
with ``<length>\n<code>`` on stdin; stdin then stays open as a lifeline (EOF: the host died,
so everything is killed). Never imported by arpo_jax; standard library only, and few modules
of it, since interpreter start-up is most of a call's cost. In order: read the code, leave
the host's network (fallback, as root), drop to the per-call uid when started as root (no
capability survives; RLIMIT_NPROC binds), set resource limits, confine the process with
Landlock (fallback), add the interpreter's site-packages, then run the code as ``python -c``
would, printing a trailing bare expression. A confinement step that fails exits before model
code runs (71 Landlock, 72 namespaces, 73 no_new_privs).
"""

import _ast
import _thread
import os
import resource
import sys


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


# Landlock (Linux >= 5.13): kernel-enforced, unprivileged, inherited by every child; it holds
# whatever the code does (dir_fd opens, exec, symlinks), unlike a Python audit hook.
_LL_FS_RO = 1 | 4 | 8  # EXECUTE | READ_FILE | READ_DIR
_LL_FS_FILE = 1 | 2 | 4 | (1 << 14) | (1 << 15)  # rights a rule on a regular file may carry
_LL_FS_BITS = {1: 13, 2: 14, 3: 15, 4: 15, 5: 16}  # ABI -> number of filesystem access bits


def _landlock(cfg):
    """Restricts this process and its children: reads under ``read_roots``, writes only under
    ``write_roots``, no TCP (ABI 4), no abstract Unix sockets or signals outside (ABI 6)."""
    import ctypes

    libc = _libc()
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, VERSION)
    if abi < 1:
        os._exit(71)  # asked for Landlock and it is not there: never run the code unconfined
    fs_all = (1 << _LL_FS_BITS.get(abi, 16)) - 1

    class Attr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class Beneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

    attr = Attr(fs_all, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        os._exit(71)
    rules = [(p, _LL_FS_RO) for p in cfg["read_roots"]] + [(p, fs_all) for p in cfg["write_roots"]]
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        if not os.path.isdir(path):
            rights &= _LL_FS_FILE
        rule = Beneath(rights & fs_all, fd)
        ok = libc.syscall(445, ruleset, 1, ctypes.byref(rule), 0)
        os.close(fd)
        if ok != 0:
            os._exit(71)
    if libc.syscall(446, ruleset, 0) != 0:
        os._exit(71)
    os.close(ruleset)


def _lifeline(fd, kill_all, cleanup_dir):
    """Blocks on the host's end of stdin; EOF means the host is gone: take everything down."""
    try:
        while os.read(fd, 1024):
            pass
    except OSError:
        pass
    if kill_all:  # our per-call uid: every process of it is ours
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no new forks from here on
            os.kill(-1, 9)
        except (OSError, ValueError):
            pass
    if cleanup_dir:  # the fallback's private temporary directory (the host cannot remove it now)
        import shutil

        shutil.rmtree(cleanup_dir, ignore_errors=True)
    os._exit(137)


def _mount_private_tmp(path, size, uid):
    """Root only: a new mount namespace in which ``path`` (the call's directory, the cwd) is a
    tmpfs of ``size`` bytes owned by ``uid``: the kernel caps the call's disk, unlinked-but-open
    files included, however fast they are written. Any step refused: exit before the code runs."""
    libc = _libc()
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        os._exit(72)
    if libc.mount(b"none", b"/", None, 16384 | 262144, None) != 0:  # MS_REC | MS_PRIVATE: nothing leaks out
        os._exit(72)
    owner = 0 if uid is None else uid
    opts = f"size={size},mode=0700,uid={owner},gid={owner}".encode()
    if libc.mount(b"tmpfs", path.encode(), b"tmpfs", 2 | 4, opts) != 0:  # MS_NOSUID | MS_NODEV
        os._exit(72)
    os.chdir(path)  # the cwd still named the directory under the mount


def _prepare(cfg):
    stdin = sys.stdin.buffer
    size = int(stdin.readline())
    code = stdin.read(size).decode("utf-8", "replace")
    life = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if cfg.get("unshare_net") and _libc().unshare(0x40000000 | 0x08000000 | 0x04000000) != 0:
        os._exit(72)  # NEWNET | NEWIPC | NEWUTS asked for and refused: never run the code on the host's network
    uid = cfg.get("uid")
    if cfg.get("tmp_dir"):
        _mount_private_tmp(cfg["tmp_dir"], cfg["tmp_bytes"], uid)
    if uid is not None and os.getuid() == 0:  # no capability survives this
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if cfg.get("no_new_privs"):
        if _libc().prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            os._exit(73)
    _setlimit(resource.RLIMIT_CORE, 0)
    _setlimit(resource.RLIMIT_CPU, cfg["cpu_seconds"], cfg["cpu_seconds"] + 1)
    _setlimit(resource.RLIMIT_AS, cfg["memory_bytes"])
    _setlimit(resource.RLIMIT_FSIZE, cfg["max_file_bytes"])
    _setlimit(resource.RLIMIT_NOFILE, cfg["max_open_files"])
    _setlimit(resource.RLIMIT_NPROC, cfg["max_processes"])
    if cfg.get("landlock"):
        _landlock(cfg)
    if cfg.get("lifeline"):
        _thread.start_new_thread(_lifeline, (life, uid is not None, cfg.get("cleanup_dir")))
    else:
        os.close(life)
    if cfg.get("site_dirs") is not None:
        _add_site_dirs(cfg["site_dirs"])
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
