"""The allocator setting (featcache._malloc): in force in the real worker processes featcache starts, measured by
what it is for (a 64 MiB block comes from the heap, not from an mmap of its own), and off on request."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest


def _is_glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, AttributeError):
        return False


# Runs in a fresh interpreter: tune the allocator as the commands do, then ask glibc (mallinfo2) how many bytes it
# serves with mmap of their own while a 64 MiB block is alive, allocated by the process's main thread and by another
# thread (as the inference streams do), inside a DataLoader worker of featcache's own loader (a forked process) and
# inside a spawned process (as loky workers and torchrun ranks start). Such blocks go back to the OS when freed, so
# the next batch page-faults them in again; tuned, they come from the heap and stay.
PROBE = textwrap.dedent("""
    import ctypes, json, multiprocessing as mp, threading
    import numpy as np

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    def mapped_while_alive():
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Mallinfo2
        seen = {}
        def one(where):
            block = np.ones(64 << 20, np.uint8)
            seen[where] = libc.mallinfo2().hblkhd >= 64 << 20
            del block
        one("thread 1")
        t = threading.Thread(target=one, args=("thread 2",))
        t.start(); t.join()
        return seen

    class Probe:
        def __len__(self):
            return 1
        def __getitem__(self, i):  # what featcache's collate expects: (image, failure reason, raw bytes?)
            import torch
            return torch.tensor(list(mapped_while_alive().values())), "", False

    if __name__ == "__main__":
        from featcache._malloc import tune_allocator
        state = tune_allocator()
        import torch
        from featcache.config import ExtractConfig
        from featcache.extraction.loader import make_loader

        loader = make_loader(Probe(), ExtractConfig(batch_size=1), torch.device("cpu"), num_workers=1)
        worker = next(iter(loader))[0][0].tolist()
        with mp.get_context("spawn").Pool(1) as pool:
            spawned = list(pool.apply(mapped_while_alive).values())
        print(json.dumps({"state": state, "main": list(mapped_while_alive().values()), "worker": worker,
                          "spawned": spawned}))
""")


def _probe(tmp_path, **env) -> dict:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not _is_glibc(), reason="the setting is glibc's (mallopt)")
def test_the_setting_is_in_force_in_worker_processes_and_off_on_request(tmp_path):
    tuned = _probe(tmp_path)
    system = _probe(tmp_path, FEATCACHE_ALLOCATOR="system")
    assert tuned["state"].startswith("tuned") and "system" in system["state"]
    for where in ("main", "worker", "spawned"):
        assert system[where] == [True, True], (where, system)  # glibc's default: mmap of its own, per block
        assert tuned[where] == [False, False], (where, tuned)  # tuned: from the heap, kept when freed


@pytest.mark.skipif(not _is_glibc(), reason="the setting is glibc's (mallopt)")
def test_the_users_own_settings_are_left_alone(tmp_path):
    code = "from featcache._malloc import tune_allocator; print(tune_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "MALLOC_ARENA_MAX": "4"})
    assert "MALLOC_ARENA_MAX" in out.stdout, out.stdout + out.stderr
