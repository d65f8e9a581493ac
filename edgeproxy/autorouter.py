"""The auto router (SPEC §7): `model: "auto"` (or `openrouter/auto`) picks the model from the request.

    policy = AutoPolicy()                       # or Config.auto, from the `[auto]` table
    rule, models = classify(policy, req.messages, bool(req.tools), prompt_tokens, spend_micro,
                            tool_names=[t.function.name for t in req.tools or ()])
    # -> ("code", ["mistralai/codestral"]): route `models` as an ordered fallback list

Sans-IO and pure (STYLE habit 4): the caller supplies the token estimate and the account's spend of
the last hour; nothing here reads a clock, a store or the network.
"""

# -- the policy (SPEC §7) ------------------------------------------------------------------------
# SPEC §7, following the research the product is based on: a cheap default (gemini-2.5-flash);
# complex reasoning or math → gpt-5.1 / claude (o3-pro for proofs); code → codestral; very long
# context → llama-4-scout; images, audio or files → gemini-3-pro; cost-spike protection: when the
# account's spend over the last hour passes its budget, free models. "The classifier costs
# microseconds, not a model call."
#
# Rules are tried in this order; the first that matches names the models:
#   budget        spend of the last hour > the hourly budget          (cost-spike protection)
#   multimodal    any message has an image / audio / file / video part
#   long_context  the estimated prompt tokens > long_context_tokens
#   code          a ``` fence; a code tool (code interpreter, shell, ...); a strong code word
#                 (python, traceback, compile, def, ...); or a weak one (function, variable,
#                 bug, ...) when no math word is present: "prove that the function f is continuous"
#                 is mathematics, "write a function that reverses a list" is code
#   proof         prove, proof, theorem, lemma, corollary, "by induction", ... → o3-pro first
#   reasoning     integral, derivative, equation, probability, LaTeX math, "step by step", ...
#   default       everything else
#
# Speed (bench/bench_autorouter.py): the text looked at is the last user message, plus the one
# before it when the last is short (a follow-up such as "and why?"). Of a long text only a window
# is tokenised, its first and last `scan_chars` characters, where a question sits around a pasted
# document or snippet; code fences are also searched in its first `fence_scan_chars`. Words are
# found by one bytes.translate (lower-case, punctuation → space), one split and one C-level set
# intersection against every keyword at once, so the cost does not grow with the keyword lists.
# A 400 KB prompt costs what a 4 KB one does, plus one bounded substring search.

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from .errors import ConfigError

if TYPE_CHECKING:
    from .schema import Message

__all__ = [
    "AUTO_MODELS",
    "DEFAULT_RULES",
    "RULE_ORDER",
    "AutoPolicy",
    "classify",
    "is_auto",
    "load_policy",
]

#: Model ids that mean "let the auto router choose".
AUTO_MODELS = frozenset({"auto", "openrouter/auto"})

RULE_ORDER = ("budget", "multimodal", "long_context", "code", "proof", "reasoning", "default")

DEFAULT_RULES: dict[str, list[str]] = {
    "budget": ["meta-llama/llama-4-maverick:free", "meta-llama/llama-4-scout:free"],
    "multimodal": ["google/gemini-3-pro-preview"],
    # Scout's 512K window first; Gemini Flash's 1M window takes what Scout cannot hold.
    "long_context": ["meta-llama/llama-4-scout:free", "google/gemini-2.5-flash"],
    "code": ["mistralai/codestral"],
    "proof": ["openai/o3-pro", "openai/gpt-5.1", "anthropic/claude-opus-4.5"],
    "reasoning": ["openai/gpt-5.1", "anthropic/claude-opus-4.5"],
    "default": ["google/gemini-2.5-flash"],
}

