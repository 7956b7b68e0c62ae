"""Chat renderers: messages -> tokens and per-token loss weights.

A renderer lays a conversation out as *pieces* (template text, message
content, special token ids), tokenizes each piece on its own with the
model's :class:`~crucible_core.contracts.Tokenizer`, and gives every token a
weight: 1 on the tokens an assistant produced (its content, its end-of-turn
marker and, for ``plain``, the EOS token), 0 elsewhere; with
``train_on = "all"`` every token weighs 1. Tokenizing piece by piece is what
makes the weights exact: a token never straddles a role boundary.

Built-in formats:

* ``plain``: ``<|user|>\\n{content}\\n<|assistant|>\\n{content}<eos>\\n``
* ``llama3``: ``<|begin_of_text|>`` then
  ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``
  per turn (content stripped, as Meta's template does)
* ``chatml`` (= ``qwen``): ``<|im_start|>{role}\\n{content}<|im_end|>\\n``
* ``chat_template``: the tokenizer's own Jinja ``chat_template``, rendered with
  Hugging Face's conventions. The assistant spans are found by rendering the
  conversation turn by turn (``messages[:i]`` with a generation prompt, then
  ``messages[:i+1]``) and checking each render extends the previous one; a
  template that rewrites earlier turns is refused with a hint to use a
  built-in format. A template that marks the trainable text itself with
  ``{% generation %}...{% endgeneration %}`` (Hugging Face's assistant-mask tag,
  what ``apply_chat_template(..., return_assistant_tokens_mask=True)`` reads) is
  rendered once, and exactly the text inside those blocks is trained; such a
  template may rewrite earlier turns.

Special markers such as ``<|im_start|>`` become single tokens when the
tokenizer knows them as special tokens, and plain text otherwise.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, cast

from crucible_core.contracts import Tokenizer
from crucible_core.errors import ConfigError

__all__ = [
    "BUILTIN_FORMATS",
    "ChatFormat",
    "FormatRenderer",
    "JinjaRenderer",
    "Rendered",
    "Renderer",
    "chat_template",
    "chatml",
    "get_renderer",
    "llama3",
    "plain",
]

TrainOn = Literal["assistant", "all"]
#: A piece of a rendered conversation: text or token ids, and whether it is trained
#: (assistant output).
Piece = tuple[str | tuple[int, ...], bool]
_SHORT = 24  # texts up to this many characters are cached per renderer
_CACHE_SIZE = 4096
_PROBES = (
    "Hello, world!",
    "  two  spaces\n\nand lines ",
    "caf\u00e9 \u6f22\u5b57 \U0001f600",
    "a<|b|>c",
)


class Rendered(NamedTuple):
    """Tokens of a rendered example and one loss weight per token."""

    tokens: list[int]
    weights: list[float]


def batch_encoder(tokenizer: Tokenizer) -> Callable[[list[str]], list[list[int]]] | None:
    """A faster way to encode many texts than calling ``tokenizer.encode`` on each; or None.

    Used, in this order: the tokenizer's own ``encode_batch(texts)`` (an optional
    extension of the Tokenizer contract), or the Rust ``tokenizers.Tokenizer`` behind a
    Hugging Face fast tokenizer (``tokenizer.backend_tokenizer`` or
    ``tokenizer.hf.backend_tokenizer``), called text by text, which skips the
    per-call Python overhead of ``transformers``. The latter is used only if it
    encodes a set of probe strings exactly as ``tokenizer.encode`` does.
    """
    own: Any = getattr(tokenizer, "encode_batch", None)
    if callable(own):
        batch = cast(Callable[[list[str]], Iterable[Sequence[int]]], own)
        return lambda texts: [list(ids) for ids in batch(texts)]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        backend = getattr(getattr(tokenizer, "hf", None), "backend_tokenizer", None)
    found: Any = getattr(backend, "encode", None)
    if not callable(found):
        return None
    encode = cast(Callable[..., Any], found)

    def run(texts: list[str]) -> list[list[int]]:
        return [encode(t, add_special_tokens=False).ids for t in texts]

    probes = [*_PROBES]
    eos = tokenizer.eos_token_id
    if eos is not None:
        probes.append(f"x{tokenizer.decode([eos])}y")
    try:
        same = run(probes) == [list(tokenizer.encode(p, add_special_tokens=False)) for p in probes]
    except Exception:  # an unexpected backend: fall back to the contract's encode
        return None
    return run if same else None


class Renderer:
    """Base of the renderers: turns pieces into tokens and weights.

    Subclasses implement :meth:`pieces`. ``name`` identifies the format and
    ``template_hash`` (``sha256:...``) the exact template, for run manifests.

    Adjacent pieces of the same weight are joined and tokenized together (so a
    conversation costs one ``encode`` per change of weight, and tokens join across
    template text as they would in one string); many conversations are tokenized
    in one batch when :func:`batch_encoder` finds a batch encoder.
    """

    name: str = "renderer"
    template_hash: str = ""
    stop: tuple[str, ...] = ()
    batch_size: int = 1024

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._encode = tokenizer.encode
        self._batch = batch_encoder(tokenizer)
        self._short: dict[str, list[int]] = {}

    def pieces(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool
    ) -> list[Piece]:
        raise NotImplementedError

    def text_pieces(self, text: str) -> list[Piece]:
        """A plain-text example: the text, then EOS if the tokenizer has one; all trained."""
        eos = self.tokenizer.eos_token_id
        return [(text, True)] if eos is None else [(text, True), ((eos,), True)]

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (through the batch encoder when there is one).

        Short texts are remembered (template separators, one-letter answers recur
        on every row), so each costs one ``encode`` per renderer, not one per row.
        """
        cache = self._short
        out: list[list[int]] = [[] for _ in texts]
        pending: list[str] = []
        refs: list[tuple[int, int]] = []
        shorts: dict[str, int] = {}
        for i, text in enumerate(texts):
            if len(text) <= _SHORT:
                ids = cache.get(text)
                if ids is not None:
                    out[i] = ids
                    continue
                j = shorts.get(text)
                if j is None:
                    j = shorts[text] = len(pending)
                    pending.append(text)
                refs.append((i, j))
            else:
                refs.append((i, len(pending)))
                pending.append(text)
        if not pending:
            return out
        if self._batch is not None:
            encoded: list[list[int]] = []
            for start in range(0, len(pending), self.batch_size):
                encoded.extend(self._batch(pending[start : start + self.batch_size]))
        else:
            encode = self._encode
            encoded = [encode(t, add_special_tokens=False) for t in pending]
        for i, j in refs:
            out[i] = encoded[j]
        for text, j in shorts.items():
            if len(cache) < _CACHE_SIZE:
                cache[text] = encoded[j]
        return out

    def assemble(
        self, examples: Sequence[Sequence[Piece]], *, train_on: TrainOn = "assistant"
    ) -> list[Rendered]:
        """Tokens and weights of many examples' pieces, tokenized together."""
        everything = train_on == "all"
        plans: list[list[tuple[str | tuple[int, ...], float]]] = []
        texts: list[str] = []
        for pieces in examples:
            plan: list[tuple[str | tuple[int, ...], float]] = []
            for value, trained in pieces:
                weight = 1.0 if trained or everything else 0.0
                if isinstance(value, str):
                    if not value:
                        continue
                    if plan and isinstance(plan[-1][0], str) and plan[-1][1] == weight:
                        plan[-1] = (plan[-1][0] + value, weight)
                        continue
                plan.append((value, weight))
            texts.extend(v for v, _ in plan if isinstance(v, str))
            plans.append(plan)
        encoded = iter(self.encode_many(texts))
        out: list[Rendered] = []
        for plan in plans:
            tokens: list[int] = []
            weights: list[float] = []
            for value, weight in plan:
                ids = value if isinstance(value, tuple) else next(encoded)
                tokens.extend(ids)
                weights.extend([weight] * len(ids))
            out.append(Rendered(tokens, weights))
        return out

    def render(
        self, messages: Sequence[Mapping[str, str]], *, train_on: TrainOn = "assistant"
    ) -> Rendered:
        """Tokens and weights for a whole conversation (for training)."""
        return self.assemble(
            [self.pieces(messages, add_generation_prompt=False)], train_on=train_on
        )[0]

    def render_prompt(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Tokens of a conversation followed by the assistant's header (for generation)."""
        return self.assemble([self.pieces(messages, add_generation_prompt=True)], train_on="all")[
            0
        ].tokens

    def render_text(self, text: str) -> Rendered:
        """A plain-text example: its tokens plus EOS (if the tokenizer has one), all trained."""
        return self.assemble([self.text_pieces(text)], train_on="all")[0]


@dataclass(frozen=True)
class ChatFormat:
    """A fixed chat layout: text at the start, a header per turn, and what ends a turn.

    ``footer`` ends every turn and is trained on assistant turns; ``separator``
    follows it and is never trained; ``eos_after_assistant`` appends the
    tokenizer's EOS id (trained) after each assistant turn.
    """

    name: str
    begin: str
    header: str
    footer: str
    separator: str
    strip_content: bool = False
    eos_after_assistant: bool = False

    def digest(self) -> str:
        text = json.dumps(
            {
                "name": self.name,
                "begin": self.begin,
                "header": self.header,
                "footer": self.footer,
                "separator": self.separator,
                "strip": self.strip_content,
                "eos": self.eos_after_assistant,
            },
            sort_keys=True,
        )
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


BUILTIN_FORMATS: dict[str, ChatFormat] = {
    "plain": ChatFormat(
        "plain", "", "<|{role}|>\n", "", "\n", strip_content=False, eos_after_assistant=True
    ),
    "llama3": ChatFormat(
        "llama3",
        "<|begin_of_text|>",
        "<|start_header_id|>{role}<|end_header_id|>\n\n",
        "<|eot_id|>",
        "",
        strip_content=True,
    ),
    "chatml": ChatFormat("chatml", "", "<|im_start|>{role}\n", "<|im_end|>", "\n"),
}
_STOPS = {"plain": ("\n<|user|>",), "llama3": ("<|eot_id|>",), "chatml": ("<|im_end|>",)}


class FormatRenderer(Renderer):
    """A renderer for a :class:`ChatFormat` (``plain``, ``llama3``, ``chatml``)."""

    def __init__(self, tokenizer: Tokenizer, fmt: ChatFormat) -> None:
        super().__init__(tokenizer)
        self.format = fmt
        self.name = fmt.name
        self.template_hash = fmt.digest()
        self.stop = _STOPS.get(fmt.name, ())
        self._headers = {
            role: fmt.header.format(role=role) for role in ("system", "user", "assistant", "tool")
        }
        eos = tokenizer.eos_token_id
        self._eos: tuple[int, ...] | None = (
            (eos,) if fmt.eos_after_assistant and eos is not None else None
        )

    def pieces(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool
    ) -> list[Piece]:
        fmt = self.format
        out: list[Piece] = []
        if fmt.begin:
            out.append((fmt.begin, False))
        headers = self._headers
        for m in messages:
            role = m["role"]
            content = m["content"]
            if fmt.strip_content:
                content = content.strip()
            header = headers.get(role) or fmt.header.format(role=role)
            assistant = role == "assistant"
            out.append((header, False))
            out.append((content, assistant))
            if fmt.footer:
                out.append((fmt.footer, assistant))
            if assistant and self._eos is not None:
                out.append((self._eos, True))
            if fmt.separator:
                out.append((fmt.separator, False))
        if add_generation_prompt:
            out.append((headers["assistant"], False))
        return out


def plain(tokenizer: Tokenizer, **options: Any) -> FormatRenderer:
    """The plain role-tagged format."""
    _no_options("plain", options)
    return FormatRenderer(tokenizer, BUILTIN_FORMATS["plain"])


def llama3(tokenizer: Tokenizer, **options: Any) -> FormatRenderer:
    """The Llama-3 chat format."""
    _no_options("llama3", options)
    return FormatRenderer(tokenizer, BUILTIN_FORMATS["llama3"])


def chatml(tokenizer: Tokenizer, **options: Any) -> FormatRenderer:
    """The ChatML format used by Qwen."""
    _no_options("chatml", options)
    return FormatRenderer(tokenizer, BUILTIN_FORMATS["chatml"])


def _no_options(name: str, options: Mapping[str, Any]) -> None:
    if options:
        raise ConfigError(
            f"renderer {name!r} takes no options; got {', '.join(sorted(options))}",
            hint="remove the options",
        )


# -- Jinja chat templates --------------------------------------------------------------


def _raise_exception(message: str) -> None:
    raise ConfigError(f"the chat template refused the conversation: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Spans:
    """What one tracked render records: the output length so far and each generation span."""

    def __init__(self) -> None:
        self.length = 0
        self.spans: list[tuple[int, int, str]] = []


#: The render being tracked in this thread/task (None: generation blocks just output text).
_TRACKING: contextvars.ContextVar[_Spans | None] = contextvars.ContextVar(
    "crucible_generation_spans", default=None
)
_GENERATION_TAG = re.compile(r"\{%-?\+?\s*generation\s*[-+]?%\}")


@functools.lru_cache(maxsize=1)
def _generation_extension() -> type[Any]:
    """The ``{% generation %}`` tag, as Hugging Face's ``AssistantTracker`` defines it.

    The block's output is unchanged; while a render is tracked (:data:`_TRACKING`),
    the block records where its text starts in the output (the length of what
    the template has yielded so far) and the text itself.
    """
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationTracker(Extension):
        tags = {"generation"}  # noqa: RUF012 - the attribute jinja reads

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_generation", [])
            return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _generation(self, caller: Callable[[], str]) -> str:
            text = caller()
            tracking = _TRACKING.get()
            if tracking is not None:
                tracking.spans.append((tracking.length, tracking.length + len(text), text))
            return text

    return GenerationTracker


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[loopcontrols, _generation_extension()],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ConfigError(
            f"the chat template does not compile: {exc}",
            hint="fix the template, or use a built-in one: "
            'template = "chatml", "llama3" or "plain"',
        ) from None


class JinjaRenderer(Renderer):
    """A Hugging Face style Jinja chat template (the tokenizer's own, or one given as text)."""

    stop: tuple[str, ...] = ()

    def __init__(
        self, tokenizer: Tokenizer, source: str, *, name: str = "chat_template", **variables: Any
    ) -> None:
        super().__init__(tokenizer)
        self.name = name
        self.source = source
        self.template_hash = "sha256:" + hashlib.sha256(source.encode()).hexdigest()
        self._template = _compile(source)
        #: The template marks trainable text with {% generation %} blocks.
        self.marks_generation = _GENERATION_TAG.search(source) is not None
        eos_id = tokenizer.eos_token_id
        # Globals and fixed variables merged once; each render adds the messages
        # (jinja's ``render`` would merge the globals again on every call).
        self._variables: dict[str, Any] = {
            **self._template.globals,
            "bos_token": _token_text(tokenizer, "bos_token", None),
            "eos_token": _token_text(tokenizer, "eos_token", eos_id),
            **variables,
        }
        import jinja2
        from jinja2.runtime import new_context

        self._new_context = new_context
        self._failures = (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError)

    def text(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        add_generation_prompt: bool,
        spans: _Spans | None = None,
    ) -> str:
        """The template's text for ``messages``; ``spans`` records its generation blocks."""
        template = self._template
        values = dict(self._variables)
        values["messages"] = list(messages)
        values["add_generation_prompt"] = add_generation_prompt
        try:
            # The globals are already in ``values``; passing them again would make jinja
            # walk its ChainMap of globals on every render.
            context = self._new_context(
                template.environment, template.name, template.blocks, values, True
            )
            if spans is None:
                return cast(str, template.environment.concat(template.root_render_func(context)))
            token = _TRACKING.set(spans)
            try:
                parts: list[str] = []
                for part in template.root_render_func(context):
                    parts.append(part)
                    spans.length += len(part)
                return "".join(parts)
            finally:
                _TRACKING.reset(token)
        except ConfigError:
            raise
        except self._failures as exc:
            raise ConfigError(
                f"the chat template failed on a conversation of {len(messages)} message(s): "
                f"{type(exc).__name__}: {exc}",
                hint='use a built-in template instead: template = "chatml", "llama3" or "plain"',
            ) from None

    def pieces(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool
    ) -> list[Piece]:
        if add_generation_prompt:
            return [(self.text(messages, add_generation_prompt=True), False)]
        if self.marks_generation:
            return self._marked_pieces(messages)
        full = self.text(messages, add_generation_prompt=False)
        out: list[Piece] = []
        pos = 0
        last = len(messages) - 1
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self.text(messages[:i], add_generation_prompt=True)
            after = full if i == last else self.text(messages[: i + 1], add_generation_prompt=False)
            if not (
                pos <= len(before) <= len(after)
                and full.startswith(after)
                and after.startswith(before)
            ):
                raise ConfigError(
                    f"the {self.name} template does not render conversations turn by turn "
                    f"(adding message {i} changes earlier text), so the assistant's tokens "
                    "cannot be located",
                    hint='use a built-in template: template = "chatml", "llama3" or "plain"',
                )
            out.append((full[pos : len(before)], False))
            out.append((full[len(before) : len(after)], True))
            pos = len(after)
        out.append((full[pos:], False))
        return out

    def _marked_pieces(self, messages: Sequence[Mapping[str, str]]) -> list[Piece]:
        # One render; the text inside {% generation %} blocks is trained, the rest is not.
        spans = _Spans()
        full = self.text(messages, add_generation_prompt=False, spans=spans)
        out: list[Piece] = []
        pos = 0
        for start, end, text in spans.spans:
            if start < pos or full[start:end] != text:
                raise ConfigError(
                    f"the {self.name} template's {{% generation %}} blocks cannot be located "
                    "in its output (a generation block inside a macro, a set block or "
                    "another generation block?)",
                    hint="put {% generation %} blocks at the template's top level, around the "
                    'assistant text, or use a built-in template: template = "chatml"',
                )
            out.append((full[pos:start], False))
            out.append((text, True))
            pos = end
        out.append((full[pos:], False))
        return out


def _token_text(tokenizer: Tokenizer, attr: str, token_id: int | None) -> str:
    value = getattr(tokenizer, attr, None)
    if isinstance(value, str):
        return value
    if token_id is None:
        found = getattr(tokenizer, f"{attr}_id", None)
        token_id = found if isinstance(found, int) else None
    if token_id is not None:
        return tokenizer.decode([token_id])
    return ""


def chat_template(
    tokenizer: Tokenizer, *, template: str | None = None, **variables: Any
) -> JinjaRenderer:
    """The tokenizer's own ``chat_template`` (or ``template`` given as Jinja text)."""
    source = template if template is not None else tokenizer.chat_template
    if not source:
        raise ConfigError(
            f"tokenizer {tokenizer.name!r} has no chat_template",
            hint='set dataset_spec.template to "chatml", "llama3" or "plain"',
        )
    return JinjaRenderer(
        tokenizer, source, name="chat_template" if template is None else "custom", **variables
    )


_ALIASES = {"qwen": "chatml", "llama-3": "llama3", "llama_3": "llama3", "role": "plain"}
_OWN = ("chat_template", "tokenizer", "hf")


def get_renderer(template: str | None, tokenizer: Tokenizer, **options: Any) -> Renderer:
    """The renderer a ``DatasetSpec.template`` names.

    ``None``: the tokenizer's own chat_template if it has one, else ``plain``.
    ``"plain"``, ``"llama3"``, ``"chatml"``/``"qwen"``: built-in formats;
    ``"chat_template"``: the tokenizer's template (an error if it has none);
    text containing ``{%`` or ``{{``: a Jinja template; any other name: a
    renderer another plugin registered.
    """
    if template is None:
        if tokenizer.chat_template:
            return chat_template(tokenizer, **options)
        return plain(tokenizer, **options)
    stripped = template.strip()
    if "{%" in stripped or "{{" in stripped:
        return chat_template(tokenizer, template=template, **options)
    key = _ALIASES.get(stripped.lower(), stripped.lower())
    if key in _OWN:
        return chat_template(tokenizer, **options)
    if key in BUILTIN_FORMATS:
        _no_options(key, options)
        return FormatRenderer(tokenizer, BUILTIN_FORMATS[key])
    found = _plugin_renderer(stripped)
    if found is not None:
        return found(tokenizer, **options)
    names = [*BUILTIN_FORMATS, "qwen", "chat_template"]
    raise ConfigError(
        f"dataset_spec.template: unknown template {template!r}",
        hint=f"use one of: {', '.join(names)}, or Jinja text",
    )


def _plugin_renderer(name: str) -> Any:
    from crucible_core import list_registrations

    for reg in list_registrations("renderer"):
        if reg.name == name:
            return reg.load()
    return None
