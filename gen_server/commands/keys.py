"""``timewalk keys generate DIR``: CURVE key pairs for serving beyond loopback.

Writes ``DIR/server.key`` (public, give to clients) + ``DIR/server.key_secret`` (stays on the server),
``DIR/client.key`` + ``DIR/client.key_secret`` (for the headset PC) and ``DIR/authorized_clients/``,
the allow-list folder the server reads (one public ``*.key`` per allowed client).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from gen_server.errors import InputError


def generate(keys_dir: Path, client_names: list[str], overwrite: bool = False) -> dict[str, Path]:
    """Create the key folder atomically (temp folder + rename); returns the important paths."""
    import zmq.auth  # noqa: PLC0415

    keys_dir = Path(keys_dir)
    if keys_dir.exists() and any(keys_dir.iterdir()) and not overwrite:
        raise InputError(f"{keys_dir}: already exists and is not empty (use --force to replace it)")
    keys_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{keys_dir.name}.", dir=keys_dir.parent))
    try:
        zmq.auth.create_certificates(str(tmp), "server")
        allowed = tmp / "authorized_clients"
        allowed.mkdir()
        for name in client_names:
            public, _ = zmq.auth.create_certificates(str(tmp), name)
            shutil.copy(public, allowed / f"{name}.key")
        for secret in tmp.glob("*.key_secret"):
            os.chmod(secret, 0o600)
        if keys_dir.exists():
            shutil.rmtree(keys_dir)
        os.replace(tmp, keys_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"server_public": keys_dir / "server.key", "server_secret": keys_dir / "server.key_secret",
            "allowed": keys_dir / "authorized_clients",
            **{f"{n}_secret": keys_dir / f"{n}.key_secret" for n in client_names}}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="timewalk keys", description="CURVE keys for `timewalk serve --keys DIR`.")
    sub = parser.add_subparsers(dest="action", required=True)
    gen = sub.add_parser("generate", help="write server and client key pairs into DIR")
    gen.add_argument("dir", type=Path)
    gen.add_argument("--clients", nargs="+", default=["client"], help="client key names (default: client)")
    gen.add_argument("--force", action="store_true", help="replace an existing DIR")
    args = parser.parse_args(argv)
    for name in args.clients:
        if not name.replace("-", "").replace("_", "").isalnum() or name == "server":
            raise InputError(f"--clients: bad key name {name!r} (letters, digits, - and _; not 'server')")
    paths = generate(args.dir, args.clients, args.force)
    print(f"server secret key (keep on the server): {paths['server_secret']}")
    print(f"server public key (give to clients):    {paths['server_public']}")
    for name in args.clients:
        print(f"client key pair '{name}' (for the headset PC): {paths[f'{name}_secret']}")
    print(f"allowed client public keys: {paths['allowed']}/ (add more *.key files to allow more clients)")
    print(f"serve with: timewalk serve WORLD --bind tcp://0.0.0.0:5555 --keys {args.dir}")
    return 0