# Keywords are matched as whole words after the text is lower-cased and every character other
# than a-z 0-9 _ + # \ (and non-ASCII) becomes a space: "C++", "C#", "#include" and "\frac" stay
# words, "step-by-step" becomes the phrase "step by step". A keyword of several words is a phrase,
# found as a substring of the normalised window.
DEFAULT_CODE_KEYWORDS = [
    "def", "traceback", "stacktrace", "stack trace", "segfault", "segmentation fault",
    "compile", "compiler", "compiling", "compilation", "syntax error", "syntaxerror", "typeerror",
    "valueerror", "keyerror", "indexerror", "attributeerror", "importerror", "nullpointerexception",
    "null pointer", "undefined reference", "refactor", "refactoring", "debug", "debugging",
    "regex", "python", "javascript", "typescript", "golang", "kotlin", "c++", "c#", "php", "sql",
    "bash", "powershell", "html", "css", "dockerfile", "kubernetes", "yaml", "numpy", "pandas",
    "pytorch", "tensorflow", "django", "npm", "pytest", "junit", "github", "git", "#include",
    "println", "printf", "stdout", "stderr", "localhost", "unit test", "pull request", "linter",
    "dataframe", "codebase", "repo",
]
# Words that are code only when no mathematics is around ("the function f", "a variable x").
DEFAULT_CODE_WEAK_KEYWORDS = [
    "function", "functions", "variable", "bug", "bugs", "exception", "code", "script", "loop",
    "array", "api", "java", "rust", "ruby", "lambda", "json", "commit", "query", "react",
    "endpoint", "snippet",
]
DEFAULT_PROOF_KEYWORDS = [
    "prove", "proves", "proving", "proof", "proofs", "theorem", "theorems", "lemma", "lemmas",
    "corollary", "qed", "by induction", "by contradiction", "axiom", "axioms",
]
DEFAULT_REASONING_KEYWORDS = [
    "integral", "integrals", "integrate", "derivative", "derivatives", "differentiate",
    "equation", "equations", "calculus", "algebra", "probability", "eigenvalue", "eigenvalues",
    "polynomial", "logarithm", "matrices", "combinatorics", "inequality", "riddle", "puzzle",
    "step by step", "solve for", "think carefully", "reason through",
    # LaTeX math: commands, and "\(" "\[" (a lone backslash once punctuation is gone).
    "\\frac", "\\int", "\\sum", "\\sqrt", "\\lim", "\\infty", "\\partial", "\\mathbb", "\\prod",
    "\\cdot", "\\begin", "\\", "$$",
]
# Substrings of tool names that mean the client runs code (OpenAI's code_interpreter, a shell, ...).
DEFAULT_CODE_TOOLS = [
    "code", "python", "exec", "shell", "bash", "terminal", "interpreter", "sandbox", "run_",
]
# Content-part types that are not text (OpenAI chat, Responses and OpenRouter spellings).
DEFAULT_MULTIMODAL_TYPES = [
    "image_url", "input_image", "image", "input_audio", "audio", "file", "input_file",
    "video_url", "input_video", "video",
]

_CODE, _WEAK, _PROOF, _MATH = 1, 2, 4, 8

# bytes.translate table: A-Z → a-z; a-z 0-9 _ + # \ and every byte >= 0x80 (UTF-8 of non-ASCII
# text) kept; anything else → space. "$" is kept too so that "$$" stays a word.
_KEEP = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_+#\\$") | frozenset(range(0x80, 0x100))
_TABLE = bytes(
    c + 32 if 65 <= c <= 90 else (c if c in _KEEP else 32) for c in range(256)
)


def _norm(text: str) -> bytes:
    return text.encode("utf-8", "ignore").translate(_TABLE)


def is_auto(model_id: str | None) -> bool:
    return model_id in AUTO_MODELS


NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
PosInt = Annotated[int, msgspec.Meta(gt=0)]


