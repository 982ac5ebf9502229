"""Vocabulary pruning: remove the embedding rows of tokens a corpus never produces, and those tokens.

A small transformer spends much of its size on its token embeddings: all-MiniLM-L6-v2 keeps 11.7 M of its
22.7 M parameters in one row per token of a 30,522-token WordPiece vocabulary, and a cut of the residual
stream narrows those rows but keeps them all. :func:`prune_vocab` counts the tokens the tokenizer makes of
``texts`` and keeps those seen ``min_count`` times or more, the special tokens and (``keep_chars``) every
one-character piece, so any word spelled in those characters still tokenizes. The cut is a
:class:`~prunekit.plan.Plan` like any structural cut (rows of the input embedding, and of the output
embedding and its bias where the model has one; ``config.vocab_size``; ``meta["vocab"]``), so
:func:`prunekit.save` / :func:`prunekit.load` replay it, and the tokenizer keeps the kept tokens numbered
in their old order (:func:`trim_tokenizer`).

Exactness: WordPiece splits a word greedily, longest piece in the vocabulary first, so a piece it did not
pick never changes a split. A text all of whose pieces are kept therefore tokenizes to the same pieces
after the cut, and the model's output for it is unchanged; a text with a removed piece is split into
smaller pieces, which changes its output: :attr:`VocabCut.texts_covered` says how much of ``texts`` that was,
:func:`coverage` measures it on other text. WordPiece (the BERT family) and Unigram (SentencePiece: XLM-R, T5)
tokenizers: a Unigram tokenizer takes the likeliest split into pieces of its vocabulary, which stays the
likeliest when pieces it did not use go. A BPE merge table passes through pieces no output shows, so
dropping unseen pieces would break words it still splits: refused.

>>> from prunekit.models.corpus import package_corpus
>>> from prunekit.models.sentence import load_minilm
>>> emb = load_minilm()                                                    # doctest: +SKIP
>>> texts = package_corpus(sources=("wordnet", "fortunes"))               # doctest: +SKIP
>>> cut, tokenizer = prune_vocab(emb, texts)                               # doctest: +SKIP
>>> cut.kept, cut.dropped, cut.params_removed, emb.tokenizer is tokenizer  # doctest: +SKIP
(21549, 8973, 3445632, True)
"""

from __future__ import annotations

import collections
import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from prunekit._jsondata import JsonData
from prunekit.errors import ConfigError, PlanError
from prunekit.plan import Plan
from prunekit.structured.cut import apply
from prunekit.structured.plan_attrs import complete_size_attrs

__all__ = [
    "VocabCut",
    "coverage",
    "kept_ids",
    "prune_vocab",
    "replay_vocab",
    "trim_tokenizer",
    "vocab_plan",
]

META = "vocab"  #: the plan's ``meta`` key: ``{"size": old vocabulary size, "kept": kept token count}``


@dataclass
class VocabCut(JsonData):
    """What :func:`prune_vocab` did: token counts before / after, params removed, and the share of the
    corpus texts whose tokens were all kept (which tokenize and embed exactly as before)."""

    size: int  #: the vocabulary before
    kept: int
    dropped: int
    params_removed: int
    texts_covered: float  #: share of the corpus texts every one of whose tokens is kept
    plan: dict[str, Any]  #: the cut, :meth:`prunekit.plan.Plan.to_dict`

    def kept_ids(self) -> list[int]:
        """The old ids of the kept tokens, in order (their new ids are their positions)."""
        return kept_ids(Plan.from_dict(self.plan))


def _tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            "vocabulary pruning needs a fast (tokenizers-backed) tokenizer; "
            f"{type(tokenizer).__name__} is not"
        )
    data = json.loads(backend.to_str())
    kind = data.get("model", {}).get("type")
    if kind not in ("WordPiece", "Unigram"):
        raise ConfigError(
            f"vocabulary pruning supports WordPiece (BERT family) and Unigram (SentencePiece: XLM-R, T5) "
            f"tokenizers; {type(tokenizer).__name__} is {kind}: a BPE merge table passes through pieces no "
            "text shows, so they cannot be dropped"
        )
    return data


def _pieces(model: dict[str, Any]) -> dict[int, str]:
    """Token id -> piece of a tokenizer.json ``model`` (WordPiece: a dict piece -> id; Unigram: a list of
    ``[piece, score]`` in id order)."""
    if model["type"] == "Unigram":
        return {i: piece for i, (piece, _score) in enumerate(model["vocab"])}
    return {i: piece for piece, i in model["vocab"].items()}


def _char(piece: str, model: dict[str, Any]) -> bool:
    """Is ``piece`` one character (WordPiece's ``##`` continuation prefix, SentencePiece's word mark
    dropped)?"""
    if model["type"] == "Unigram":
        return len(piece.removeprefix("\u2581")) <= 1
    return len(piece.removeprefix(model.get("continuing_subword_prefix", "##"))) == 1


