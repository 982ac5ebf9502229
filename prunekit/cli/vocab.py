"""``prunekit vocab``: cut a sentence model's vocabulary to the tokens its texts use.

    prunekit vocab sentence:all-MiniLM-L6-v2 --texts my_texts.txt --words --out out/minilm-vocab
    prunekit save out/minilm-vocab --format sentence --out out/minilm-st

The first keeps the tokens of ``my_texts.txt`` and of WordNet's words (a prunekit checkpoint); the second
writes that checkpoint as a directory stock ``SentenceTransformer`` loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._common import (
    JsonOpt,
    ModelSource,
    OutDirOpt,
    app,
    console,
    model_command,
    write_json,
)
from prunekit.errors import ConfigError


def read_texts(paths: list[Path]) -> list[str]:
    """The non-blank lines of each UTF-8 file in ``paths``, in order; ConfigError naming a file that cannot be
    read or holds no text."""
    texts: list[str] = []
    for path in paths:
        try:
            lines = [t.strip() for t in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read --texts {path}: {reason}") from None
        kept = [t for t in lines if t]
        if not kept:
            raise ConfigError(f"--texts {path} holds no text: give one text per line")
        texts += kept
    return texts


@app.command()
@model_command
def vocab(
    source: ModelSource,
    out: OutDirOpt,
    texts: Annotated[
        list[Path] | None,
        typer.Option(
            "--texts",
            metavar="FILE",
            help="A UTF-8 file, one text per line, of the text the model will see (repeatable).",
            dir_okay=False,
        ),
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            "--corpus",
            metavar="SOURCES",
            help="Also the sentences of these offline corpus sources, comma-separated (packages, wordnet, "
            "fortunes; see prunekit.models.corpus).",
        ),
    ] = None,
    words: Annotated[
        bool,
        typer.Option(
            "--words",
            help="Also keep the tokens of WordNet's 150k English words, so words the texts never used still "
            "tokenize as before (apt-get install wordnet-base).",
        ),
    ] = False,
    min_count: Annotated[
        int, typer.Option("--min-count", help="Keep a token only if the texts produce it this often.")
    ] = 1,
    json_path: JsonOpt = None,
) -> None:
    """Remove the token-embedding rows (and tokenizer entries) of the tokens MODEL's texts never produce.

    MODEL is a sentence: model or a checkpoint of one. A text all of whose tokens are kept embeds exactly as
    before; the others are split into smaller pieces. The result is a prunekit checkpoint in --out (`prunekit
    load DIR` trims the tokenizer again); `prunekit save DIR --format sentence` makes a directory stock
    SentenceTransformer loads, with the trimmed tokenizer.
    """
    from prunekit.deploy import save
    from prunekit.models.corpus import package_corpus, wordnet_lemmas
    from prunekit.models.vocab import prune_vocab
    from prunekit.plan import Plan

    if not texts and corpus is None and not words:
        raise ConfigError("give the text the model will see: --texts FILE, --corpus SOURCES and/or --words")
    if min_count < 1:
        raise ConfigError(f"--min-count must be 1 or more, got {min_count}")
    sources = [s for s in (corpus or "").split(",") if s]
    if corpus is not None and not sources:
        raise ConfigError("--corpus is empty: name one or more of packages, wordnet, fortunes")
    given = read_texts(texts or [])
    given += package_corpus(sources=sources) if sources else []
    given += wordnet_lemmas() if words else []
    loaded = source.load(needs_example=False)
    if getattr(loaded.model, "tokenizer", None) is None:
        raise ConfigError(
            f"{source.spec} carries no tokenizer: prunekit vocab takes a sentence: model (or a checkpoint of "
            "one); for another model call prunekit.prune_vocab(model, texts, tokenizer=...)"
        )
    if loaded.spec is None:
        raise ConfigError("a pickled module has no spec to rebuild it from; give a sentence: spec")
    cut, _ = prune_vocab(loaded.model, given, min_count=min_count)
    saved = save(
        loaded.model,
        out,
        spec=loaded.spec,
        plan=[*loaded.plans, Plan.from_dict(cut.plan)],
        metadata={"input_shape": list(loaded.shape), "source": source.spec},
    )
    write_json(json_path, cut.to_dict() | {"texts": len(given), "checkpoint": saved.to_dict()})
    console.print(
        f"kept {cut.kept:,} of {cut.size:,} tokens ({cut.dropped:,} dropped, "
        f"{cut.params_removed:,} parameters removed); {cut.texts_covered:.1%} of the {len(given):,} texts "
        "tokenize exactly as before"
    )
    console.print(
        f"wrote {out} (reload with `prunekit load {out}`; `prunekit save {out} --format sentence --out DIR` "
        "for stock SentenceTransformer)"
    )
