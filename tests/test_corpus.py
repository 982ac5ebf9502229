"""The offline distillation corpus built from the installed packages' prose: deterministic, disjoint from
the evaluation sentences, large."""

from __future__ import annotations

from pathlib import Path

from prunekit.models.corpus import _key, package_corpus

SENTENCES = Path(__file__).resolve().parents[1] / "bench" / "data" / "sentences.txt"
EVAL = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()]


def _fake_site(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text(
        '"""The first module explains what the package does for its users.\n\n'
        'It also says which options change the default behaviour of the tool."""\n'
        'def f():\n    """Return the value that the caller asked for in the request."""\n'
    )
    (root / "pkg" / "README.md").write_text(
        "This document describes how to install the package on a new machine. "
        f"{EVAL[0]} {EVAL[1].upper()} x = f(a, b) is not a sentence.\n"
        "The first module explains what the package does for its users!\n"
    )
    (root / "LICENSE.txt").write_text("Permission is hereby granted to use this software for any purpose.\n")
    return root


def test_corpus_is_deterministic_and_drops_eval_sentences_and_duplicates(tmp_path):
    root = _fake_site(tmp_path / "site")
    a = package_corpus(root=root, exclude=EVAL, cache=tmp_path / "a")
    b = package_corpus(root=root, exclude=EVAL, cache=tmp_path / "b")  # built again, not read back
    assert a == b and len(a) == len(set(a))
    assert "This document describes how to install the package on a new machine." in a
    assert "Permission is hereby granted to use this software for any purpose." in a
    assert "Return the value that the caller asked for in the request." in a
    keys = {_key(s) for s in a}
    assert not keys & {_key(s) for s in EVAL}  # the eval sentences in README.md are gone, upper-cased too
    assert not any("=" in s for s in a)
    assert package_corpus(root=root, exclude=EVAL, cache=tmp_path / "a") == a  # the cache gives the same
    assert package_corpus(2, root=root, exclude=EVAL, cache=tmp_path / "a") == a[:2]
    other = package_corpus(root=root, exclude=EVAL, cache=tmp_path / "c", seed=1)
    assert sorted(other) == sorted(a)  # another seed: the same sentences in another order


def test_corpus_near_copies_of_eval_sentences_are_removed(tmp_path):
    words = EVAL[2].rstrip(".").split()
    near = " ".join([*words[:-1], "today."])  # one word of the eval sentence changed
    root = tmp_path / "site"
    root.mkdir()
    (root / "notes.txt").write_text(near + " Another ordinary sentence about files and folders stays here.")
    out = package_corpus(root=root, exclude=EVAL, cache=tmp_path / "cache")
    assert len(words) >= 10  # 13 shared words of 15: Jaccard 0.87
    assert near not in out
    assert "Another ordinary sentence about files and folders stays here." in out


def test_installed_packages_corpus_is_large_and_disjoint_from_eval(tmp_path):
    out = package_corpus(exclude=EVAL, cache=tmp_path)
    assert len(out) > 50_000 and len(out) == len(set(out))
    eval_keys = {_key(s) for s in EVAL}
    assert not any(_key(s) in eval_keys for s in out)


def test_wordnet_and_fortune_sources_give_everyday_sentences(tmp_path, monkeypatch):
    from prunekit.models import corpus

    wordnet, fortunes = tmp_path / "wordnet", tmp_path / "fortunes"
    wordnet.mkdir()
    fortunes.mkdir()
    (wordnet / "data.verb").write_text(
        "  1 This software and database is being provided to you under a licence.\n"
        '00001740 29 v 04 breathe 0 | draw air into, and expel out of, the lungs; "I can breathe better '
        'when the air is clean"; "The patient is respiring"\n'
    )
    (fortunes / "people").write_text(
        "A friend in need is a friend who will help you move house.\n\t\t-- Anonymous\n%\nShort one.\n%\n"
    )
    (fortunes / "people.dat").write_bytes(b"\x00\x01binary index")
    monkeypatch.setattr(corpus, "WORDNET_DIR", wordnet)
    monkeypatch.setattr(corpus, "FORTUNES_DIR", fortunes)
    out = package_corpus(sources=("wordnet", "fortunes"), cache=tmp_path / "cache")
    assert sorted(out) == [
        "A friend in need is a friend who will help you move house.",
        "I can breathe better when the air is clean.",  # capitalised and a full stop added
    ]  # the licence header, the 4-word example, the attribution and the 2-word fortune are not sentences


def test_a_missing_or_unknown_source_is_an_error_naming_what_to_install(tmp_path, monkeypatch):
    import pytest

    from prunekit.errors import ConfigError
    from prunekit.models import corpus

    monkeypatch.setattr(corpus, "FORTUNES_DIR", tmp_path / "absent")
    with pytest.raises(ConfigError, match="apt-get install fortunes"):
        package_corpus(sources=("fortunes",), cache=tmp_path)
    with pytest.raises(ConfigError, match="corpus sources must be some of"):
        package_corpus(sources=("novels",), cache=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_wordnet_lemmas_lists_index_words_and_inflections_not_the_licence(tmp_path):
    import pytest

    from prunekit.errors import ConfigError
    from prunekit.models.corpus import wordnet_lemmas

    (tmp_path / "index.noun").write_text(
        "  1 This software and database is being provided to you under a licence.\n"
        "ice_cream n 1 1 @ 1 0 07611358\nzymurgy n 1 1 @ 1 0 06082620\n"
    )
    (tmp_path / "verb.exc").write_text("ate eat\nbreathed breathe\n")
    (tmp_path / "index.sense").write_text("ice_cream%1:13:00:: 07611358 1 0\n")
    assert wordnet_lemmas(tmp_path) == ["ate", "breathe", "breathed", "eat", "ice cream", "zymurgy"]
    with pytest.raises(ConfigError, match="apt-get install wordnet-base"):
        wordnet_lemmas(tmp_path / "absent")