def _trim_model(model: dict[str, Any], kept: list[int], new: dict[int, int]) -> None:
    """Keep only the ``kept`` pieces of a tokenizer.json ``model``, renumbered by ``new``."""
    if model["type"] == "Unigram":
        vocab = model["vocab"]
        model["vocab"] = [vocab[old] for old in kept if old < len(vocab)]
        if model.get("unk_id") is not None:
            model["unk_id"] = new[int(model["unk_id"])]
        return
    pieces = _pieces(model)
    model["vocab"] = {pieces[old]: new[old] for old in kept if old in pieces}


def _token_ids(tokenizer: Any, texts: Sequence[str], batch_size: int = 1024) -> list[list[int]]:
    """The token ids of each text (special tokens included), tokenized in batches."""
    return [ids for i in range(0, len(texts), batch_size)
            for ids in tokenizer(list(texts[i : i + batch_size]))["input_ids"]]  # fmt: skip


def _covered(ids: list[list[int]], keep: set[int]) -> float:
    return sum(set(s) <= keep for s in ids) / max(len(ids), 1)


def _ids_to_keep(tokenizer: Any, counts: collections.Counter, min_count: int, keep_chars: bool) -> list[int]:
    data = _tokenizer_json(tokenizer)
    keep = {i for i, n in counts.items() if n >= min_count}
    keep |= {int(i) for i in tokenizer.all_special_ids}
    keep |= {int(t["id"]) for t in data.get("added_tokens", [])}
    if data["model"].get("unk_id") is not None:
        keep.add(int(data["model"]["unk_id"]))
    if keep_chars:
        keep |= {i for i, piece in _pieces(data["model"]).items() if _char(piece, data["model"])}
    return sorted(keep)


