"""Chat templates rendered in Rust (``recforge.text.ChatTemplate``) against transformers.

The reference is transformers' own ``tokenizer.apply_chat_template(..., tokenize=False)``, offline:
on a small tokenizer built here that carries the model's special tokens, with the model's template
text, or loaded by ``AutoTokenizer`` from a folder written here (the hub's ``tokenizer_config.json``
form and transformers 5's ``chat_template.jinja`` form), and on the SmolLM2 checkpoint of the
``smollm2_hf_dir`` fixture (slow). The Qwen2, Qwen2.5, Llama-3 and Llama-3.1 templates below are the
``"chat_template"`` entries of those models' ``tokenizer_config.json``, copied as they stand there
(JSON-escaped) and decoded with ``json.loads``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from tokenizers.models import WordLevel
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

from recforge.errors import ConfigError, DataError, RecforgeError
from recforge.text import ChatTemplate


def _entry(line: str) -> str:
    """The template of a ``"chat_template": "..."`` line exactly as it stands in tokenizer_config.json."""
    template: str = json.loads("{" + line + "}")["chat_template"]
    return template


# Qwen/Qwen2-7B-Instruct
QWEN2 = _entry(
    r""""chat_template": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}" """
)

# Qwen/Qwen2.5-7B-Instruct
QWEN2_5 = _entry(
    r""""chat_template": "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n" """
)

# meta-llama/Meta-Llama-3-8B-Instruct
LLAMA3 = _entry(
    r""""chat_template": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}" """
)

# meta-llama/Llama-3.1-8B-Instruct
LLAMA3_1 = _entry(
    r""""chat_template": "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n{#- This block extracts the system message, so we can slot it into the right place. #}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n{#- System message + builtin tools #}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{%- if builtin_tools is defined or tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n{%- if builtin_tools is defined %}\n    {{- \"Tools: \" + builtin_tools | reject('equalto', 'code_interpreter') | join(\", \") + \"\\n\\n\"}}\n{%- endif %}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{%- if tools is not none and not tools_in_user_message %}\n    {{- \"You have access to the following functions. To call a function, please respond with JSON for a function call.\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n{%- endif %}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n\n{#- Custom tools are passed in a user message with some extra guidance #}\n{%- if tools_in_user_message and not tools is none %}\n    {#- Extract the first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n        {%- set first_user_message = messages[0]['content']|trim %}\n        {%- set messages = messages[1:] %}\n    {%- else %}\n        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n{%- endif %}\n    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n    {{- first_user_message + \"<|eot_id|>\"}}\n{%- endif %}\n\n{%- for message in messages %}\n    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n    {%- elif 'tool_calls' in message %}\n        {%- if not message.tool_calls|length == 1 %}\n            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n        {%- endif %}\n        {%- set tool_call = message.tool_calls[0].function %}\n        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n            {{- \"<|python_tag|>\" + tool_call.name + \".call(\" }}\n            {%- for arg_name, arg_val in tool_call.arguments | items %}\n                {{- arg_name + '=\"' + arg_val + '\"' }}\n                {%- if not loop.last %}\n                    {{- \", \" }}\n                {%- endif %}\n                {%- endfor %}\n            {{- \")\" }}\n        {%- else  %}\n            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n            {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n            {{- '\"parameters\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- \"}\" }}\n        {%- endif %}\n        {%- if builtin_tools is defined %}\n            {#- This means we're in ipython mode #}\n            {{- \"<|eom_id|>\" }}\n        {%- else %}\n            {{- \"<|eot_id|>\" }}\n        {%- endif %}\n    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n        {%- if message.content is mapping or message.content is iterable %}\n            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n        {%- endif %}\n        {{- \"<|eot_id|>\" }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n" """
)

# The special tokens of each model's tokenizer_config.json.
QWEN_TOKENS = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
LLAMA3_TOKENS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}

TEMPLATES: dict[str, tuple[str, dict[str, str]]] = {
    "qwen2": (QWEN2, QWEN_TOKENS),
    "qwen2.5": (QWEN2_5, QWEN_TOKENS),
    "llama3": (LLAMA3, LLAMA3_TOKENS),
    "llama3.1": (LLAMA3_1, LLAMA3_TOKENS),
}

Messages = list[dict[str, Any]]

