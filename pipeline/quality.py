"""Quality flags: what is wrong with an answer, per row, from the row and its prompt alone.

Pure, no IO. Each flag is a fact a training-data pipeline filters on (``caption export
--exclude-flag F``)::

    truncated       finish_reason == "length": cut at max_tokens (any status)
    empty           an ok row whose caption is blank
    refusal         the answer starts with a refusal ("I'm sorry, but I can't ...", "As an AI",
                    "抱歉, 我无法 ...", "无法提供 ...", ...): anchored at the start, so a caption
                    that merely mentions "sorry", or says it cannot tell the breed, is not one
    repetition      a looping answer: n-grams of 8 tokens that occur 3 times or more cover half
                    its tokens, or a run of 32 tokens at its end (where a loop cut at max_tokens
                    sits)
    duplicate       the same caption (case, punctuation and spacing aside) as an ok row of a
                    different image (by content: two copies of one picture are not flagged);
                    captions of fewer than 4 tokens never are (a prompt that asks for one word
                    has few possible answers)
    wrong_language  the prompt asks for Chinese ("使用中文", "用中文", "in Chinese") and the
                    answer is not mostly Han characters, or it asks for English ("in English",
                    "用英文") and the answer is mostly Han characters

Tokens are words for alphabetic scripts and single characters for Chinese, Japanese and Korean
(which have no spaces), so one rule covers both. The text flags (refusal, repetition, duplicate,
wrong_language) apply to the answers of free-text prompts: a schema'd prompt's answer is JSON
that passed its schema, and only truncated and empty apply to it.

``flag_table`` flags a whole table at once, in one pass of Python over the answers: 100,000 rows
of ~250-character English and Chinese captions (1% loops, 1% refusals, 1% duplicates) in ~2.6 s
of one core, ~5.5 s at ~630 characters with 5% long loops. A quick probe spares ~95% of the
answers the n-gram count (``_may_loop``).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import pyarrow as pa

FLAGS: tuple[str, ...] = (
    "truncated", "empty", "refusal", "repetition", "duplicate", "wrong_language",
)  # fmt: skip
FLAGS_TYPE = pa.list_(pa.string())

# --- tokens ------------------------------------------------------------------------------------

# Han (CJK ideographs, extensions, compatibility), kana, hangul: one token per character.
_CJK = (
    "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
    "\U00020000-\U0003134f"
)
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+|[^\w\s]")
_DIGIT = re.compile(r"\d")


def tokens(text: str) -> list[str]:
    """``text`` lowercased as tokens: words (letters and digits), single CJK characters, single
    punctuation marks; whitespace dropped."""
    return _TOKEN.findall(text.lower())


# --- repetition --------------------------------------------------------------------------------

NGRAM = 8  # tokens: ~8 English words, ~5 Chinese words
MIN_REPEATS = 3  # an n-gram seen this often is part of a loop
LOOP_SHARE = 0.5  # of all tokens covered by such n-grams: the answer loops
TAIL_LOOP = 4 * NGRAM  # tokens of such n-grams running to the end: the answer ends in a loop
PROBE = 16  # characters: windows of the text looked up again (``_may_loop``)
PROBES = 16
PROBE_HITS = 3


def repetition_share(text: str) -> tuple[float, int]:
    """How much of ``text`` loops: (the share of its tokens covered by n-grams of ``NGRAM``
    tokens that occur ``MIN_REPEATS`` times or more, the length in tokens of the covered run
    that reaches its end, give or take one n-gram: 0 if none). Digits count as one digit, so
    "1. a red car", "2. a red car" repeat."""
    toks = tokens(_DIGIT.sub("0", text))
    n_tokens = len(toks)
    if n_tokens < NGRAM + MIN_REPEATS - 1:
        return 0.0, 0
    ids = {t: chr(i + 32) for i, t in enumerate(dict.fromkeys(toks))}
    s = "".join(map(ids.__getitem__, toks))  # one character per token
    grams = [s[i : i + NGRAM] for i in range(n_tokens - NGRAM + 1)]
    if len(set(grams)) > len(grams) - MIN_REPEATS + 1:  # no n-gram can occur 3 times
        return 0.0, 0
    counts = Counter(grams)
    covered = reach = run_start = 0
    for i, gram in enumerate(grams):
        if counts[gram] < MIN_REPEATS:
            continue
        if i > reach:  # a gap: a new run of covered tokens starts here
            run_start = i
        end = i + NGRAM
        covered += end - max(i, reach)
        reach = end
    # a loop cut at max_tokens may stop part-way through its unit: one n-gram of slack
    tail = reach - run_start if reach >= n_tokens - NGRAM else 0
    return covered / n_tokens, tail


def _may_loop(text: str) -> bool:
    """A quick look before the count (``repetition_share``), which it decides in ~5 us: does
    the text's last ``PROBE`` characters occur again (a loop at the end repeats its every
    window), or do ``PROBE_HITS`` of ``PROBES`` windows spread over it (a loop over half of
    it holds about half of them)? Short texts are always counted (it is cheap)."""
    s = _DIGIT.sub("0", text.lower())
    n = len(s)
    if n < 3 * PROBE:
        return True
    if s.count(s[-PROBE:]) >= 2:
        return True
    step = (n - PROBE) // PROBES
    hits = 0
    for j in range(0, n - PROBE, step):
        if s.count(s[j : j + PROBE]) >= 2:
            hits += 1
            if hits >= PROBE_HITS:
                return True
    return False


def is_repetition(text: str) -> bool:
    """The answer loops: repeated n-grams cover ``LOOP_SHARE`` of its tokens, or a run of at
    least ``TAIL_LOOP`` tokens at its end."""
    if not _may_loop(text):
        return False
    share, tail = repetition_share(text)
    return share >= LOOP_SHARE or tail >= TAIL_LOOP


# --- refusal -----------------------------------------------------------------------------------

# spaces, quotes (straight, curly, CJK corner and lenticular brackets) and markdown marks
_LEAD_STRIP = " \t\r\n*_#>`\"'\u201c\u201d\u2018\u2019「」『』【】-•·"
_EN_LEAD = (
    r"(?:(?:i'?m |i am )?(?:very |so |really |truly )?sorry|i apologi[sz]e|my apologies"
    r"|apologies|unfortunately|regrettably)[*_]*[,.!;:]?[*_]*\s*(?:but\s*)?,?\s*"
)
_EN_CANT = (
    r"(?:i|we)(?:'m|'re| am| are)? (?:can'?t|cannot|can not|won'?t|will not|unable|not able"
    r"|not comfortable|not allowed|not permitted|must decline|have to decline|need to decline"
    r"|do not|don'?t|refuse)"
)
_EN_CANT_ALONE = (
    r"(?:i|we)(?:'m|'re| am| are)? (?:can'?t|cannot|can not|won'?t be able to"
    r"|will not be able to|unable to|not able to|must decline to|will not|won'?t)"
    r" (?:help|assist|provide|describe|caption|identify|analy[sz]e|process|view|see|access"
    r"|open|comply|fulfil|do that|do this|complete|generate|create|answer|share|discuss"
    r"|support|engage|interpret|respond|recogni[sz]e|look at|display|read the)"
)
_EN_AI = (
    r"(?:as an? (?:ai|artificial intelligence|(?:large )?language model|text-based)"
    r"|i'?m (?:just |only )?an? (?:ai|artificial intelligence|(?:large )?language model"
    r"|text-based)|i am (?:just |only )?an? (?:ai|artificial intelligence|(?:large )?language model"
    r"|text-based)|i (?:do not|don'?t) (?:feel comfortable|have the ability))\b"
)
_NO = "(?:无|無|不能|不可以|没办法|沒辦法|没法|沒法|不便|不会|不會)"
_ZH_LEAD = (
    r"(?:(?:非常|很|十分|真的)?(?:抱歉|对不起|對不起|不好意思)|很遗憾|很遺憾|遗憾的是|遺憾的是)"
    r"[\uff0c,。.\uff01!、\uff1a:\s*_]*(?:但是?|不过|不過)?[\uff0c,\s]*"
)
_ZH_VERB = (
    r"(?:为你|為你|为您|為您|帮你|幫你|帮您|幫您|帮助|幫助|帮忙|幫忙|协助|協助|提供|识别|識別|辨认|辨認"
    r"|描述|回答|处理|處理|查看|看到|分析|生成|满足|滿足|完成|执行|執行|访问|訪問|打开|打開"
    r"|评论|評論|讨论|討論|参与|參與|回应|回應|解读|解讀|认出|認出)"
)
_ZH_AI = (
    r"作为(?:一[个個]|一名)?(?:人工智能|ai|\uff41\uff49|语言模型|大型语言模型|ai语言模型|ai助手|人工智能助手"
    r"|人工智能语言模型)|作為(?:一[個个]|一名)?(?:人工智慧|人工智能|ai|語言模型|大型語言模型|ai助手)"
    r"|我(?:只)?是(?:一[个個]|一名)?(?:人工智能|ai|语言模型|語言模型|人工智慧)"
)
_REFUSAL = re.compile(
    rf"(?:{_EN_LEAD}(?:{_EN_CANT}|{_EN_AI})"
    rf"|{_EN_CANT_ALONE}|{_EN_AI}"
    rf"|{_ZH_LEAD}(?:我|本?模型)?{_NO}(?:法)?|{_ZH_LEAD}{_ZH_AI}"
    rf"|(?:我|本?模型){_NO}法?{_ZH_VERB}|{_NO}法?(?:提供|识别|識別|描述|回答|处理|處理|查看|看到|分析"
    rf"|满足|滿足|完成|协助|協助|帮助|幫助)|{_ZH_AI})"
)
REFUSAL_WINDOW = 200  # characters read from the start of the answer


def is_refusal(text: str) -> bool:
    """The answer starts with a refusal (after leading spaces, quotes and markdown marks)."""
    head = text[: REFUSAL_WINDOW + 20].lstrip(_LEAD_STRIP).lower().replace("\u2019", "'")
    return _REFUSAL.match(head[:REFUSAL_WINDOW]) is not None


# --- language ----------------------------------------------------------------------------------

_ASKS_ZH = re.compile(
    r"(?:使用|用|以|请用|請用)(?:简体|簡體|繁体|繁體)?(?:中文|汉语|漢語)"
    r"|中文(?:回答|回复|回覆|描述|作答|输出|輸出)"
    r"|\bin (?:simplified |traditional |mandarin )?chinese\b",
    re.IGNORECASE,
)
_ASKS_EN = re.compile(
    r"(?:使用|用|以|请用|請用)(?:英文|英语|英語)|(?:英文|英语|英語)(?:回答|回复|描述|作答|输出)"
    r"|\bin english\b",
    re.IGNORECASE,
)
MOSTLY = 0.5  # the share of Han among an answer's units that makes it Chinese
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_NOT_HAN = re.compile(f"[^{_HAN}]+")
_KANA_HANGUL = re.compile("[\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af]")
_WORD = re.compile(rf"[^\W\d_{_CJK}]+")  # a word of an alphabetic script
_ASCII_LETTER = re.compile("[A-Za-z]")


def asked_language(prompt_text: str) -> str | None:
    """``"zh"`` if the prompt asks for an answer in Chinese, ``"en"`` for English, else None
    (also when it names both: "translate this Chinese text into English")."""
    zh = _ASKS_ZH.search(prompt_text) is not None
    en = _ASKS_EN.search(prompt_text) is not None
    return "zh" if zh and not en else "en" if en and not zh else None


def han_share(text: str) -> float | None:
    """How Chinese ``text`` is: Han characters / (Han characters + kana and hangul characters +
    words of other scripts). A brand name in a Chinese sentence is one word against each Han
    character; Japanese has kana. None when it has no letters at all."""
    if text.isascii():  # O(1) in CPython: most answers in English are
        return 0.0 if _ASCII_LETTER.search(text) else None
    han = len(_NOT_HAN.sub("", text))
    units = han + len(_KANA_HANGUL.findall(text)) + len(_WORD.findall(text))
    return None if units == 0 else han / units


def is_wrong_language(text: str, expected: str | None) -> bool:
    """The answer is not in the language the prompt asked for (``asked_language``)."""
    if expected is None:
        return False
    share = han_share(text)
    if share is None:
        return False
    return share < MOSTLY if expected == "zh" else share >= MOSTLY


# --- duplicate ---------------------------------------------------------------------------------

DUPLICATE_MIN_TOKENS = 4
_NOT_WORD = re.compile(r"[\W_]+")
_ASCII_NOT_WORD = {c: " " for c in range(128) if not (chr(c).isalnum())}


def _normalize(text: str) -> str:
    """Lowercased, each run of anything but letters and digits one space (not stripped), NFKC."""
    if text.isascii():  # the same, ~10x faster: ASCII is NFKC already; translate has a fast path
        spaced = text.lower().translate(_ASCII_NOT_WORD)
        words = " ".join(spaced.split())
        if not words:
            return " " if spaced else ""
        return f"{' ' if spaced[:1] == ' ' else ''}{words}{' ' if spaced[-1:] == ' ' else ''}"
    # NFKC last, on letters and digits only: CJK punctuation (full-width commas, stops) is
    # not NFKC-stable, and normalising it first (~10x the cost) would only turn it into
    # punctuation that is dropped anyway
    return unicodedata.normalize("NFKC", _NOT_WORD.sub(" ", text.lower()))


def duplicate_key(text: str) -> str | None:
    """``text`` as answers are compared for ``duplicate``: NFKC, lowercased, each run of
    anything but letters and digits one space; None if it has fewer than
    ``DUPLICATE_MIN_TOKENS`` tokens."""
    key = _normalize(text).strip()
    if len(key) < 16 * DUPLICATE_MIN_TOKENS and len(tokens(key)) < DUPLICATE_MIN_TOKENS:
        return None
    return key


def _duplicates(texts: list[str | None], images: list[str]) -> list[bool]:
    """Which ``texts`` (None: not compared) share their ``duplicate_key`` with the text of a
    different image."""
    keys = [None if text is None else duplicate_key(text) for text in texts]
    groups: dict[str, set[str]] = {}
    for key, image in zip(keys, images, strict=True):
        if key is not None:
            groups.setdefault(key, set()).add(image)
    return [key is not None and len(groups[key]) > 1 for key in keys]


# --- tables ------------------------------------------------------------------------------------


def _column(table: pa.Table, name: str) -> list[Any]:
    if name in table.column_names:
        values: list[Any] = table[name].to_pylist()
        return values
    return [None] * table.num_rows


def flag_table(
    table: pa.Table, prompts: Mapping[str, str], *, structured: Collection[str] = ()
) -> pa.Array:
    """The flags of each row of ``table``: a ``list<string>`` array, flags in ``FLAGS`` order.

    ``table`` holds output rows (``caption``, ``status``, ``finish_reason``, ``prompt_name``,
    ``image_path``, ``image_sha256``; a missing column counts as null). ``prompts``: prompt name
    -> prompt text, for wrong_language (``prompts_of(job)``); ``structured``: the names of the
    schema'd prompts (``structured_of(job)``). ``duplicate`` compares the rows of ``table``:
    pass the rows to compare, e.g. ``results.current(rows, status="ok")``.
    """
    captions = _column(table, "caption")
    statuses = _column(table, "status")
    reasons = _column(table, "finish_reason")
    names = _column(table, "prompt_name")
    shas = _column(table, "image_sha256")
    paths = _column(table, "image_path")
    languages = {name: asked_language(text) for name, text in prompts.items()}
    out: list[list[str]] = []
    compared: list[str | None] = []  # the answers ``duplicate`` compares
    for caption, status, reason, name in zip(captions, statuses, reasons, names, strict=True):
        flags = []
        if reason == "length":
            flags.append("truncated")
        if caption is None or not caption.strip():
            if status == "ok":
                flags.append("empty")
            compared.append(None)
        elif name in structured:
            compared.append(None)
        else:
            if is_refusal(caption):
                flags.append("refusal")
            if is_repetition(caption):
                flags.append("repetition")
            if is_wrong_language(caption, languages.get(name)):
                flags.append("wrong_language")
            compared.append(caption if status == "ok" else None)
        out.append(flags)
    images = [sha or f"path:{path}" for sha, path in zip(shas, paths, strict=True)]
    for flags, dup in zip(out, _duplicates(compared, images), strict=True):
        if dup:
            flags.append("duplicate")
            flags.sort(key=FLAGS.index)
    return pa.array(out, FLAGS_TYPE)


def prompts_of(job: Mapping[str, Any] | None) -> dict[str, str]:
    """Prompt name -> prompt text, from a dataset's job (``results.job_of``; None: none)."""
    prompts: Iterable[Mapping[str, Any]] = (job or {}).get("prompts") or ()
    return {str(p.get("name")): str(p.get("text") or "") for p in prompts}


def structured_of(job: Mapping[str, Any] | None) -> frozenset[str]:
    """The names of a job's schema'd prompts (their answers are JSON)."""
    prompts: Iterable[Mapping[str, Any]] = (job or {}).get("prompts") or ()
    return frozenset(str(p.get("name")) for p in prompts if p.get("schema") is not None)


def with_flags(table: pa.Table, job: Mapping[str, Any] | None) -> pa.Table:
    """``table`` with a ``flags`` column (``list<string>``) appended (replaced if present)."""
    flags = flag_table(table, prompts_of(job), structured=structured_of(job))
    if "flags" in table.column_names:
        table = table.drop_columns(["flags"])
    return table.append_column(pa.field("flags", FLAGS_TYPE), flags)


def count_flags(flags: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    """How many rows carry each flag (every flag of ``FLAGS``, zeros included)."""
    counts = dict.fromkeys(FLAGS, 0)
    for row in flags.to_pylist():
        for flag in row or ():
            counts[flag] = counts.get(flag, 0) + 1
    return counts
