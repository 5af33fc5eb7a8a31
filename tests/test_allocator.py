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