CONVERSATIONS: dict[str, Messages] = {
    "system+user": [
        {"role": "system", "content": "You are a terse movie recommender."},
        {"role": "user", "content": "Suggest one film like Heat (1995)."},
    ],
    "user-only": [{"role": "user", "content": "Hello!"}],
    "multi-turn": [
        {"role": "user", "content": "I liked Alien and Aliens."},
        {"role": "assistant", "content": "Try The Thing (1982)."},
        {"role": "user", "content": "Seen it. Another?"},
        {"role": "assistant", "content": "Event Horizon."},
        {"role": "user", "content": "Why that one?"},
    ],
    "system+multi-turn-ending-with-assistant": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Which film?"},
        {"role": "assistant", "content": "Amélie."},
    ],
    "unicode": [
        {"role": "system", "content": "Réponds en 日本語 😀 — «quotes» \"double\" 'single' back\\slash"},
        {"role": "user", "content": "Héllo wörld\ttab\u2028line sep {{ not_a_var }} {% raw %} ‮rtl"},
    ],
    "empty-content": [
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "   "},
    ],
    "padded-whitespace": [
        {"role": "user", "content": "\n\n  leading and trailing  \n\t"},
        {"role": "assistant", "content": " ok \u3000"},
        {"role": "user", "content": "\x1cfile separator\x1f"},
    ],
}


def _hf_tokenizer(tokens: dict[str, str], template: str | None = None) -> PreTrainedTokenizerFast:
    """A transformers tokenizer whose special tokens are ``tokens`` (a word-level vocabulary of just
    those: the chat template only sees the token strings)."""
    vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(sorted(set(tokens.values())))}}
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer(WordLevel(vocab, unk_token="<unk>")), **tokens)
    if template is not None:
        tok.chat_template = template
    return tok


def _reference(template: str, tokens: dict[str, str], messages: Messages, add_generation_prompt: bool, **kw: Any) -> str:
    out = _hf_tokenizer(tokens).apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt, **kw
    )
    assert isinstance(out, str)
    return out


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("model", sorted(TEMPLATES))
def test_render_equals_transformers(model: str, conversation: str, add_generation_prompt: bool) -> None:
    template, tokens = TEMPLATES[model]
    messages = CONVERSATIONS[conversation]
    ours = ChatTemplate(template, **tokens).render(messages, add_generation_prompt=add_generation_prompt)
    assert ours == _reference(template, tokens, messages, add_generation_prompt)


def test_known_renderings() -> None:
    """Hand-written expectations, independent of transformers."""
    msgs = CONVERSATIONS["system+user"]
    assert ChatTemplate(QWEN2, **QWEN_TOKENS).render(msgs[1:]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nSuggest one film like Heat (1995).<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ChatTemplate(LLAMA3_1, **LLAMA3_TOKENS).render(msgs, add_generation_prompt=False) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You are a terse movie recommender.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSuggest one film like Heat (1995).<|eot_id|>"
    )


@pytest.mark.parametrize("layout", ["hub-tokenizer_config", "transformers5-save_pretrained", "named-templates"])
@pytest.mark.parametrize("model", sorted(TEMPLATES))
def test_from_pretrained_equals_autotokenizer(tmp_path: Path, model: str, layout: str) -> None:
    template, tokens = TEMPLATES[model]
    if layout == "transformers5-save_pretrained":
        _hf_tokenizer(tokens, template).save_pretrained(tmp_path)
        assert (tmp_path / "chat_template.jinja").is_file()
    else:
        _hf_tokenizer(tokens).save_pretrained(tmp_path)
        config = json.loads((tmp_path / "tokenizer_config.json").read_text())
        # The hub's files store special tokens as AddedToken objects and the template inline.
        for name, text in tokens.items():
            config[name] = {"__type": "AddedToken", "content": text, "lstrip": False, "normalized": False,
                            "rstrip": False, "single_word": False, "special": True}  # fmt: skip
        if layout == "named-templates":
            config["chat_template"] = [{"name": "rag", "template": "RAG"}, {"name": "default", "template": template}]
        else:
            config["chat_template"] = template
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    hf = AutoTokenizer.from_pretrained(tmp_path)
    ours = ChatTemplate.from_pretrained(tmp_path)
    assert ours.special_tokens == {k: v for k, v in hf.special_tokens_map.items()}
    for messages in CONVERSATIONS.values():
        for agp in (True, False):
            assert ours.render(messages, add_generation_prompt=agp) == hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=agp
            )


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search_movies",
            "description": "Search the catalogue — by title, année or genre.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "Free text"},
                    "limit": {"type": "integer", "minimum": 1, "default": 10},
                    "min_rating": {"type": "number", "default": 7.5},
                    "genres": {"type": "array", "items": {"type": "string", "enum": ["sci-fi", "drama"]}},
                },
                "required": ["query"],
            },
        },
    }
]

