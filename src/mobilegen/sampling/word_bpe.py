"""A tiny CLIP byte-level BPE for a closed vocabulary: every byte alone and as a word end, one
merge chain per word (so each word becomes one token), then the two specials. The shipped
text-to-image pipeline's tokenizer (scripts/train_text2image.py) and the tests' random pipelines
are written with it."""

from __future__ import annotations

SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (as in GPT-2)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def word_bpe(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """-> (vocab, merges) as vocab.json and merges.txt (without its version line) hold them."""
    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[str] = []
    for word in words:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pair = f"{parts[0]} {parts[1]}"
            if pair not in merges:
                merges.append(pair)
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    for special in SPECIALS:
        vocab[special] = len(vocab)
    return vocab, merges