class AutoPolicy(msgspec.Struct, forbid_unknown_fields=True, dict=True):
    """The `[auto]` table. Every field has a default; a rule not named keeps its default models.

    rules: rule name → ordered model ids (see RULE_ORDER); an empty list falls back to `default`.
    long_context_tokens: above this estimated prompt size the long_context rule applies. The
        default is 128K, the window of most catalog models: with ~4 characters a token, a
        300-page document (~600 KB) is ~150K tokens.
    budget_usd_per_hour: cost-spike protection; None switches it off unless the caller passes
        an account's own budget to `classify`.
    *_keywords: replace the default word lists (see the DEFAULT_* lists in this module).
    code_tools: substrings of tool names that mark a code tool.
    multimodal_types: content-part types that select the multimodal rule.
    scan_chars: characters looked at from each end of a long user message.
    fence_scan_chars: characters of a user message searched for a ``` fence.
    """

    rules: dict[str, list[str]] = {}
    long_context_tokens: PosInt = 131_072
    budget_usd_per_hour: NonNegFloat | None = None
    code_keywords: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_CODE_KEYWORDS))
    code_weak_keywords: list[str] = msgspec.field(
        default_factory=lambda: list(DEFAULT_CODE_WEAK_KEYWORDS)
    )
    proof_keywords: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_PROOF_KEYWORDS))
    reasoning_keywords: list[str] = msgspec.field(
        default_factory=lambda: list(DEFAULT_REASONING_KEYWORDS)
    )
    code_tools: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_CODE_TOOLS))
    multimodal_types: list[str] = msgspec.field(
        default_factory=lambda: list(DEFAULT_MULTIMODAL_TYPES)
    )
    scan_chars: PosInt = 768
    fence_scan_chars: PosInt = 32_768

    def __post_init__(self) -> None:
        for name in self.rules:
            if name not in RULE_ORDER:
                raise ValueError(
                    f"unknown auto rule {name!r} (expected one of {', '.join(RULE_ORDER)})"
                )
        # The resolved tables, built once (the Struct is created once per config load).
        self._rules: dict[str, tuple[str, ...]] = {
            name: tuple(self.rules.get(name, DEFAULT_RULES[name])) for name in RULE_ORDER
        }
        # word → (its flags as a keyword, the phrases that start with it): one set intersection
        # finds both the keywords and the phrase candidates, so a phrase costs a substring search
        # only when its first word is present.
        words: dict[bytes, int] = {}
        phrases: dict[bytes, dict[bytes, int]] = {}
        for flag, kws in (
            (_CODE, self.code_keywords),
            (_WEAK, self.code_weak_keywords),
            (_PROOF, self.proof_keywords),
            (_MATH, self.reasoning_keywords),
        ):
            for kw in kws:
                parts = _norm(kw).split()
                if len(parts) == 1:
                    words[parts[0]] = words.get(parts[0], 0) | flag
                elif parts:
                    byhead = phrases.setdefault(parts[0], {})
                    key = b" ".join(parts)
                    byhead[key] = byhead.get(key, 0) | flag
        self._lookup: dict[bytes, tuple[int, tuple[tuple[bytes, int], ...]]] = {
            w: (words.get(w, 0), tuple(phrases.get(w, {}).items()))
            for w in words.keys() | phrases.keys()
        }
        self._keys = frozenset(self._lookup)
        self._code_tools = tuple(t.lower() for t in self.code_tools if t)
        self._multimodal = frozenset(self.multimodal_types)
        self._budget_micro = (
            None if self.budget_usd_per_hour is None else int(self.budget_usd_per_hour * 1e6)
        )

    def models(self, rule: str) -> tuple[str, ...]:
        """The ordered model ids of a rule (the default rule's when the rule's list is empty)."""
        return self._rules.get(rule) or self._rules["default"]

    def unknown_models(self, known: Collection[str]) -> list[str]:
        """Model ids named by the rules that are not in `known` (for a config check at start)."""
        seen: list[str] = []
        for ids in self._rules.values():
            seen.extend(m for m in ids if m not in known and m not in seen)
        return seen

    def restricted(self, known: Collection[str]) -> AutoPolicy:
        """A copy whose rules name only models in `known` (e.g. the models that have a key)."""
        rules = {name: [m for m in ids if m in known] for name, ids in self._rules.items()}
        return AutoPolicy(
            rules=rules,
            long_context_tokens=self.long_context_tokens,
            budget_usd_per_hour=self.budget_usd_per_hour,
            code_keywords=self.code_keywords,
            code_weak_keywords=self.code_weak_keywords,
            proof_keywords=self.proof_keywords,
            reasoning_keywords=self.reasoning_keywords,
            code_tools=self.code_tools,
            multimodal_types=self.multimodal_types,
            scan_chars=self.scan_chars,
            fence_scan_chars=self.fence_scan_chars,
        )