TOOL_CHAT: Messages = [
    {"role": "system", "content": "You recommend films."},
    {"role": "user", "content": "Find sci-fi like Alien"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"type": "function", "function": {"name": "search_movies", "arguments": {"query": "Alien", "limit": 3}}}
        ],
    },
    {"role": "tool", "content": '{"results": ["Aliens", "The Thing", "Event Horizon"]}'},
    {"role": "assistant", "content": "Try Aliens."},
    {"role": "user", "content": "Thanks"},
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_tools_and_tool_calls_equal_transformers(add_generation_prompt: bool) -> None:
    """Tools (tojson of nested objects, key order kept), tool calls and tool results."""
    cases: list[tuple[str, dict[str, str], dict[str, Any]]] = [
        (QWEN2_5, QWEN_TOKENS, {}),
        (LLAMA3_1, LLAMA3_TOKENS, {"date_string": "01 Dec 2026"}),
        (LLAMA3_1, LLAMA3_TOKENS, {"tools_in_user_message": False}),
    ]
    for template, tokens, kw in cases:
        ours = ChatTemplate(template, **tokens).render(
            TOOL_CHAT, add_generation_prompt=add_generation_prompt, tools=TOOLS, **kw
        )
        ref = _reference(template, tokens, TOOL_CHAT, add_generation_prompt, tools=TOOLS, **kw)
        assert ours == ref
        assert '"description": "Free text"' in ours  # the tool schema was printed
    # Llama 3.1's built-in tools: `reject`, `join`, the `items` filter, `<|python_tag|>` calls.
    chat: Messages = [
        {"role": "user", "content": "Search for Heat"},
        {
            "role": "assistant",
            "tool_calls": [{"function": {"name": "brave_search", "arguments": {"query": "Heat 1995"}}}],
        },
        {"role": "ipython", "content": "Heat is a 1995 crime film."},
    ]
    kw = {"builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"]}
    ours = ChatTemplate(LLAMA3_1, **LLAMA3_TOKENS).render(chat, add_generation_prompt=add_generation_prompt, **kw)
    assert ours == _reference(LLAMA3_1, LLAMA3_TOKENS, chat, add_generation_prompt, **kw)
    assert "Tools: brave_search, wolfram_alpha" in ours


