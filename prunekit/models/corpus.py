"""Offline English corpora for distillation, built from text already on the machine.

:func:`package_corpus` reads one or more *sources* (:data:`SOURCES`), splits their text into sentences,
drops duplicates and every copy of the evaluation sentences, shuffles with a seed and caches the result:

- ``packages``: the prose shipped with the installed Python packages (docstrings, documents, licences,
  package descriptions) and the standard library's docstrings and reference manual: large, technical;
- ``wordnet``: the example sentences of the WordNet lexical database (Debian ``wordnet-base``), everyday
  usage such as "These pictures bring back sad memories.";
- ``fortunes``: the fortune-cookie epigrams, quotations and jokes of Debian's ``fortunes`` package.

A source that is asked for but not installed is an error naming the package to install, never an empty
contribution.

>>> sorted(SOURCES)
['fortunes', 'packages', 'wordnet']
>>> sents = package_corpus(100, sources=("packages",))  # doctest: +SKIP
>>> len(sents), len(set(sents))  # doctest: +SKIP
(100, 100)
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prunekit.errors import ConfigError

#: bumped when the corpus builder changes: part of the cache key, so a new rule never reads an old cache
CORPUS_VERSION = 2
_DOC_SUFFIXES = (".rst", ".md", ".txt")
_LICENCE = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", re.IGNORECASE)
_DOCSTRING = re.compile(r'"""(.*?)"""', re.DOTALL)
_MARKUP = re.compile(r"``|`|\*\*|:[a-z]+:|\[\d+\]|https?://\S+")
_MAX_FILE = 400_000  # bytes: generated tables and vendored bundles above this are skipped
#: where Debian installs the two system sources (module constants, so tests can point elsewhere)
WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
_WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_QUOTED = re.compile(r'"([^"]+)"')


_DOC_MODULES = (
    "collections", "json", "argparse", "logging", "pathlib", "itertools", "functools", "email", "http.client",
    "urllib.request", "unittest", "threading", "subprocess", "asyncio", "datetime", "random", "statistics",
    "textwrap", "csv", "sqlite3", "shutil", "tempfile", "zipfile", "socket", "decimal", "fractions",
    "os", "io", "re", "string", "typing", "inspect", "pickle", "copy", "heapq", "bisect", "calendar",
    "contextlib", "dataclasses", "enum", "abc", "ftplib", "smtplib", "imaplib", "mailbox", "tarfile",
    "gzip", "bz2", "lzma", "configparser", "difflib", "pprint", "queue", "sched", "selectors", "signal",
    "ssl", "struct", "codecs", "locale", "gettext", "platform", "traceback", "warnings", "weakref",
    "xml.dom.minidom", "xml.etree.ElementTree", "html.parser", "http.server", "urllib.parse", "wave",
    "multiprocessing", "concurrent.futures", "operator", "numbers", "math", "cmath", "array", "pdb",
    "doctest", "timeit", "trace", "zoneinfo", "uuid", "secrets", "hashlib", "hmac", "base64", "binascii",
)  # fmt: skip


def _sentences(doc: str) -> list[str]:
    out = []
    for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
        n = len(s.split())
        if 6 <= n <= 40 and s[0].isupper() and s.endswith(".") and not re.search(r"[>{}\[\]=_]|\(\)", s):
            out.append(s)
    return out


def unlabeled_text(limit: int | None = None) -> list[str]:
    """Real English sentences for distillation, offline: prose from the Python standard library's docstrings
    and from its reference manual (``pydoc_data.topics``), in a fixed order, without duplicates.

    >>> len(unlabeled_text(50))
    50
    """
    import importlib

    out: list[str] = []
    for name in _DOC_MODULES:
        mod = importlib.import_module(name)
        docs = [mod.__doc__ or ""]
        with warnings.catch_warnings():  # typing.io / typing.re warn when their docstring is read
            warnings.simplefilter("ignore", DeprecationWarning)
            docs += [o.__doc__ for o in vars(mod).values() if callable(o) and isinstance(o.__doc__, str)]
        for doc in docs:
            out += _sentences(doc)
    from pydoc_data.topics import topics

    for key in sorted(topics):
        out += _sentences(topics[key])
    out = list(dict.fromkeys(out))
    return out[:limit] if limit is not None else out


@dataclass(frozen=True)
class Source:
    """One corpus source: the files it reads under its root, the text of one file, how to install it."""

    files: Callable[[Path], list[Path]]
    text: Callable[[Path], Iterator[str]]
    default_root: Callable[[], Path]
    install: str


def _key(sentence: str) -> str:
    """Case- and punctuation-free form of a sentence: equal keys are exact duplicates."""
    return " ".join(re.findall(r"[a-z0-9]+", sentence.lower()))


def _mostly_letters(sentence: str) -> bool:
    letters = sum(c.isalpha() or c == " " for c in sentence)
    return letters >= 0.9 * len(sentence)


def _package_files(root: Path) -> list[Path]:
    """Every documentation file (``.rst``/``.md``/``.txt``, licences, ``METADATA``) and Python source file
    under ``root`` (a site-packages directory), sorted by path."""
    files = []
    for path in root.rglob("*"):
        name = path.name
        wanted = name.endswith((*_DOC_SUFFIXES, ".py")) or name == "METADATA" or bool(_LICENCE.match(name))
        if wanted and path.is_file() and path.stat().st_size <= _MAX_FILE:
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _package_text(path: Path) -> Iterator[str]:
    """The prose of one file: a Python file's triple-quoted strings, a document's text, markup removed."""
    text = path.read_text(encoding="utf-8", errors="ignore")
    if path.suffix == ".py":
        text = "\n\n".join(_DOCSTRING.findall(text))
    yield _MARKUP.sub("", text)


def _as_sentence(fragment: str) -> str:
    """A usage example as a sentence: first letter capitalised, a full stop added where none ends it."""
    fragment = fragment.strip()
    if not fragment:
        return fragment
    fragment = fragment[0].upper() + fragment[1:]
    return fragment if fragment[-1] in ".!?" else fragment + "."


def _wordnet_files(root: Path) -> list[Path]:
    return [root / name for name in _WORDNET_FILES if (root / name).is_file()]


def _wordnet_text(path: Path) -> Iterator[str]:
    """The quoted usage examples of each synset's gloss (after ``|``) in a WordNet ``data.*`` file."""
    for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
        if line.startswith("  ") or "|" not in line:  # the licence header, or no gloss
            continue
        for example in _QUOTED.findall(line.split("|", 1)[1]):
            yield _as_sentence(example)


