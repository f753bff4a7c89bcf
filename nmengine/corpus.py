"""A deterministic corpus of real English sentences, for calibrating and evaluating text models.

The sentences are not written by anyone on this project: they are taken from the docstrings of the
Python standard library that ships with the running interpreter.  The builder walks a fixed, sorted
list of standard-library modules (:data:`MODULES`); for each module it reads the module docstring and
the docstrings of the public functions, classes and methods *defined in that module* (``__module__``
matches, so re-exports are not visited twice), keeps the first paragraph, splits it into sentences and
keeps those that read as ordinary prose:

* 5 to 40 words, ASCII only, starting with a capital letter and ending with ``.``, ``?`` or ``!``;
* no code or markup (``>>>``, backticks, ``::``, ``=``, ``{``, ``[``, ``_``, ``*``, ``\\``, ``|``,
  ``<``, ``>``, ``#``, ``@``, ``%``, ``$``, ``~``, ``^``) and no doctest or bullet lines;
* no unbalanced parentheses or quotes.

Sentences are normalised (whitespace collapsed), deduplicated case-insensitively and ordered by the
SHA-256 of their text, which mixes topics and lengths while staying reproducible.  Each sentence is
assigned to one split by its hash: roughly one in eight goes to ``"calibration"``, the rest to
``"eval"``, so the splits are disjoint by construction and stable when the corpus grows.

The exact sentences depend on the Python version (docstrings change between releases) but not on
anything else: same interpreter, same corpus.  ``python -OO`` strips docstrings, so the builder
refuses to run there.

Usage::

    from nmengine import corpus
    corpus.sentences(600)                       # the first 600 evaluation sentences
    corpus.sentences(64, split="calibration")   # disjoint from every evaluation sentence
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import warnings
from typing import Iterator, Optional

__all__ = ["MODULES", "SPLITS", "sentences", "build", "split_of", "CorpusError"]

#: The standard-library modules the corpus is drawn from (sorted; side-effect-free to import).
MODULES: tuple[str, ...] = tuple(
    sorted(
        (
            "abc",
            "argparse",
            "ast",
            "asyncio",
            "base64",
            "bdb",
            "binascii",
            "bisect",
            "builtins",
            "bz2",
            "calendar",
            "cmath",
            "cmd",
            "code",
            "codecs",
            "codeop",
            "collections",
            "collections.abc",
            "colorsys",
            "compileall",
            "concurrent.futures",
            "configparser",
            "contextlib",
            "contextvars",
            "copy",
            "copyreg",
            "csv",
            "dataclasses",
            "datetime",
            "decimal",
            "difflib",
            "dis",
            "doctest",
            "email",
            "email.message",
            "email.utils",
            "enum",
            "errno",
            "faulthandler",
            "filecmp",
            "fileinput",
            "fnmatch",
            "fractions",
            "ftplib",
            "functools",
            "gc",
            "getopt",
            "getpass",
            "gettext",
            "glob",
            "graphlib",
            "gzip",
            "hashlib",
            "heapq",
            "hmac",
            "html",
            "html.parser",
            "http",
            "http.client",
            "http.cookiejar",
            "http.cookies",
            "http.server",
            "imaplib",
            "importlib",
            "importlib.metadata",
            "importlib.resources",
            "inspect",
            "io",
            "ipaddress",
            "itertools",
            "json",
            "json.decoder",
            "json.encoder",
            "keyword",
            "linecache",
            "locale",
            "logging",
            "logging.handlers",
            "lzma",
            "mailbox",
            "marshal",
            "math",
            "mimetypes",
            "modulefinder",
            "multiprocessing",
            "multiprocessing.pool",
            "netrc",
            "numbers",
            "operator",
            "optparse",
            "os",
            "os.path",
            "pathlib",
            "pdb",
            "pickle",
            "pickletools",
            "pkgutil",
            "platform",
            "plistlib",
            "poplib",
            "pprint",
            "profile",
            "pstats",
            "py_compile",
            "pyclbr",
            "queue",
            "quopri",
            "random",
            "re",
            "reprlib",
            "rlcompleter",
            "runpy",
            "sched",
            "secrets",
            "selectors",
            "shelve",
            "shlex",
            "shutil",
            "signal",
            "site",
            "smtplib",
            "socket",
            "socketserver",
            "sqlite3",
            "ssl",
            "stat",
            "statistics",
            "string",
            "stringprep",
            "struct",
            "subprocess",
            "symtable",
            "sys",
            "sysconfig",
            "tabnanny",
            "tarfile",
            "tempfile",
            "textwrap",
            "threading",
            "time",
            "timeit",
            "token",
            "tokenize",
            "trace",
            "traceback",
            "tracemalloc",
            "types",
            "typing",
            "unicodedata",
            "unittest",
            "unittest.mock",
            "urllib.error",
            "urllib.parse",
            "urllib.request",
            "urllib.robotparser",
            "uuid",
            "warnings",
            "wave",
            "weakref",
            "webbrowser",
            "xml.dom.minidom",
            "xml.etree.ElementTree",
            "xml.sax",
            "xml.sax.saxutils",
            "xmlrpc.client",
            "xmlrpc.server",
            "zipapp",
            "zipfile",
            "zipimport",
            "zlib",
            "zoneinfo",
        )
    )
)

SPLITS = ("eval", "calibration")

#: One sentence in CALIBRATION_EVERY goes to the calibration split (by hash).
CALIBRATION_EVERY = 8

MIN_WORDS, MAX_WORDS = 5, 40

_BAD = re.compile(r">>>|`|::|[=\{\}\[\]_*\\|<>#@%$~^]|\.\.\.|\bhttps?:|\bwww\.")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ABBREV = re.compile(r"\b(e\.g|i\.e|etc|vs|cf|Mr|Dr|No|approx)\.$", re.IGNORECASE)


class CorpusError(RuntimeError):
    """The corpus cannot be built here (docstrings stripped, too few sentences)."""


def _first_paragraph(doc: str) -> str:
    para = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    return " ".join(para.split())


def _split_sentences(text: str) -> list[str]:
    """Split on ``. `` / ``? `` / ``! `` before a capital letter, not after common abbreviations."""
    parts = _SPLIT.split(text)
    out: list[str] = []
    for p in parts:
        if out and _ABBREV.search(out[-1]):
            out[-1] = f"{out[-1]} {p}"
        else:
            out.append(p)
    return out


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0 and s.count('"') % 2 == 0


def _is_prose(s: str) -> bool:
    words = s.split()
    if not (MIN_WORDS <= len(words) <= MAX_WORDS):
        return False
    if not s.isascii() or not s[0].isupper() or s[-1] not in ".?!":
        return False
    if _BAD.search(s) or not _balanced(s):
        return False
    if s[0].isdigit() or s.startswith(("- ", "Return: ", "Args", "Usage")):
        return False
    # mostly words: at least 75% of the tokens are alphabetic (punctuation allowed at the edges)
    alpha = sum(w.strip(".,;:!?()'\"").isalpha() for w in words)
    return alpha >= 0.75 * len(words)


def _docstrings(module_name: str) -> Iterator[str]:
    """The module's docstring, then its own public members' (sorted by name), classes' methods too."""
    try:
        mod = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - a module missing from this build is skipped
        return
    if isinstance(mod.__doc__, str):
        yield mod.__doc__
    own = getattr(mod, "__name__", module_name)
    for name in sorted(vars(mod)):
        if name.startswith("_"):
            continue
        obj = vars(mod)[name]
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) not in (own, module_name) and module_name != "builtins":
            continue
        doc = getattr(obj, "__doc__", None)
        if isinstance(doc, str):
            yield doc
        if inspect.isclass(obj):
            for mname in sorted(vars(obj)):
                if mname.startswith("_"):
                    continue
                member = vars(obj)[mname]
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                mdoc = getattr(member, "__doc__", None) if inspect.isroutine(member) else None
                if isinstance(mdoc, str):
                    yield mdoc


