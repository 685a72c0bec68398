"""Hostile generator checkpoints, built here: one line, exit 2, no traceback, no memory bomb (#22 items 6-8, 15).

Every case runs `python -m jobs.export --model stylegan2 --generator FILE` as a user would,
in a child process whose peak RSS is read from the kernel for that one child (os.wait4's
rusage), and asserts: exit status 2, exactly one stderr line `error: ...` with a specific
message, no traceback, and a peak RSS under 1 GB. The child also runs under a 4 GB address
space limit, so that a regression fails this test with a MemoryError instead of taking the
shared machine down. A note test checks the one line that says a pickle's embedded source
was ignored.

The files: zip archives whose members declare or inflate to gigabytes (a 3 MB data.pkl
that inflates to 3 GB, the issue's case); NVIDIA network pickles with a "billion laughs"
of memo-shared lists, a 100,000-deep list, settings of the wrong type or out of range
(num_layers = 10^7, conv_clamp = [256], resolutions 24 and 2^20, z_dim = True, ...), shared
sub-networks, 3 million opcodes, and a tensor storage whose embedded data calls os.system
or is itself a zip bomb; rosinality and genforce state dicts
whose keys or shapes ask for 10^5 mapping layers, a 2048-px network of 4096 channels, or
a stride-0 view that stands for gigabytes.
"""
from __future__ import annotations

import io
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from nvidia_layout import SG2_SOURCE, _attach, _Builder, _fake_nvidia_modules, build_generator

REPO = Path(__file__).resolve().parent.parent
PEAK_RSS_LIMIT = 1 << 30            # what every bomb must stay under, in bytes
ADDRESS_SPACE_LIMIT = 4 << 30       # the child's safety net: a regression fails, the machine stays up
GB = 10 ** 9
SYSTEM = f"{os.system.__module__}.system"  # how pickle names os.system (posix.system on Linux)


# ---- running the export as a user would, measuring its peak memory --------------------------

@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes: ru_maxrss of this one child (Linux reports kB)


# `python -m jobs.export ARGS` with the address space limited first, in the child itself
# (preexec_fn is unsafe once the test process has threads, e.g. Ray's).
_LAUNCH = (f"import resource, runpy; resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE_LIMIT}, "
           f"{ADDRESS_SPACE_LIMIT})); runpy.run_module('jobs.export', run_name='__main__', alter_sys=True)")


# The export is started by this small launcher, not by the test process: Linux starts a
# forked child's peak RSS at its parent's current RSS (and exec keeps it), so a child of a
# pytest process that has grown to 2 GB over the suite reports 2 GB whatever it does. The
# launcher is small after its own exec; it reports the export's os.wait4 rusage in a file.
_MEASURE = ("import os, subprocess, sys; child = subprocess.Popen(sys.argv[2:]); "
            "_, status, usage = os.wait4(child.pid, 0); "
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss)); "
            "code = os.waitstatus_to_exitcode(status); sys.exit(code if code >= 0 else 128 - code)")


def run_export(generator: Path, tmp_path: Path, timeout: int = 300) -> Run:
    """`python -m jobs.export --model stylegan2 --generator GENERATOR ...` in a child process
    (through `_LAUNCH`, which only adds the address space limit); its peak RSS from os.wait4,
    which reports the rusage of exactly that child, read by `_MEASURE`."""
    out, err, rss = tmp_path / "export.stdout", tmp_path / "export.stderr", tmp_path / "export.maxrss"
    args = [sys.executable, "-c", _MEASURE, str(rss), sys.executable, "-c", _LAUNCH, "--model", "stylegan2",
            "--generator", str(generator), "--scorer", str(tmp_path / "scorer.onnx"), "--score-names", "a,b",
            "--out", str(tmp_path / "bundle")]
    with open(out, "w") as stdout, open(err, "w") as stderr:
        child = subprocess.Popen(args, cwd=REPO, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(child.pid, signal.SIGKILL))
        timer.start()
        try:
            returncode = child.wait()
        finally:
            timer.cancel()
    return Run(returncode, out.read_text(), err.read_text(), int(rss.read_text()) * 1024)


