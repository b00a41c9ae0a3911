"""Input file lists: parsing, process assignment and a pre-flight check of every file."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import uproot

from utils.config import Process
from utils.errors import BHiveError

MAX_LISTED = 20
# compressed bytes: larger last baskets are not decompressed by the check (CMS ntuples'
# baskets are smaller; a larger one is most of its branch, which the processor decompresses
# anyway and reports if corrupt: checking it first doubled the pre-flight's time)
LAST_BASKET_CHECK = 256 << 10


class InputError(BHiveError, ValueError):
    """An input file list or input file is unusable."""


def is_remote(path: str) -> bool:
    """True for URLs such as ``root://eoscms.cern.ch//eos/...``."""
    return "://" in path and not path.startswith("file://")


def uproot_options(files: Sequence[str]) -> dict[str, object]:
    """Options of ``uproot.open`` for reading ``files``: local files are read with plain
    file reads into uproot's buffers (``MultithreadedFileSource``), which on this project's
    benchmark files reads all branches 1.3-1.5x faster than uproot's default (fsspec) source
    and faults in half the fresh memory. Where any input is a URL (remote, or ``file://``,
    which that source cannot open) all keep uproot's default."""
    if any("://" in f for f in files):
        return {}
    return {"handler": uproot.source.file.MultithreadedFileSource}


def parse_root_url(url: str) -> tuple[str, str]:
    """``(server, path)`` of an XRootD URL ``root://server[:port]//absolute/path``."""
    if not url.startswith(("root://", "roots://")):
        raise InputError(f"{url}: not an XRootD URL (root://server//path)")
    rest = url.split("://", 1)[1]
    server, sep, path = rest.partition("/")
    if not server or not sep or not path.startswith("/"):
        raise InputError(f"{url}: malformed XRootD URL; expected root://server[:port]//path "
                         "(two slashes before an absolute path)")
    return server, path


def check_remote_support(files: Sequence[str]) -> None:
    """Fail early, with the fix, when XRootD files are listed but the extra is missing."""
    remote = [f for f in files if f.startswith(("root://", "roots://"))]
    if not remote:
        return
    for url in remote:
        parse_root_url(url)
    try:
        import fsspec_xrootd  # noqa: F401
    except ImportError:
        raise InputError(
            f"{len(remote)} input file(s) are XRootD URLs (e.g. {remote[0]}); reading them "
            "needs the XRootD extra: `pip install fsspec-xrootd` plus the XRootD client "
            "(`conda install -c conda-forge xrootd`, or an lxplus/CMSSW environment), and a "
            "valid grid proxy (`voms-proxy-init -voms cms`)") from None


