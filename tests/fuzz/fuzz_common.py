"""What the fuzz harnesses share: atheris when it is installed, and a
plain mutation loop when it is not.

A harness calls optional_atheris() before it imports the code under test,
imports that code inside instrumented(), and hands its one-input function
and seed inputs to main(). Command-line arguments are libFuzzer's: flags
such as -max_total_time=60 and -runs=N, then corpus folders. The fallback
loop reads those two flags and the folders too, so one command line works
both ways. Pass --no-atheris to use the fallback where atheris is
installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

NO_ATHERIS_FLAG = "--no-atheris"
DEFAULT_SECONDS = 60
# Values that sit on the edges of 32-bit lengths and counts.
INTERESTING_WORDS = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 2**31 - 1, 2**31)
INTERESTING_WORDS += (2**32 - 1, 4096, 65536, 100_000, 100_001)

OneInput = Callable[[bytes], None]


def optional_atheris() -> ModuleType | None:
    """Return the atheris module, or None when it is missing or
    --no-atheris was passed."""
    if NO_ATHERIS_FLAG in sys.argv:
        return None
    try:
        import atheris
    except ImportError:
        return None
    module: ModuleType = atheris
    return module


def instrumented(atheris: ModuleType | None) -> Any:
    """Return a context in which imports get atheris's coverage hooks."""
    if atheris is None:
        return contextlib.nullcontext()
    return atheris.instrument_imports()


def main(
    atheris: ModuleType | None, one_input: OneInput, seeds: Sequence[bytes]
) -> None:
    """Fuzz ``one_input`` with atheris, or with the fallback loop."""
    argv = [arg for arg in sys.argv if arg != NO_ATHERIS_FLAG]
    paths = [Path(arg) for arg in argv[1:] if not arg.startswith("-")]
    # Files are inputs to replay once, as libFuzzer treats them.
    files = [path for path in paths if path.is_file()]
    folders = [path for path in paths if not path.is_file()]
    for folder in folders:
        write_seeds(folder, seeds)
    if atheris is not None:
        atheris.Setup(argv, one_input)
        atheris.Fuzz()
        return
    if files:
        for path in files:
            one_input(path.read_bytes())
            print(f"{path}: no finding", file=sys.stderr)
        return
    print(
        "atheris is missing or --no-atheris was given: fuzzing with the "
        "plain mutation loop",
        file=sys.stderr,
    )
    corpus = [*seeds, *read_corpus(folders)]
    seconds = float(_flag(argv, "max_total_time", DEFAULT_SECONDS))
    runs = int(_flag(argv, "runs", -1))
    prefix = _flag(argv, "artifact_prefix", "")
    fallback_loop(one_input, corpus, seconds, runs, prefix)


def write_seeds(folder: Path, seeds: Sequence[bytes]) -> None:
    """Put the seeds in an empty corpus folder, named by their hash."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        return
    for seed in seeds:
        (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def read_corpus(folders: Sequence[Path]) -> list[bytes]:
    return [
        path.read_bytes()
        for folder in folders
        for path in sorted(folder.iterdir())
        if path.is_file()
    ]


def fallback_loop(
    one_input: OneInput,
    corpus: list[bytes],
    seconds: float,
    runs: int,
    prefix: str = "",
) -> None:
    """Run mutated corpus entries and random bytes through ``one_input``
    until ``seconds`` pass or ``runs`` inputs ran (-1: no count limit).

    An input that raises is saved as ``prefix`` + crash-SHA1, as libFuzzer
    names it, before the error propagates.
    """
    generator = random.Random(int.from_bytes(os.urandom(8), "big"))
    started = time.monotonic()
    executions = 0
    while time.monotonic() - started < seconds and executions != runs:
        data = next_input(generator, corpus)
        try:
            one_input(data)
        except BaseException:
            name = f"{prefix}crash-{hashlib.sha1(data).hexdigest()}"
            Path(name).write_bytes(data)
            print(f"input saved as {name}", file=sys.stderr)
            raise
        executions += 1
    elapsed = time.monotonic() - started
    print(
        f"Done {executions} runs in {elapsed:.0f} second(s) "
        "(fallback loop, no coverage feedback)",
        file=sys.stderr,
    )


def next_input(generator: random.Random, corpus: list[bytes]) -> bytes:
    if not corpus or generator.random() < 0.1:
        return generator.randbytes(generator.randrange(0, 512))
    data = bytearray(generator.choice(corpus))
    for _ in range(generator.randint(1, 4)):
        _mutate(generator, data, corpus)
    return bytes(data[:4096])


def _mutate(
    generator: random.Random, data: bytearray, corpus: list[bytes]
) -> None:
    position = generator.randrange(0, len(data) + 1)
    choice = generator.randrange(6)
    if choice == 0 and data:
        index = min(position, len(data) - 1)
        data[index] ^= 1 << generator.randrange(8)
    elif choice == 1:
        data[position:position] = generator.randbytes(generator.randint(1, 8))
    elif choice == 2:
        del data[position : position + generator.randint(1, 16)]
    elif choice == 3:
        word = struct.pack(">I", generator.choice(INTERESTING_WORDS))
        data[position : position + 4] = word
    elif choice == 4 and data:
        start = generator.randrange(len(data))
        piece = data[start : start + generator.randint(1, 32)]
        data[position:position] = piece
    else:
        other = generator.choice(corpus)
        cut = generator.randrange(0, len(other) + 1)
        data[position:] = other[cut:]


def _flag(argv: Sequence[str], name: str, default: float | str) -> str:
    prefix = f"-{name}="
    for arg in argv:
        if arg.startswith(prefix):
            return arg[len(prefix) :]
    return str(default)