def _remap_ids(node: Any, new: dict[int, int]) -> Any:
    """``node`` (a post-processor's JSON) with every token id renumbered: ``ids`` lists, ``[token, id]``
    pairs (BertProcessing's ``cls`` / ``sep``)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                out[key] = [new[int(i)] for i in value]
            elif key in ("cls", "sep") and isinstance(value, list) and len(value) == 2:
                out[key] = [value[0], new[int(value[1])]]
            else:
                out[key] = _remap_ids(value, new)
        return out
    if isinstance(node, list):
        return [_remap_ids(v, new) for v in node]
    return node


def trim_tokenizer(tokenizer: Any, kept: Sequence[int]) -> Any:
    """A copy of ``tokenizer`` holding only the tokens ``kept`` (old ids), renumbered ``0 .. len-1`` in their
    old order; every special token must be among them. Written with ``save_pretrained`` and read back with
    ``AutoTokenizer``, so its class and settings are the original's."""
    from transformers import AutoTokenizer

    data = _tokenizer_json(tokenizer)
    kept = sorted(int(i) for i in kept)
    new = {old: n for n, old in enumerate(kept)}
    missing = [t for t in tokenizer.all_special_tokens if tokenizer.convert_tokens_to_ids(t) not in new]
    if missing:
        raise ConfigError(f"trim_tokenizer: the kept ids leave out special tokens {missing}")
    _trim_model(data["model"], kept, new)
    for token in data.get("added_tokens", []):
        token["id"] = new[int(token["id"])]
    data["post_processor"] = _remap_ids(data.get("post_processor"), new)
    if isinstance(data.get("padding"), dict) and "pad_id" in data["padding"]:
        data["padding"]["pad_id"] = new[int(data["padding"]["pad_id"])]
    with tempfile.TemporaryDirectory(prefix="prunekit-vocab-") as tmp:
        written = tokenizer.save_pretrained(tmp)
        for name in written:  # the slow tokenizer's vocabulary files would disagree with the trimmed one
            if Path(name).name not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                Path(name).unlink(missing_ok=True)
        Path(tmp, "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
        trimmed = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
    if len(trimmed) != len(kept):
        raise ConfigError(f"trim_tokenizer: the rebuilt tokenizer has {len(trimmed)} tokens, not {len(kept)}")
    return trimmed


def _encoder(model: nn.Module) -> tuple[str, nn.Module]:
    """The Hugging Face model inside ``model`` (a SentenceEmbedder's ``encoder``, or ``model`` itself)."""
    for name, module in model.named_modules():
        if hasattr(module, "get_input_embeddings") and hasattr(module, "config"):
            return name, module
    raise ConfigError(
        f"vocabulary pruning needs a Hugging Face model (get_input_embeddings); {type(model).__name__} is not"
    )


def vocab_plan(model: nn.Module, kept: Sequence[int]) -> Plan:
    """The plan keeping the embedding rows ``kept`` (old token ids) of ``model``'s Hugging Face model: its
    input embedding, its output embedding (weight rows, bias) where it has one, and ``config.vocab_size``."""
    prefix, encoder = _encoder(model)
    names = {id(t): n for n, t in model.named_parameters()}
    rows = encoder.get_input_embeddings()
    if not isinstance(rows, nn.Embedding):
        raise ConfigError(
            f"vocabulary pruning needs an nn.Embedding input embedding, not {type(rows).__name__}"
        )
    size = rows.num_embeddings
    kept = sorted({int(i) for i in kept})
    if not kept or kept[0] < 0 or kept[-1] >= size:
        raise ConfigError(f"vocabulary pruning: kept token ids must lie in 0 .. {size - 1}")
    removed = sorted(set(range(size)) - set(kept))
    tensors = [rows.weight]
    out = encoder.get_output_embeddings() if hasattr(encoder, "get_output_embeddings") else None
    if out is not None:
        tensors += [t for t in (out.weight, getattr(out, "bias", None)) if t is not None]
    plan = Plan(meta={META: {"size": size, "kept": len(kept)}})
    for t in tensors:
        name = names[id(t)]
        if t.shape[0] != size:
            raise ConfigError(f"vocabulary pruning: {name} has {t.shape[0]} rows, the input embedding {size}")
        plan.removals[name] = {0: removed}
        plan.signature[name] = list(t.shape)
    if getattr(encoder.config, "vocab_size", None) == size:
        plan.attrs[prefix] = {"config.vocab_size": [size, len(kept)]}
    return complete_size_attrs(plan, model)


def coverage(tokenizer: Any, texts: Sequence[str], kept: Iterable[int]) -> float:
    """Share of ``texts`` every one of whose tokens (``tokenizer``'s, before the cut) is in ``kept``."""
    return _covered(_token_ids(tokenizer, texts), set(kept))


def kept_ids(plan: Plan) -> list[int]:
    """The old ids of the tokens a vocabulary plan (:func:`vocab_plan`) keeps, in order; PlanError for a
    plan that is not one or whose record does not match its cut."""
    name = next(iter(plan.removals), None)
    size = plan.meta.get(META, {}).get("size")
    if name is None or not isinstance(size, int) or size != plan.signature.get(name, [None])[0]:
        raise PlanError("a vocabulary plan's record does not match its cut")
    removed = set(plan.removals[name].get(0, ()))
    return [i for i in range(size) if i not in removed]


def prune_vocab(
    model: nn.Module,
    texts: Sequence[str],
    *,
    tokenizer: Any = None,
    min_count: int = 1,
    keep_chars: bool = True,
) -> tuple[VocabCut, Any]:
    """Keep only the tokens ``texts`` use (module docstring); ``model`` is cut in place.

    ``model``: a :class:`~prunekit.models.sentence.SentenceEmbedder` (its tokenizer is replaced by the
    trimmed one) or a Hugging Face model with ``tokenizer`` given. Returns the :class:`VocabCut` and the
    trimmed tokenizer (save it with the model: the old one gives the wrong ids). Nothing is changed when an
    argument is refused (ConfigError).
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("prune_vocab: pass the model's tokenizer (tokenizer=...)")
    if not isinstance(min_count, int) or min_count < 1:
        raise ConfigError(f"prune_vocab: min_count must be an integer >= 1, got {min_count!r}")
    if not texts:
        raise ConfigError(
            "prune_vocab: texts is empty; give the text the model will see (it decides the vocab)"
        )
    ids = _token_ids(tokenizer, texts)
    counts = collections.Counter(i for s in ids for i in s)
    kept = _ids_to_keep(tokenizer, counts, min_count, keep_chars)
    plan = vocab_plan(model, kept)
    trimmed = trim_tokenizer(tokenizer, kept)
    before = sum(p.numel() for p in model.parameters())
    apply(model, plan)
    if getattr(model, "tokenizer", None) is tokenizer:
        model.tokenizer = trimmed
    size = plan.meta[META]["size"]
    cut = VocabCut(
        size=size, kept=len(kept), dropped=size - len(kept),
        params_removed=before - sum(p.numel() for p in model.parameters()),
        texts_covered=_covered(ids, set(kept)), plan=plan.to_dict(),
    )  # fmt: skip
    return cut, trimmed


def replay_vocab(model: nn.Module, plans: Sequence[Plan]) -> None:
    """After a checkpoint's plans were applied: trim ``model.tokenizer`` (a SentenceEmbedder's) to the rows a
    vocabulary plan kept, so the rebuilt model and its tokenizer agree again."""
    tokenizer = getattr(model, "tokenizer", None)
    for plan in plans:
        if META in plan.meta and tokenizer is not None:
            tokenizer = trim_tokenizer(tokenizer, kept_ids(plan))
    if tokenizer is not getattr(model, "tokenizer", None):
        model.tokenizer = tokenizer
