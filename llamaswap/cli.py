"""Entry point: upstream's flags, the startup sequence, signals and exit codes.

Exit codes as upstream: 0 for -version, -h and a clean signal shutdown; 1 for a missing
-config, a TLS flag mismatch, a config that does not load, an App that cannot be built and a
listen error; 2 for a command line the flag parser rejects.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

import llamaswap
from llamaswap import goflags, lazy

PROGRAM = "llama-swap"
SHUTDOWN_TIMEOUT = 30.0  # upstream's bound on draining in-flight requests

FLAGS = [
    goflags.Flag("config", "path to config file"),
    goflags.Flag("config-dir", "directory of *.yml/*.yaml config files (additive to -config)"),
    goflags.Flag("listen", "listen address (default :8080 or :8443 for TLS)"),
    goflags.Flag("tls-cert-file", "TLS certificate file"),
    goflags.Flag("tls-key-file", "TLS key file"),
    goflags.Flag("version", "show version and exit", is_bool=True),
    goflags.Flag("watch-config", "reload config on file change", is_bool=True),
    goflags.Flag("demo", "run on a built-in demo config with demo models (no -config needed;\n"
                 "listens on 127.0.0.1:8080 unless -listen is given)", is_bool=True),
    goflags.Flag("models-dir", "serve every *.gguf in this directory (recursively) as a model,\n"
                 "with or without -config (the config's models win)"),
    goflags.Flag("models-dir-args", "arguments added to llama-server's command line for the\n"
                 "-models-dir models (e.g. \"-ngl 99 -c 8192\")"),
    goflags.Flag("llama-server", "llama-server to run for the -models-dir models\n"
                 "(default: llama-server on PATH)"),
]


class AppHolder:
    """What the HTTP server reads the current App from; a reload swaps `app` atomically."""

    def __init__(self, app):
        self.app = app


def _err(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def version_line() -> str:
    return f"version: {llamaswap.__version__} ({llamaswap.COMMIT}), built at {llamaswap.BUILD_DATE}"


def is_loopback_listen(listen: str) -> bool:
    """True when `listen` ("host:port") only accepts connections from this machine."""
    host = listen.rpartition(":")[0].strip("[]") if ":" in listen else listen
    # the usual answers without importing ipaddress (urllib.parse imports it at once in some
    # Python releases, lazily in others)
    if host.lower() in ("localhost", "127.0.0.1", "::1"):
        return True
    if host in ("", "0.0.0.0", "::"):
        return False
    import ipaddress
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def network_warning(listen: str, api_keys_set: bool) -> str | None:
    if is_loopback_listen(listen):
        return None
    keys = ("apiKeys are set, so requests need one of the keys" if api_keys_set else
            "apiKeys are NOT set, so anyone who can reach it can use and unload every model")
    return (f"WARNING: listening on {listen}: the API is reachable from the network; {keys}. "
            "Use -listen 127.0.0.1:PORT to keep it local.")


def main(argv: list[str] | None = None) -> int:
    lazy.defer("ssl")  # http.client imports it; only TLS (serving, https backends) needs it
    lazy.defer("sqlite3")  # 1.5 MB: the activity store opens it with the first request
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo-backend"]:  # hidden: lets -demo start its backends from the .pyz
        from llamaswap.demo.backend import main as backend_main
        return backend_main(argv[1:])
    try:
        opts, _positional = goflags.parse(FLAGS, argv)
    except goflags.HelpRequested:
        sys.stdout.write(goflags.usage(PROGRAM, FLAGS))
        return 0
    except goflags.FlagError as e:
        _err(str(e))
        sys.stderr.write(goflags.usage(PROGRAM, FLAGS))
        return 2

    if opts["version"]:
        print(version_line())
        return 0
    demo = bool(opts["demo"])
    if not (opts["config"] or opts["config-dir"] or opts["models-dir"] or demo):
        _err("at least one of -config or -config-dir must be provided")
        return 1
    cert, key = opts["tls-cert-file"], opts["tls-key-file"]
    if bool(cert) != bool(key):
        _err("both -tls-cert-file and -tls-key-file must be provided for TLS")
        return 1
    use_tls = bool(cert)
    listen = opts["listen"] or ("127.0.0.1:8080" if demo else ":8443" if use_tls else ":8080")
    try:
        return run(opts, listen, demo, use_tls)
    except KeyboardInterrupt:  # Ctrl-C while loading the config, before signals are ours
        return 130


def config_source(opts, demo: bool):
    """(load(previous=None) -> Config, snapshot() of what else -watch-config watches, or None);
    ``previous`` is the config in service when reloading."""
    from llamaswap.config import load_config_sources, load_config_text
    if demo:
        from llamaswap.demo.config import demo_config_text
        for flag in ("config", "config-dir", "models-dir"):
            if opts[flag]:
                _err(f"-demo: ignoring -{flag} {opts[flag]}, running on the built-in demo config")
        return (lambda previous=None: load_config_text(demo_config_text(), path="<demo>")), None
    path, directory = (os.path.abspath(opts[f]) if opts[f] else None for f in ("config", "config-dir"))
    listing = None
    if directory:
        from llamaswap.ops.watcher import take_dir_snapshot
        listing = lambda: take_dir_snapshot(directory)  # noqa: E731 (-config-dir's files)
    if not opts["models-dir"]:
        return (lambda previous=None: load_config_sources(path, directory, previous=previous)), listing
    from llamaswap.config import models_dir
    folder = models_dir.ModelsDir(opts["models-dir"], llama_server=opts["llama-server"],
                                  args=opts["models-dir-args"])
    snapshot = folder.snapshot if listing is None else (lambda: (folder.snapshot(), listing()))
    return (lambda previous=None: models_dir.load(path, folder, directory, previous)), snapshot


def run(opts, listen: str, demo: bool, use_tls: bool) -> int:
    from llamaswap.config import ConfigError
    try:
        load, snapshot = config_source(opts, demo)
        config = load()
    except (ConfigError, OSError) as e:
        _err(f"failed to load config: {e}")
        return 1

    from llamaswap.ops.events import EventBus
    from llamaswap.ops.logs import build_loggers
    loggers = build_loggers(config.log_to_stdout,
                            level=config.log_level, time_format=config.log_time_format)
    log = loggers.log
    try:
        if config.has_profiles:
            from llamaswap.ops.reload import PROFILES_WARNING
            log.warn(PROFILES_WARNING)
        for warning in config.warnings:
            log.warn(warning)
        log.debug(f"PID: {os.getpid()}")
        return _serve(opts, config, loggers, EventBus(), listen, demo, use_tls,
                      load=load, snapshot=snapshot)
    finally:
        if loggers.stdout is not None:
            loggers.stdout.drain()


def _serve(opts, config, loggers, events, listen, demo, use_tls, *, load, snapshot) -> int:
    from llamaswap import procutil
    from llamaswap.app import App
    from llamaswap.http.server import serve
    from llamaswap.ops.preload import start_preload
    from llamaswap.ops.reload import Reloader
    log = loggers.log

    # Signals are caught from here on, so a Ctrl-C during startup still stops what started.
    # The C-level handler writes each signal's number to the wakeup pipe, whichever thread
    # the kernel delivered it to; a Python-level write would be lost while the main thread
    # sits in read() and another thread took the signal.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    previous_fd = signal.set_wakeup_fd(wake_w)
    previous = {s: signal.signal(s, lambda *_: None)
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    app = server = reloader = None
    procutil.guard.start(lambda level, msg: getattr(log, level)(msg))
    try:
        try:
            app = App.build(config, loggers, events)
        except Exception as e:  # upstream: "failed to create server", exit 1
            from llamaswap.config import ConfigError
            # (a config that loaded but cannot run here: an `auto` memory budget unread)
            _err(f"failed to {'load config' if isinstance(e, ConfigError) else 'create server'}: {e}")
            return 1
        holder = AppHolder(app)
        cert, key = opts["tls-cert-file"], opts["tls-key-file"]
        if not demo:
            reloader = Reloader(holder, os.path.abspath(opts["config"]) if opts["config"] else None,
                                load=lambda _path, previous: load(previous), snapshot=snapshot)
        if opts["watch-config"] and reloader is not None:
            reloader.watch()  # before serving: a change right after startup is seen
        warning = network_warning(listen, bool(config.api_keys))
        if warning:
            _err(warning)
        try:
            if ":" not in listen:
                raise ValueError(f"listen tcp: address {listen}: missing port in address")
            server = serve(holder, listen, certfile=cert or None, keyfile=key or None)
        except Exception as e:
            _err(f"http server error: {_listen_error(listen, e, (cert, key))}")
            return 1
        start_preload(app)
        scheme = "https" if use_tls else "http"
        if listen.endswith(":0"):  # the port the system chose, where clients can reach it
            listen = f"{listen[:-1]}{server.port}"
        log.info(f"llama-swap listening{' with TLS' if use_tls else ''} on {scheme}://{listen}")
        if demo:
            from llamaswap.demo.config import banner
            sys.stdout.write(banner(f"{scheme}://{_browsable(listen)}") + "\n")
            sys.stdout.flush()
        while True:
            signum = os.read(wake_r, 1)[0]
            if signum == signal.SIGHUP:
                log.info("received SIGHUP, reloading config")
                if reloader is not None:
                    reloader.trigger()
                else:
                    log.warn("-demo runs on the built-in config: nothing to reload")
                continue
            if signum in (signal.SIGINT, signal.SIGTERM):
                log.info(f"received signal {_signal_name(signum)}, shutting down")
                break
            # another signal with a Python handler also wakes the pipe: not ours
        # A second SIGINT/SIGTERM during shutdown is ignored, as upstream does.
        return 0
    finally:
        if reloader is not None:
            reloader.stop()
        if server is not None:
            _close_server(server, log)
        current = holder.app if app is not None else None
        if current is not None:
            current.shutdown()
        procutil.guard.close()
        if app is not None:
            log.info("shutdown complete")
        signal.set_wakeup_fd(previous_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(wake_r)
        os.close(wake_w)


def _listen_error(listen: str, e: Exception, tls_files: tuple[str, ...]) -> str:
    """Go's wording for the common failures: a TLS file that cannot be read, a bind error."""
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        reason = e.strerror[0].lower() + e.strerror[1:]
        unreadable = [f for f in tls_files if f and not os.access(f, os.R_OK)]
        if unreadable:
            return f"open {unreadable[0]}: {reason}"
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            return f"listen tcp {listen}: bind: {reason}"
    import ssl
    if isinstance(e, ssl.SSLError):
        return f"tls: failed to load the certificate or key: {e}"
    return str(e)


def _signal_name(signum: int) -> str:
    return {signal.SIGINT: "interrupt", signal.SIGTERM: "terminated"}.get(signum, str(signum))


def _browsable(listen: str) -> str:
    """`listen` as a host:port a browser or curl on this machine can use."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _close_server(server, log) -> None:
    """Stop accepting, end the event streams, drain in-flight requests up to the bound."""
    try:
        server.shutdown(timeout=SHUTDOWN_TIMEOUT)
    except Exception as e:
        log.warn(f"http server shutdown error: {e}")


if __name__ == "__main__":
    sys.exit(main())
