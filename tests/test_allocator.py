"""The command line's allocator setting: glibc keeps freed blocks of up to 32 MiB for reuse (no mmap per forward),
unless the user says otherwise."""

import ctypes
import os
import subprocess
import sys

import pytest

from adaptformer.runtime import allocator

CHECK = """
import ctypes, torch
from adaptformer.runtime.allocator import tune_allocator
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
tuned = tune_allocator()
before = libc.mallinfo2().hblkhd
block = torch.empty(20 * 2**20, dtype=torch.uint8)  # 20 MiB: above glibc's starting threshold, below 32 MiB
print(tuned, libc.mallinfo2().hblkhd - before >= 20 * 2**20)
"""


def mapped_block(env: dict) -> tuple[str, str]:
    """In a fresh process: whether the settings were made, and whether a 20 MiB tensor got its own mmap."""
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True)
    tuned, mapped = out.stdout.split()
    return tuned, mapped


def glibc_reports_mappings() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")  # glibc >= 2.33
    except OSError:
        return False


@pytest.mark.skipif(not glibc_reports_mappings(), reason="only glibc >= 2.33 reports its mmap'd blocks")
def test_large_blocks_come_from_the_heap_unless_the_user_keeps_glibcs_defaults():
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ADAPTFORMER_MALLOC"}
    assert mapped_block(base) == ("True", "False")  # tuned: served from the heap, reusable without page faults
    assert mapped_block({**base, "ADAPTFORMER_MALLOC": "default"}) == ("False", "True")  # glibc's own: mmap
    assert mapped_block({**base, "MALLOC_MMAP_THRESHOLD_": "131072"}) == ("False", "True")  # the user's settings


def test_nothing_is_set_off_linux(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.tune_allocator() is False


def test_an_unknown_setting_is_one_line_and_exit_2(monkeypatch, capsys):
    from adaptformer.cli import main

    monkeypatch.setenv("ADAPTFORMER_MALLOC", "off")
    assert main(["methods"]) == 2
    assert capsys.readouterr().err == "error: ADAPTFORMER_MALLOC='off': expected tuned or default\n"


RETURN = """
import torch
from adaptformer.runtime.allocator import return_free_memory, tune_allocator
def rss():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) // 1024
assert tune_allocator()
blocks = [torch.ones(2**20, dtype=torch.uint8) for _ in range(300)]  # 300 MiB of 1 MiB blocks, from the heap
middle = blocks[::2]  # every other block freed: holes a trim at the heap's top alone would not give back
del blocks
kept = rss()
return_free_memory()
print(kept - rss())
"""


@pytest.mark.skipif(not glibc_reports_mappings(), reason="glibc only")
def test_a_tuned_process_keeps_freed_memory_until_it_is_handed_back():
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ADAPTFORMER_MALLOC"}
    out = subprocess.run([sys.executable, "-c", RETURN], env=base, capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 100  # MiB: the 150 freed blocks' pages, kept by the tuned thresholds, returned


def test_a_server_hands_memory_back_at_most_every_interval_and_only_when_tuned():
    now, released = [0.0], []
    periodic = allocator.PeriodicReturn(
        every_s=30, clock=lambda: now[0], tuned=lambda: True, release=lambda: released.append(now[0]) or True
    )
    for t in (1, 29.9, 30, 45, 59.9, 60.1, 200):
        now[0] = t
        periodic.maybe()
    assert released == [30, 60.1, 200]
    untuned = allocator.PeriodicReturn(every_s=0, clock=lambda: now[0], tuned=lambda: False, release=released.clear)
    assert untuned.maybe() is False and released == [30, 60.1, 200]