def assert_refused(run: Run, message: str) -> str:
    """Exit 2, one `error: ...` line on stderr holding `message`, no traceback, peak RSS < 1 GB."""
    lines = run.stderr.splitlines()
    assert run.returncode == 2, (run.returncode, run.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-3000:]
    assert "Traceback" not in run.stderr + run.stdout
    assert message in lines[0], lines[0]
    assert run.peak_rss < PEAK_RSS_LIMIT, f"peak RSS {run.peak_rss / 2**20:.0f} MiB"
    return lines[0]


# ---- torch zip archives ----------------------------------------------------------------------

def _deflate_zeros(prefix: bytes, zeros: int, chunk: int = 1 << 20) -> tuple[bytes, int]:
    """A raw deflate stream of `prefix` then `zeros` zero bytes, and the CRC-32 of all of it,
    without compressing gigabytes: after a full flush deflate restarts, so one compressed
    chunk of zeros repeats verbatim."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = bytes(chunk)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    assert first == again and zeros % chunk == 0
    crc = zlib.crc32(prefix)
    for _ in range(zeros // chunk):
        crc = zlib.crc32(block, crc)
    return head + first * (zeros // chunk) + c.flush(), crc


def _zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip archive written by hand: (name, data as stored, method, uncompressed size, crc) each,
    so that a member may declare any size (zip64 fields when it is 4 GB or more)."""
    local, central, offset = [], [], 0
    for name, data, method, size, crc in members:
        raw = name.encode()
        big = size >= 0xFFFFFFFF or len(data) >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, size, len(data)) if big else b""
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if big else (len(data), size)
        header = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if big else 20, 0, method, 0, 0x21, crc, *sizes,
                             len(raw), len(extra)) + raw + extra
        local.append(header + data)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45 if big else 20, 45 if big else 20, 0,
                                   method, 0, 0x21, crc, *sizes, len(raw), len(extra), 0, 0, 0, 0, offset)
                       + raw + extra)
        offset += len(header) + len(data)
    directory = b"".join(central)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), offset, 0)
    path.write_bytes(b"".join(local) + directory + end)
    return path


def _torch_members(state: dict) -> list[tuple[str, bytes, int, int, int]]:
    """The members torch.save writes for `state`, as (name, data, ZIP_STORED, size, crc)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(buffer) as archive:
        return [(i.filename, archive.read(i), zipfile.ZIP_STORED, i.file_size, i.CRC) for i in archive.infolist()]


def zip_bomb_pickle(path: Path) -> Path:
    """The issue's file: about 3 MB whose data.pkl inflates to 3 GB (a pickle that names
    g_ema, then zeros)."""
    members = _torch_members({"g_ema": {"style.1.weight": torch.zeros(2, 2)}})
    name, data, _, _, _ = next(m for m in members if m[0].endswith("data.pkl"))
    prefix = data[:-1]  # the real pickle without its STOP, so its strings name the rosinality layout
    stream, crc = _deflate_zeros(prefix, 3 * 1000 << 20)
    bomb = (name, stream, zipfile.ZIP_DEFLATED, len(prefix) + (3 * 1000 << 20), crc)
    return _zip(path, [bomb if m[0] == name else m for m in members])


def zip_bomb_storage(path: Path) -> Path:
    """A valid data.pkl, and a tensor storage that inflates from 2 MB to 2 GB."""
    members = _torch_members({"g_ema": {"style.1.weight": torch.zeros(2, 2)}})
    name = next(m[0] for m in members if m[0].endswith("/data/0"))
    stream, crc = _deflate_zeros(b"", 2000 << 20)
    return _zip(path, [(name, stream, zipfile.ZIP_DEFLATED, 2000 << 20, crc) if m[0] == name else m
                       for m in members])


def zip_declares_huge_member(path: Path) -> Path:
    """A tiny deflated storage whose header declares 1 TB uncompressed (torch would allocate it)."""
    members = _torch_members({"g_ema": {"style.1.weight": torch.zeros(2, 2)}})
    name = next(m[0] for m in members if m[0].endswith("/data/0"))
    stream = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = stream.compress(bytes(16)) + stream.flush()
    return _zip(path, [(name, data, zipfile.ZIP_DEFLATED, 10 ** 12, zlib.crc32(bytes(16))) if m[0] == name else m
                       for m in members])


def zip_stored_member_lies(path: Path) -> Path:
    """A stored (uncompressed) storage whose header declares 3 GB in a file of a few kB."""
    members = _torch_members({"g_ema": {"style.1.weight": torch.zeros(2, 2)}})
    name = next(m[0] for m in members if m[0].endswith("/data/0"))
    return _zip(path, [(n, d, meth, 3 * GB if n == name else s, c) for n, d, meth, s, c in members])


# ---- NVIDIA network pickles ------------------------------------------------------------------

def nvidia_pickle(path: Path, edit=None, module_src: str = SG2_SOURCE, extra: dict | None = None) -> Path:
    """A tiny NVIDIA-layout G_ema (16 px) pickled as NVIDIA's loader would read it; `edit(g)`
    changes the stand-in modules' settings first."""
    b = _Builder(0, module_src)
    g = build_generator(b, resolution=16, z_dim=16, w_dim=16, n_mlp=2, channel_base=128, channel_max=16,
                        conv_clamp=256)
    _attach(g, b.tensors)
    if edit is not None:
        edit(g)
    with _fake_nvidia_modules(), open(path, "wb") as f:
        pickle.dump({"G_ema": g, **(extra or {})}, f, protocol=4)
    return path