def wordnet_lemmas(root: str | Path | None = None) -> list[str]:
    """Every word and phrase WordNet lists (its ``index.*`` lemmas and ``*.exc`` inflected forms, underscores
    as spaces), sorted: about 150,000 entries, for a vocabulary cut
    (:func:`prunekit.models.vocab.prune_vocab`) that should keep English words its corpus never used.
    ConfigError when WordNet is not installed."""
    base = Path(root) if root is not None else WORDNET_DIR
    files = sorted(base.glob("index.*")) + sorted(base.glob("*.exc")) if base.is_dir() else []
    files = [f for f in files if f.name != "index.sense"]
    if not files:
        raise ConfigError(f"no WordNet index files in {base}: apt-get install wordnet-base")
    words: set[str] = set()
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
            if line.startswith(" "):  # the licence header
                continue
            fields = line.split() if path.suffix == ".exc" else line.split()[:1]
            words.update(f.replace("_", " ") for f in fields)
    return sorted(words)


def _fortune_files(root: Path) -> list[Path]:
    """The fortune databases (text files; not their ``.dat`` indexes or ``.u8`` links), sorted by name."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and not p.is_symlink() and not p.suffix)


def _fortune_text(path: Path) -> Iterator[str]:
    """Each fortune (entries are separated by ``%`` lines), attribution lines (``-- Author``) dropped."""
    text = path.read_text(encoding="utf-8", errors="ignore")
    for entry in re.split(r"^%\s*$", text, flags=re.MULTILINE):
        yield " ".join(line for line in entry.splitlines() if not line.lstrip().startswith("--"))


def _site_packages() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"])


SOURCES: dict[str, Source] = {
    "packages": Source(_package_files, _package_text, _site_packages, "pip install the packages"),
    "wordnet": Source(_wordnet_files, _wordnet_text, lambda: WORDNET_DIR, "apt-get install wordnet-base"),
    "fortunes": Source(_fortune_files, _fortune_text, lambda: FORTUNES_DIR, "apt-get install fortunes"),
}


def _near_duplicate(words: frozenset[str], references: list[frozenset[str]]) -> bool:
    """True when the word set overlaps one of ``references`` by Jaccard >= 0.8 (near-exact copies)."""
    return any(len(words & ref) >= 0.8 * len(words | ref) for ref in references)


def _fingerprint(name: str, root: Path, files: list[Path]) -> list:
    """What the cache key hashes for a source: installed distributions (packages) or file names and sizes."""
    if name == "packages":
        from importlib import metadata

        return sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions(path=[str(root)]))
    return [[p.name, p.stat().st_size] for p in files]


def package_corpus(
    limit: int | None = None,
    *,
    exclude: Sequence[str] = (),
    sources: Sequence[str] = ("packages",),
    max_sentences: int = 200_000,
    seed: int = 0,
    root: str | Path | None = None,
    cache: str | Path | None = None,
) -> list[str]:
    """A large offline English corpus for distillation from ``sources`` (names in :data:`SOURCES`).

    ``packages`` reads, in sorted path order under ``root`` (default: this interpreter's site-packages),
    the triple-quoted strings (docstrings) of every Python file, every ``.rst``/``.md``/``.txt`` document,
    every licence/notice file and every ``METADATA`` (package descriptions), files over 400 kB skipped; then
    the standard-library text of :func:`unlabeled_text`. ``wordnet`` reads the
    usage examples of WordNet's glosses (first letter capitalised, a full stop added), ``fortunes`` every
    fortune without its attribution line. The text is split into sentences (6-40 words, a capital first
    and a full stop last, no code characters, at least 90 % letters and spaces), exact duplicates (case and
    punctuation ignored) dropped, and every sentence whose words overlap one of ``exclude`` (the evaluation
    sentences) by Jaccard >= 0.8, or that equals one, removed. The rest is shuffled with ``seed`` and cut
    to ``max_sentences``; ``limit`` takes the first ones of that.

    The result is a pure function of the files and the arguments; it is cached as one UTF-8 line per
    sentence in ``cache`` (default ``$XDG_CACHE_HOME/prunekit`` or ``~/.cache/prunekit``) under a name
    hashing the sources (installed distributions, or file names and sizes), the arguments and
    :data:`CORPUS_VERSION`. On this project's environment ``packages`` holds about 112,000 sentences
    (docs/RESULTS.md, section ``minilm-compress``).
    """
    import hashlib
    import json
    import random

    from prunekit._atomic import write_text

    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        raise ConfigError(f"corpus sources must be some of {', '.join(sorted(SOURCES))}, got {list(sources)}")
    reads = []
    for name in dict.fromkeys(sources):
        src = SOURCES[name]
        base = Path(root) if root is not None and name == "packages" else src.default_root()
        files = src.files(base) if base.is_dir() else []
        if not files:
            raise ConfigError(f"corpus source {name!r} has no files under {base}: {src.install}")
        reads.append((name, src, base, files))
    excluded = sorted(_key(s) for s in exclude)
    stamp = [CORPUS_VERSION, excluded, max_sentences, seed]
    stamp += [[name, str(base), _fingerprint(name, base, files)] for name, _, base, files in reads]
    digest = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    path = (Path(cache) if cache is not None else _cache_dir()) / f"corpus-{digest}.txt"
    if path.is_file():
        out = path.read_text(encoding="utf-8").splitlines()
        return out[:limit] if limit is not None else out
    seen = set(excluded)
    refs = [frozenset(k.split()) for k in excluded]
    out = []
    for doc in _documents(reads):
        for s in _sentences(doc):
            k = _key(s)
            if k in seen or not _mostly_letters(s):
                continue
            seen.add(k)
            if not _near_duplicate(frozenset(k.split()), refs):
                out.append(s)
    random.Random(seed).shuffle(out)
    out = out[:max_sentences]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(s + "\n" for s in out))
    return out[:limit] if limit is not None else out


def _documents(reads: list[tuple[str, Source, Path, list[Path]]]) -> Iterator[str]:
    for name, src, _, files in reads:
        for p in files:
            yield from src.text(p)
        if name == "packages":
            yield from unlabeled_text()


def _cache_dir() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prunekit"
