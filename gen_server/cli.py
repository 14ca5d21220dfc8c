"""The ``timewalk`` command: a lazy dispatcher.

Each subcommand lives in its own module with ``main(argv) -> int`` and is imported only when run, so
``timewalk xr`` and ``timewalk view`` work in a client-only install (no torch).
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("gen_server.commands.demo", "build the embedded synthetic world, serve it and walk through it"),
    "synth": ("gen_server.commands.synth", "render the synthetic demo scene (mp4 + depth + poses)"),
    "build": ("gen_server.commands.build", "turn a video / transforms.json / step-2 folder into a world"),
    "info": ("gen_server.commands.info", "print a world's summary"),
    "export-ply": ("gen_server.commands.export_ply", "write a world's points as a PLY file"),
    "render": ("gen_server.commands.render", "render a camera trajectory through a world to mp4"),
    "serve": ("gen_server.commands.serve", "stream stereo views of a world over ZeroMQ"),
    "keys": ("gen_server.commands.keys", "generate CURVE key pairs for remote serving"),
    "calibrate": ("gen_server.commands.calibrate", "align a world to the floor, scale and origin"),
    "bench": ("gen_server.commands.bench", "benchmarks: build, render, encode, serve, client"),
    "xr": ("xr_client.commands.xr", "the headset client (OpenXR)"),
    "view": ("xr_client.commands.view", "desktop or headless viewer"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: timewalk COMMAND [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`timewalk COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"timewalk: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or "?"
        extra = "client" if module_name.startswith("xr_client") else "server"
        print(f"timewalk {name}: needs the Python package {missing!r}; install timewalk[{extra}]", file=sys.stderr)
        return 2
    from gen_server.errors import InputError

    try:
        return int(module.main(rest) or 0)
    except InputError as e:
        print(f"timewalk {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"timewalk {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
