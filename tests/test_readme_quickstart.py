"""The README's quick start, run as a new user would paste it: `xds serve` in one folder, then the client
lines in another folder (so nothing can reach the server's files), over real HTTP."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_start_blocks() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def test_the_quick_start_works_as_written(tmp_path):
    serve_block, client_block = quick_start_blocks()
    assert serve_block.strip() == "xds serve"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDS_")}
    env.update(PYTHONPATH=ROOT, XDS_PORT=str(port))
    server_dir, client_dir = tmp_path / "server", tmp_path / "client"
    server_dir.mkdir()
    client_dir.mkdir()
    server = subprocess.Popen([sys.executable, "-m", "node.cli", "serve"], cwd=server_dir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "xds: all on" in server.stdout.readline()
        # `xds` is the installed console script; the function runs this tree's code under the same name.
        script = f'set -euo pipefail\nxds() {{ "{sys.executable}" -m node.cli "$@"; }}\n' + client_block
        done = subprocess.run(["bash", "-c", script], cwd=client_dir, env=env, capture_output=True, text=True,
                              timeout=120)
    finally:
        server.terminate()
        server.wait(30)
        server.stdout.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("the same bytes came back")
    assert "First letter" in done.stdout and "DocumentEntry" in done.stdout  # the query's table
    assert sorted(p.name for p in client_dir.iterdir()) == ["copy.txt", "letter.txt"]
    assert (server_dir / "xds-data" / "registry.db").is_file()