def _set(*settings: tuple[str, str, object]):
    """An edit that sets attribute `name` = value on every module whose dotted path matches `where`
    ("" the generator, "*" every module that has the attribute)."""
    def edit(g):
        for where, name, value in settings:
            modules = [m for _, m in g.named_modules() if hasattr(m, name)] if where == "*" else \
                [g.get_submodule(where)]
            for module in modules:
                object.__setattr__(module, name, value)
    return edit


def billion_laughs(path: Path) -> Path:
    """Memo-shared lists: a few hundred bytes that stand for 10^9 items when copied."""
    laughs = ["lol"]
    for _ in range(9):
        laughs = [laughs] * 10
    path.write_bytes(pickle.dumps({"G_ema": laughs}, protocol=2))
    assert path.stat().st_size < 1000
    return path


def deep_list(path: Path, depth: int = 100_000) -> Path:
    """A list nested 100,000 deep, written opcode by opcode (pickle.dumps itself would recurse)."""
    key = b"G_ema"
    path.write_bytes(b"\x80\x02}X" + struct.pack("<I", len(key)) + key + b"]" * depth + b"a" * (depth - 1) + b"s.")
    return path


def shared_subnetworks(path: Path) -> Path:
    """A "billion laughs" of persistent networks: each level holds the one below ten times, so
    walking G_ema's modules would visit 10^9 of them."""
    b = _Builder(0, SG2_SOURCE)
    g = build_generator(b, resolution=16, z_dim=16, w_dim=16, n_mlp=2, channel_base=128, channel_max=16,
                        conv_clamp=256)
    _attach(g, b.tensors)
    level = b.module(None, "", "Leaf")
    for _ in range(9):
        parent = b.module(None, "", "Laugh")
        for i in range(10):
            parent.add_module(f"c{i}", level)
        level = parent
    g.synthesis.add_module("laughs", level)
    with _fake_nvidia_modules(), open(path, "wb") as f:
        pickle.dump({"G_ema": g}, f, protocol=4)
    return path


def many_opcodes(path: Path, count: int = 3_000_000) -> Path:
    """6 MB of opcodes that each build a list: about 200 MB of objects once unpickled."""
    path.write_bytes(b"\x80\x02}X\x05\x00\x00\x00G_ema]" + b"]a" * count + b"s.")
    return path


class _Storage:
    """Pickles as torch.storage._load_from_bytes(data), the way NVIDIA pickles hold tensor storages."""

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.data,)


class _RunsCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def storage_running_a_command(path: Path) -> Path:
    """A tensor storage whose embedded torch data would call os.system."""
    data = io.BytesIO()
    torch.save(_RunsCommand(path.parent / "pwned"), data, _use_new_zipfile_serialization=False)
    path.write_bytes(pickle.dumps({"G_ema": _Storage(data.getvalue())}, protocol=4))
    return path


def storage_zip_bomb(path: Path) -> Path:
    """A tensor storage given as a torch zip whose data.pkl inflates to 3 GB."""
    zip_bomb_pickle(path.with_suffix(".zip"))
    path.write_bytes(pickle.dumps({"G_ema": _Storage(path.with_suffix(".zip").read_bytes())}, protocol=4))
    return path


# ---- rosinality and genforce state dicts -----------------------------------------------------