def load_policy(table: dict[str, Any]) -> AutoPolicy:
    """An AutoPolicy from a decoded `[auto]` table; ConfigError names the bad key."""
    try:
        return msgspec.convert(table, AutoPolicy)
    except msgspec.ValidationError as exc:
        reason, sep, where = str(exc).rpartition(" - at `$")
        if not sep:
            reason, where = str(exc), ""
        where = where.rstrip("`").lstrip(".").replace('["', ".").replace('"]', "")
        if reason.startswith("Object contains unknown field `"):
            key = reason.split("`")[1]
            where, reason = (f"{where}.{key}" if where else key), "unknown key"
        path = "auto." + where if where else "auto"
        raise ConfigError(path, reason[:1].lower() + reason[1:]) from None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not content:
        return ""
    texts = [p["text"] for p in content if p.get("type") == "text" and isinstance(p.get("text"), str)]
    return texts[0] if len(texts) == 1 else "\n".join(texts)


def _user_texts(messages: Sequence[Message], short: int) -> list[str]:
    out: list[str] = []
    for m in reversed(messages):
        if m.role == "user":
            t = _text(m.content)
            out.append(t)
            if len(out) == 2 or len(t) >= short:
                break
    return out


def classify(
    policy: AutoPolicy,
    messages: Sequence[Message],
    tools_present: bool,
    prompt_tokens: int,
    spend_last_hour_micro: int | None,
    *,
    tool_names: Iterable[str] = (),
    budget_micro: int | None = None,
) -> tuple[str, list[str]]:
    """(rule name, ordered model ids) for one request, by the rules drawn at the top of this module.

    prompt_tokens: the caller's estimate of the prompt (the same one routing uses).
    spend_last_hour_micro: the account's spend over the last hour in micro-USD (None: unknown,
        the budget rule is skipped).
    tool_names: the request's tool names, if any; a code tool selects the code rule.
    budget_micro: the account's own hourly budget in micro-USD, overriding the policy's.
    tools_present: whether the request declares tools. It selects no rule by itself (tools are as
        common in chat apps as in coding agents); every default model supports tools.
    """
    del tools_present  # see the docstring: kept so callers state it, the names carry the signal
    budget = policy._budget_micro if budget_micro is None else budget_micro
    if spend_last_hour_micro is not None and budget is not None and spend_last_hour_micro > budget:
        return "budget", list(policy.models("budget"))

    mm = policy._multimodal
    for m in messages:
        c = m.content
        if type(c) is list:
            for part in c:
                if part.get("type") in mm:
                    return "multimodal", list(policy.models("multimodal"))

    if prompt_tokens > policy.long_context_tokens:
        return "long_context", list(policy.models("long_context"))

    code = False
    for name in tool_names:
        low = name.lower()
        if any(t in low for t in policy._code_tools):
            code = True
            break

    w = policy.scan_chars
    fence_limit = policy.fence_scan_chars
    segments: list[str] = []
    for t in _user_texts(messages, w):
        n = len(t)
        if not code and (
            t.find("```", 0, fence_limit) >= 0 or (n > fence_limit and "```" in t[-w:])
        ):
            code = True
        if n <= 2 * w:
            segments.append(t)
        else:
            segments.append(t[:w])
            segments.append(t[-w:])
    if code:
        return "code", list(policy.models("code"))
    window = segments[0] if len(segments) == 1 else "\n".join(segments)  # none: ""

    norm = _norm(window)
    flags = 0
    lookup = policy._lookup
    for word in policy._keys.intersection(norm.split()):
        flag, phrases = lookup[word]
        flags |= flag
        for phrase, pflag in phrases:
            if phrase in norm:
                flags |= pflag

    if flags & _CODE or (flags & _WEAK and not flags & (_PROOF | _MATH)):
        return "code", list(policy.models("code"))
    if flags & _PROOF:
        return "proof", list(policy.models("proof"))
    if flags & _MATH:
        return "reasoning", list(policy.models("reasoning"))
    return "default", list(policy.models("default"))