# Jinja features one at a time, each rendered by transformers' environment and by ours, with the
# extra variables in `ctx`. `None` as expected output: both must raise.
SNIPPETS: list[tuple[str, dict[str, Any]]] = [
    ("{{ [1, 'a', none, true, false] }} {{ {'a': 1, 'b': 'x'} }} {{ (1, 2) }}", {}),
    ("{{ none }}|{{ true }}|{{ 1.0 }}|{{ 1e20 }}|{{ 0.1 + 0.2 }}|{{ 1e-7 }}|{{ 2.5 }}|{{ 7 / 2 }}", {}),
    ("{{ x }}|{{ x is defined }}|{{ x is none }}|{{ x | length }}|{{ x | trim }}", {}),
    ("{% for a in x %}{{ a }}{% endfor %}ok{{ x is iterable }}{{ x is sequence }}", {}),
    ("{{ x.y }}", {}),
    ("{{ x + 'a' }}", {}),
    ("{{ 'a' + 1 }}", {}),
    ("{{ messages[0]['missing'] }}|{{ messages[0].missing is defined }}|{{ messages[5] }}|", {}),
    ("{{ messages[5].role }}", {}),
    ("  {% if true %}\n  x\n  {% endif %}\n  y\n", {}),
    ("a\n  {# comment #}\n  b\n  {%- if true %}\nc{% endif +%}\n d {%+ if true %}e{% endif %}\n", {}),
    ("x\n\n", {}),
    ("{{ 'abc' is iterable }}{{ 'abc' is sequence }}{{ 'abc' is string }}{{ m is mapping }}{{ m is sequence }}{{ 3 is sequence }}", {"m": {}}),
    ("{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s | trim }}|{{ s.strip(' \x1c') }}|{{ s.isspace() }}", {"s": "\x1c\u00a0 x \u2028\x1f"}),
    ("{{ s.split() }}|{{ s.split(',') }}|{{ s.split(',', 1) }}|{{ s.split(none, 1) }}|{{ s.splitlines() }}", {"s": " a,b\x1c, c\r\nd\u2028e "}),
    ("{{ s.startswith('a') }}{{ s.endswith(('x', 'f')) }}{{ s.upper() }}{{ s.title() }}{{ s.replace('a', 'z') }}{{ s.capitalize() }}{{ s.count('d') }}{{ s.find('d') }}", {"s": "abc def"}),
    ("{{ m | tojson }}|{{ m | tojson(indent=2) }}|{{ m | tojson(indent='\t') }}", {"m": {"b": [1, 2.5, "é\n\"", None, True, {}], "a": [], "c": {"z": 1, "y": [[]]}}}),
    ("{{ m | tojson(sort_keys=true) }}{{ m | tojson(separators=(',', ':')) }}{{ m | tojson(ensure_ascii=true) }}", {"m": {"b": 1, "a": [1, 2], "é": "😀"}}),
    ("{{ l | tojson }}", {"l": [1.0, 1e16, 1e-5, 0.0001, 123456789.123, -0.0, 1.5e300, 10**18, -(2**63), 2**64 - 1]}),
    ("{{ s | tojson }}", {"s": "\x00\x1f\x7f\u2028</script>&'\\"}),
    ("{{ m.items() | list }}|{{ m.keys() | list }}|{{ m.values() | list }}|{{ m.get('b') }}|{{ m.get('z', 3) }}", {"m": {"b": 1, "a": 2}}),
    ("{% for k, v in m.items() %}{{ k }}={{ v }};{% endfor %}{% for k, v in m | items %}{{ k }}={{ v }};{% endfor %}{{ m | dictsort }}", {"m": {"b": 1, "a": 2}}),
    ("{% set ns = namespace(a=1, s='') %}{% for i in range(4) %}{% set ns.a = ns.a + i %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.a }} {{ ns.s }}", {}),
    ("{% for i in range(6) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}{% endif %}{{ i }}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{% endfor %}", {}),
    ("{% for m in messages %}{{ loop.previtem is defined }}{{ loop.nextitem is defined }}{{ loop.cycle('a', 'b') }}{% endfor %}", {}),
    ("{{ l[::-1] }}{{ l[1:] }}{{ l[-1] }}{{ l | reverse | list }}{{ l | join(',') }}{{ l | first }}{{ l | last }}{{ l | length }}", {"l": [1, 2, 3]}),
    ("{{ l | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }}{{ l | rejectattr('role', 'equalto', 'user') | list | length }}", {"l": [{"role": "user", "content": "a"}, {"role": "x", "content": "b"}]}),
    ("{{ l | reject('equalto', 'b') | join(', ') }}{{ l | select('ne', 'a') | list }}{{ 'b' in l }}", {"l": ["a", "b", "c"]}),
    ("{{ 'a' ~ 1 ~ none }}{{ 'x' * 3 }}{{ 'abc'[1:] }}{{ 'abc'[-1] }}{{ 1 if x else 2 }}{{ 7 // 2 }}{{ 7 % 3 }}{{ 2 ** 10 }}", {}),
    ("{{ s | capitalize }}|{{ s | title }}|{{ s | upper }}|{{ s | lower }}|{{ s | replace('o', '0') }}|{{ s | length }}", {"s": "hello wORLD héllo"}),
    ("{{ 1.5 | int }}{{ '3' | int }}{{ 3 | float }}{{ 2.567 | round(2) }}{{ -3 | abs }}{{ 'x' | string }}", {}),
    ("{{ dict(a=1, b='c') }}{{ dict(a=1) | tojson }}", {}),
    ("{% if not date_string is defined %}{% set date_string = '26 Jul 2024' %}{% endif %}{{ date_string }}", {}),
    ("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% macro f(x) %}[{{ x }}]{% endmacro %}{{ f(a) }}", {}),
    ("{{ l | unique | list }}{{ l | sort }}{{ l | min }}{{ l | max }}{{ l | sum }}{{ l | batch(2) | list }}", {"l": [3, 1, 3]}),
    ("{{ s | indent(2) }}|{{ s | indent(2, true) }}", {"s": "a\nb"}),
    ("{{ tools is none }}{{ documents is none }}{{ add_generation_prompt }}{{ bos_token }}{{ eos_token is defined }}", {}),
    ("{{ raise_exception('boom: ' ~ messages | length) }}", {}),
    ("{{ content.split('</think>')[-1].lstrip('\\n') }}", {"content": "<think>\nhmm\n</think>\n\nanswer"}),
    ("{{ l | tojson }}", {"l": [[1, [2, {"a": []}]]]}),
    ("{{ x | tojson }}", {}),
    ("{{ l }}|{{ m }}|{{ l[0] }}", {"l": ["a\u00a0b", "it's", "\"q\"", "\x7f\\", "é\n😀", 1.5, 1e20, [None]], "m": {"k": ["t"], "n": {}}}),
    ("{{ messages }}", {}),
]