def _save(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def rosinality_mapping_bomb(path: Path) -> Path:
    """Keys that make n_mlp 100,000 (style.100000.*): 100,000 dense layers if built."""
    return _save(path, {"style.1.weight": torch.zeros(512, 512), "style.100000.weight": torch.zeros(1),
                        "convs.0.conv.weight": torch.zeros(1, 8, 8, 3, 3)})


def rosinality_wide_bomb(path: Path) -> Path:
    """300 kB of shapes that describe a 2048-px StyleGAN2 of 4096 channels (11 GB if built)."""
    state = {"style.1.weight": torch.zeros(16, 16), "conv1.conv.weight": torch.zeros(1, 4096, 1, 1, 1)}
    for k in range(18):
        state[f"convs.{k}.conv.weight"] = torch.zeros(1, 4096, 1, 1, 1)
    return _save(path, state)


def rosinality_huge_z(path: Path) -> Path:
    """style.1.weight of shape (1, 5000): a z of 5,000 dims."""
    return _save(path, {"style.1.weight": torch.zeros(1, 5000), "convs.0.conv.weight": torch.zeros(1, 8, 8, 3, 3)})


def rosinality_stride0_view(path: Path) -> Path:
    """One stored float viewed as a 32768 x 32768 noise image: 4.3 GB once copied."""
    return _save(path, {"style.1.weight": torch.zeros(16, 16), "convs.0.conv.weight": torch.zeros(1, 8, 8, 3, 3),
                        "noises.noise_0": torch.zeros(1, 1, 1, 1).expand(1, 1, 32768, 32768)})


def genforce_mapping_bomb(path: Path) -> Path:
    """mapping.dense9999999.*: ten million mapping layers if built."""
    return _save(path, {"mapping.dense0.weight": torch.zeros(16, 16), "mapping.dense9999999.weight": torch.zeros(1),
                        "synthesis.layer0.const": torch.zeros(1, 16, 4, 4), "synthesis.layer3.bias": torch.zeros(16)})


def genforce_foreign_global(path: Path) -> Path:
    """A genforce-looking state dict that pickles os.system."""
    return _save(path, {"mapping.dense0.weight": torch.zeros(2, 2), "x": _RunsCommand(path.parent / "pwned")})


# ---- the table -------------------------------------------------------------------------------

CASES = {
    # item 6: archives bounded before anything is inflated
    "zip bomb: data.pkl inflates to 3 GB": (zip_bomb_pickle, "its pickle 'archive/data.pkl' declares 3.1 GB"),
    "zip bomb: a storage inflates to 2 GB": (zip_bomb_storage, "no checkpoint inflates to more than 16 x its size"),
    "zip member declares 1 TB": (zip_declares_huge_member, "its members declare 1000.0 GB uncompressed"),
    "stored zip member declares 3 GB": (zip_stored_member_lies, "a damaged or forged archive"),
    # item 7: memo expansion and nesting
    "billion laughs": (billion_laughs, "expands to more than 2,000,000 objects"),
    "100,000-deep list": (deep_list, "nests lists, tuples or dicts more than 64 deep"),
    "shared sub-networks, 10^9 if walked": (shared_subnetworks, ("sub-networks nest 6 deep with 111,111 modules "
                                                                   "and tensors (shared ones counted each time)")),
    "3 million opcodes": (many_opcodes, "is a pickle of more than 2,000,000 opcodes"),
    # item 8: every setting typed and bounded before anything is built
    "num_layers = 10^7": (lambda p: nvidia_pickle(p, _set(("mapping", "num_layers", 10 ** 7))),
                          "G_ema.mapping has num_layers = 10000000; an NVIDIA StyleGAN2 has an integer from 1 to 32"),
    "conv_clamp = [256]": (lambda p: nvidia_pickle(p, _set(("*", "conv_clamp", [256]))),
                           "has conv_clamp = a list of 1; it is None or a finite number > 0"),
    "conv_clamp = nan": (lambda p: nvidia_pickle(p, _set(("*", "conv_clamp", float("nan")))),
                         "has conv_clamp = nan; it is None or a finite number > 0"),
    "resolution 24": (lambda p: nvidia_pickle(p, _set(("", "img_resolution", 24))),
                      "G_ema has img_resolution = 24; an NVIDIA StyleGAN2 has a power of two from 8 to 4096"),
    "resolution 2^20": (lambda p: nvidia_pickle(p, _set(("", "img_resolution", 1 << 20))),
                        "G_ema has img_resolution = 1048576; an NVIDIA StyleGAN2 has an integer from 8 to 4,096"),
    "z_dim = True": (lambda p: nvidia_pickle(p, _set(("", "z_dim", True), ("mapping", "z_dim", True))),
                     "G_ema has z_dim = True; an NVIDIA StyleGAN2 has an integer from 1 to 4,096"),
    "w_dim = 512.0": (lambda p: nvidia_pickle(p, _set(("", "w_dim", 512.0))),
                      "G_ema has w_dim = 512.0; an NVIDIA StyleGAN2 has an integer"),
    "channel_max = 10^6": (lambda p: nvidia_pickle(p, _set(("synthesis", "channel_max", 10 ** 6))),
                           "G_ema.synthesis has channel_max = 1000000; an NVIDIA StyleGAN2 has an integer from 1"),
    "lr multiplier inf": (lambda p: nvidia_pickle(p, _set(("mapping.fc0", "bias_gain", float("inf")))),
                          "G_ema.mapping.fc0 has bias_gain = inf; an NVIDIA StyleGAN2 has a finite number"),
    "rosinality: 100,000 mapping layers": (rosinality_mapping_bomb,
                                           "n_mlp must be an integer from 1 to 32, got 100000"),
    "rosinality: z_dim 5,000": (rosinality_huge_z, "z_dim must be an integer from 1 to 4096, got 5000"),
    "rosinality: 2048 px x 4096 channels of shapes": (rosinality_wide_bomb,
                                                      "does not fit a rosinality StyleGAN2 generator (2048 px"),
    "rosinality: stride-0 view of 4.3 GB": (rosinality_stride0_view, ("noises.noise_0 is a (1, 1, 32768, 32768) "
                                            "tensor (4.3 GB) built on 4 bytes of stored data")),
    "genforce: 10^7 mapping layers": (genforce_mapping_bomb, "mapping_layers must be at most 32"),
    # item 15: a refused global is named, never with torch's advice to load unsafely
    "storage pickles os.system": (storage_running_a_command, (f"holds a tensor storage whose data pickles {SYSTEM}, "
                                                                 "which a safe load refuses and never runs")),
    "storage is a zip bomb": (storage_zip_bomb, "holds a tensor storage whose zip archive is refused"),
    "genforce file pickles os.system": (genforce_foreign_global, (f"pickles {SYSTEM}, which a safe (weights-only) "
                                                                    "load refuses and never runs")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_checkpoint_is_one_line_exit_2_under_1_gb(tmp_path, name):
    build, message = CASES[name]
    path = build(tmp_path / "hostile.ckpt")
    run = run_export(path, tmp_path)
    print(f"\n{name}: {path.stat().st_size:,} bytes, export peak RSS {run.peak_rss / 2**20:.0f} MiB")  # pytest -s
    line = assert_refused(run, message)
    assert str(path) in line and "weights_only=False" not in line and "set to `False`" not in line
    assert len(line) < 600 + len(str(path))
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "pwned").exists()


def test_embedded_source_is_noted_once_and_never_run(tmp_path):
    """A pickle's module_src (NVIDIA's loader execs it) is ignored, and the user is told so once."""
    marker = tmp_path / "pwned"
    source = f"open({str(marker)!r}, 'w').close()\nclass Generator: pass\n"
    path = nvidia_pickle(tmp_path / "net.pkl", module_src=source)
    run = run_export(path, tmp_path)  # the generator loads; the scorer does not exist
    assert_refused(run, "scorer file not found")
    notes = [line for line in run.stdout.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "embeds the Python source" in notes[0] and "never run" in notes[0], run.stdout
    assert not marker.exists()


def test_the_sizes_of_a_real_checkpoint_pass(tmp_path):
    """Control: a torch.save'd file, stored or deflated, passes the archive bounds."""
    from export.checkpoints import check_torch_zip

    path = tmp_path / "ok.pt"
    torch.save({"w": torch.randn(64, 64), "b": torch.zeros(64)}, path)
    assert check_torch_zip(path)
    members = _torch_members({"w": torch.randn(64, 64), "b": torch.zeros(64)})
    deflated = [(n, zlib.compress(d)[2:-4], zipfile.ZIP_DEFLATED, s, c) for n, d, _, s, c in members]
    state = torch.load(_zip(tmp_path / "deflated.pt", deflated), weights_only=True)
    assert state["w"].shape == (64, 64) and check_torch_zip(tmp_path / "deflated.pt")