def _key(s: str) -> str:
    return hashlib.sha256(s.encode("ascii")).hexdigest()


def split_of(sentence: str) -> str:
    """The split (``"eval"`` or ``"calibration"``) a sentence belongs to, from its hash alone."""
    return "calibration" if int(_key(sentence)[:8], 16) % CALIBRATION_EVERY == 0 else "eval"


def _extract() -> tuple[str, ...]:
    """The corpus as this interpreter's modules give it (see :func:`build` for why it runs elsewhere)."""
    if sys.flags.optimize >= 2:
        raise CorpusError("the corpus is made of docstrings, which python -OO strips; run without -OO")
    seen: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases (typing.io, ...) warn when touched
        for module_name in MODULES:
            for doc in _docstrings(module_name):
                for s in _split_sentences(_first_paragraph(inspect.cleandoc(doc))):
                    s = s.strip()
                    if _is_prose(s):
                        seen.setdefault(s.lower(), s)
    return tuple(sorted(seen.values(), key=_key))


@functools.lru_cache(maxsize=1)
def build() -> tuple[str, ...]:
    """All corpus sentences, deduplicated and ordered by SHA-256 (both splits together).

    The docstrings are read in a fresh interpreter (this file run as a script, ``-E -s``: no
    environment variables or user site), because a process's modules are not pristine: libraries
    imported before (a test runner, dask, a web server) replace hooks such as ``threading.excepthook``
    or add members to standard modules, which changed the corpus from one process to the next.
    """
    if sys.flags.optimize >= 2:
        raise CorpusError("the corpus is made of docstrings, which python -OO strips; run without -OO")
    try:
        proc = subprocess.run(
            [sys.executable, "-E", "-s", os.path.abspath(__file__), "--emit"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise CorpusError(f"could not start a clean interpreter to build the corpus: {exc}") from None
    if proc.returncode != 0:
        raise CorpusError(f"building the corpus failed in a clean interpreter: {proc.stderr.strip()[-2000:]}")
    return tuple(json.loads(proc.stdout))


def sentences(n: Optional[int] = None, *, split: str = "eval") -> list[str]:
    """The first ``n`` sentences (all when ``None``) of one split of the corpus.

    Raises :class:`ValueError` for an unknown split or a negative ``n`` and :class:`CorpusError` when
    the split has fewer than ``n`` sentences.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ValueError(f"n must be a non-negative int or None, got {n!r}")
    pool = [s for s in build() if split_of(s) == split]
    if n is None:
        return pool
    if n > len(pool):
        raise CorpusError(f"the {split!r} split has {len(pool)} sentences, {n} were asked for")
    return pool[:n]


if __name__ == "__main__" and sys.argv[1:] == ["--emit"]:  # the clean interpreter of build()
    json.dump(list(_extract()), sys.stdout)