@pytest.mark.parametrize("snippet,ctx", SNIPPETS, ids=[str(i) for i in range(len(SNIPPETS))])
def test_jinja_semantics_equal_transformers(snippet: str, ctx: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    tokens: dict[str, Any] = {"bos_token": "<s>"}
    try:
        # (rendered texts, generation indices), one text per conversation
        texts = render_jinja_template(conversations=[messages], chat_template=snippet, **tokens, **ctx)[0]
        ref: str | None = texts[0]
    except Exception:  # noqa: BLE001 - any Jinja error counts
        ref = None
    tpl = ChatTemplate(snippet, **tokens)
    if ref is None:
        with pytest.raises(RecforgeError):
            tpl.render(messages, add_generation_prompt=False, **ctx)
    else:
        assert tpl.render(messages, add_generation_prompt=False, **ctx) == ref


def test_strftime_now_is_utc_today() -> None:
    """Llama 3.2's date line; the clock is read in UTC (the reference machine's local time here)."""
    tpl = ChatTemplate("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %a') }}")
    before = datetime.now(timezone.utc)
    out = tpl.render([{"role": "user", "content": "x"}])
    after = datetime.now(timezone.utc)
    assert out in {f"{t.strftime('%d %b %Y')}|{t.strftime('%Y-%m-%d %a')}" for t in (before, after)}


def test_raise_exception_is_a_data_error_with_the_message() -> None:
    alternate = (
        "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}{{ message['content'] }}{% endfor %}"
    )
    with pytest.raises(DataError, match="Conversation roles must alternate user/assistant/user/assistant/..."):
        ChatTemplate(alternate).render([{"role": "assistant", "content": "a"}])
    with pytest.raises(Exception, match="Conversation roles must alternate"):
        _reference(alternate, {}, [{"role": "assistant", "content": "a"}], True)
    # Llama 3.1 with tools and no user message to put them in.
    with pytest.raises(DataError, match="Cannot put tools in the first user message"):
        ChatTemplate(LLAMA3_1, **LLAMA3_TOKENS).render([{"role": "system", "content": "s"}], tools=TOOLS)


def test_bad_template_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not compile \(line 3\)"):
        ChatTemplate("first line\n{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    (tmp_path / "chat_template.jinja").write_text("{% if %}")
    with pytest.raises(ConfigError, match="chat_template.jinja"):
        ChatTemplate.from_pretrained(tmp_path)


def test_validation_errors(tmp_path: Path) -> None:
    tpl = ChatTemplate(QWEN2, **QWEN_TOKENS)
    bad_messages: list[Any] = [
        "hello",
        [],
        ["hello"],
        [{"content": "x"}],
        [{"role": 1, "content": "x"}],
        [{"role": "user"}],
        [{"role": "user", "content": 3}],
        [{"role": "user", "content": "x", "extra": object()}],
    ]
    for messages in bad_messages:
        with pytest.raises(ConfigError):
            tpl.render(messages)
    with pytest.raises(ConfigError):
        tpl.render([{"role": "user", "content": "x"}], add_generation_prompt="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        tpl.render([{"role": "user", "content": "x"}], tools=[object()])
    with pytest.raises(ConfigError):
        ChatTemplate(QWEN2, bos_token=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ChatTemplate(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no chat template"):
        ChatTemplate.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        ChatTemplate.from_pretrained(tmp_path / "missing")
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": ')
    with pytest.raises(DataError, match="tokenizer_config.json"):
        ChatTemplate.from_pretrained(tmp_path)


def test_rich_messages_pass_through() -> None:
    """Fields beyond role/content reach the template (null ones dropped, as transformers does)."""
    snippet = "{% for m in messages %}{{ m | tojson }}\n{% endfor %}"
    messages: Messages = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": None},
        {"role": "assistant", "content": "a", "reasoning_content": "because"},
    ]
    assert ChatTemplate(snippet).render(messages) == _reference(snippet, {}, messages, True)


@pytest.mark.slow
def test_smollm2_checkpoint_equals_transformers(smollm2_hf_dir: Path) -> None:
    """The SmolLM2-135M-Instruct folder as transformers saved it (chat_template.jinja)."""
    hf = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    ours = ChatTemplate.from_pretrained(smollm2_hf_dir)
    assert ours.source == hf.chat_template
    assert ours.special_tokens == hf.special_tokens_map
    for messages in CONVERSATIONS.values():
        for agp in (True, False):
            assert ours.render(messages, add_generation_prompt=agp) == hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=agp
            )