def read_filelist(path: str | Path) -> list[str]:
    """Read a file list: one path or URL per line; blank lines and ``#`` comments ignored.

    Relative paths are taken relative to the list's directory. Every local file must exist.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file list {path} does not exist")
    files: list[str] = []
    for line in path.read_text().splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry.startswith("file://"):
            entry = entry[len("file://"):]
        if not is_remote(entry):
            entry = str((path.parent / entry).resolve())
        elif entry.startswith(("root://", "roots://")):
            parse_root_url(entry)
        files.append(entry)
    if not files:
        raise InputError(f"file list {path} lists no input files")
    dupes = sorted({f for f in files if files.count(f) > 1})
    if dupes:
        raise InputError(f"file list {path} lists files more than once: {_listing(dupes)}")
    missing = [f for f in files if not is_remote(f) and not Path(f).is_file()]
    if missing:
        raise InputError(f"file list {path}: {len(missing)} input file(s) do not exist: "
                         f"{_listing(missing)}")
    return files


def assign_processes(files: Sequence[str], processes: Sequence[Process]) -> dict[str, list[str]]:
    """Group files by the process whose pattern matches the path (exactly one must match)."""
    groups: dict[str, list[str]] = {p.name: [] for p in processes}
    unmatched, ambiguous = [], []
    for f in files:
        hits = [p.name for p in processes if fnmatch.fnmatchcase(f, p.pattern)]
        if not hits:
            unmatched.append(f)
        elif len(hits) > 1:
            ambiguous.append(f"{f} (matches {', '.join(hits)})")
        else:
            groups[hits[0]].append(f)
    patterns = ", ".join(f"{p.name}: {p.pattern!r}" for p in processes)
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} file(s) match no process pattern: "
                        f"{_listing(unmatched)}")
    if ambiguous:
        problems.append(f"{len(ambiguous)} file(s) match more than one process: "
                        f"{_listing(ambiguous)}")
    if problems:
        raise InputError("; ".join(problems) + f". Process patterns are {patterns}")
    return {name: fs for name, fs in groups.items() if fs}


def inspect_files(files: Sequence[str], tree_name: str,
                  branches: Sequence[str] | Callable[[set[str]], tuple[list[str], list[str]]],
                  workers: int = 4) -> dict[str, int]:
    """Open every file before any work starts; return entries per file.

    ``branches`` lists the required branches, or is a function returning ``(needed,
    missing)`` given the branches a file has. Every needed branch is checked for truncation
    (each basket must lie inside the file) and its last entry is read (decompressing its
    last basket). Raises :class:`InputError` listing every unreadable or truncated file,
    missing tree, missing branch and empty tree. The last basket is decompressed only where
    it is at most ``LAST_BASKET_CHECK`` bytes (in files of one basket per branch it is the
    whole branch; a corrupt one there is reported by the processor, naming the file).
    """
    if not callable(branches):
        required = list(branches)
        branches = lambda available: ([b for b in required if b in available],  # noqa: E731
                                      [b for b in required if b not in available])
    check_remote_support(files)
    options = uproot_options(files)

    def check(path: str) -> tuple[str, int | None, str | None]:
        try:
            with uproot.open(path, **options) as f:
                if tree_name not in f:
                    return path, None, f"{path}: no tree '{tree_name}' (found " \
                                       f"{sorted(f.keys(cycle=False))[:10]})"
                tree = f[tree_name]
                if not isinstance(tree, uproot.TTree):
                    return path, None, f"{path}: '{tree_name}' is a {type(tree).__name__}, " \
                                       "not a TTree"
                available = set(tree.keys(recursive=True, full_paths=False)) | set(tree.keys())
                needed, missing = branches(available)
                if missing:
                    return path, None, f"{path}: missing branch(es) {missing} in tree " \
                                       f"'{tree_name}'"
                if tree.num_entries == 0:
                    return path, None, f"{path}: tree '{tree_name}' has no entries"
                problem = _truncation(f, tree, needed)
                if problem:
                    return path, None, f"{path}: {problem}"
                return path, int(tree.num_entries), None
        except Exception as exc:  # any reading problem is reported with its file
            return path, None, f"{path}: cannot be read as a ROOT file ({type(exc).__name__}: " \
                               f"{' '.join(str(exc).split())})"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(check, files))
    problems = [msg for _, _, msg in results if msg]
    if problems:
        raise InputError(f"{len(problems)} input file problem(s):\n  " +
                         "\n  ".join(problems[:MAX_LISTED]) +
                         (f"\n  ... and {len(problems) - MAX_LISTED} more"
                          if len(problems) > MAX_LISTED else ""))
    return {path: n for path, n, _ in results}


def _truncation(file: object, tree: uproot.TTree, branches: Sequence[str]) -> str | None:
    """Why the needed ``branches`` cannot be read completely (None if they can): baskets
    beyond the end of the file, or a last basket that does not decompress."""
    size = getattr(file.file.source, "num_bytes", None)
    for name in branches:
        branch = tree[name]
        n = branch.num_baskets
        if not n or size is None:
            continue
        seek = np.asarray(branch.member("fBasketSeek"))[:n].astype(np.int64)
        length = np.asarray(branch.member("fBasketBytes"))[:n].astype(np.int64)
        end = int((seek + length).max())
        if end > size:
            return (f"truncated file: branch '{name}' has data up to byte {end:,} but the file "
                    f"has {size:,} bytes (an interrupted copy or write?)")
    small = [name for name in branches if tree[name].num_baskets and
             tree[name].basket_compressed_bytes(tree[name].num_baskets - 1) <= LAST_BASKET_CHECK]
    try:
        if small:
            tree.arrays(small, entry_start=tree.num_entries - 1, library="np")
    except Exception as exc:
        return f"corrupt file: the last entry of its branches cannot be read " \
               f"({type(exc).__name__}: {' '.join(str(exc).split())})"
    return None


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")
