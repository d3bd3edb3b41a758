"""Chat templates of the common decoder families, written here from each family's documented prompt format.

One Jinja string per family, stored where transformers reads it (`tokenizer_config.json` `chat_template`), so
`tokenizer.apply_chat_template` renders exactly what a checkpoint of that family would: system message,
multi-turn, `add_generation_prompt`, and the tools section where the family has one (Llama-3.1, Qwen2.5, Qwen3,
Mistral v3). Simplifications against the originals are named in each entry.
"""

from __future__ import annotations

# Llama-3 / 3.1 Instruct: header blocks, `<|eot_id|>` ends a turn, content trimmed; tools as JSON in the system
# block ("Environment: ipython"), tool results as `ipython` turns. (3.1's date lines and built-in tools left out.)
LLAMA3 = (
    "{{- bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{%- if tools or system_message %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{%- if tools %}"
    "{{- 'Environment: ipython\\n\\nYou have access to the following functions. To call a function, respond with '"
    "'JSON for a function call of the form {\"name\": function name, \"parameters\": dictionary of argument name '"
    "'and its value}.\\n\\n' }}"
    "{%- for t in tools %}{{- t | tojson(indent=4) }}{{- '\\n\\n' }}{%- endfor %}"
    "{%- endif %}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] in ('tool', 'ipython') %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is mapping or message['content'] is iterable and message['content'] is not string %}"
    "{{- message['content'] | tojson }}{%- else %}{{- message['content'] }}{%- endif %}{{- '<|eot_id|>' }}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- for tc in message['tool_calls'] %}{%- set f = tc['function'] if tc.get('function') else tc %}"
    "{{- '{\"name\": \"' + f['name'] + '\", \"parameters\": ' }}{{- f['arguments'] | tojson }}{{- '}' }}"
    "{%- endfor %}{{- '<|eom_id|>' }}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Qwen2 / Qwen2.5 (ChatML): `<|im_start|>role\n...<|im_end|>\n`, a default system message, tools in the system
# message inside <tools></tools>, calls in <tool_call></tool_call>, results as user turns in <tool_response>.
_QWEN_TOOLS = (
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided '"
    "'with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for t in tools %}{{- '\\n' }}{{- t | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '"
    "'<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": '"
    "'<args-json-object>}\\n</tool_call>' }}"
)
_QWEN_TURNS = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first %}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{{- '<|im_start|>assistant' }}{%- if message['content'] %}{{- '\\n' + message['content'] }}{%- endif %}"
    "{%- for tc in message['tool_calls'] %}{%- set f = tc['function'] if tc.get('function') else tc %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + f['name'] + '\", \"arguments\": ' }}{{- f['arguments'] | tojson }}"
    "{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + CONTENT + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
)
QWEN2 = (
    "{%- if messages and messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- else %}{%- set system_message = 'You are a helpful assistant.' %}{%- endif %}"
    "{{- '<|im_start|>system\\n' + system_message }}"
    "{%- if tools %}" + _QWEN_TOOLS + "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    + _QWEN_TURNS.replace("CONTENT", "message['content']")
    + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen3: no default system message; earlier assistant turns drop their <think>...</think> reasoning; the
# generation prompt opens an empty think block when `enable_thinking=False`. (The original keeps the reasoning of
# turns after the last user query; here all are dropped.)
QWEN3 = (
    "{%- if tools or messages and messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- endif %}"
    "{%- if tools %}" + _QWEN_TOOLS + "{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    + _QWEN_TURNS.replace(
        "CONTENT",
        "(message['content'].split('</think>')[-1].lstrip('\\n') if message['role'] == 'assistant' "
        "else message['content'])",
    )
    + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# Mistral Instruct v0.3 (tekken-less v3 format): `<s>[INST] user[/INST] assistant</s>`; the system message is
# prepended to the last user message; tools as `[AVAILABLE_TOOLS] [...][/AVAILABLE_TOOLS]` before it. There is no
# generation prompt: the prompt ends with `[/INST]` either way.
MISTRAL = (
    "{%- if messages and messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in loop_messages %}{%- if m['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if tools and loop.index0 == ns.last_user %}"
    "{{- '[AVAILABLE_TOOLS] ' }}{{- tools | tojson }}{{- '[/AVAILABLE_TOOLS]' }}{%- endif %}"
    "{%- if loop.index0 == ns.last_user and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{{- '[TOOL_CALLS] [' }}"
    "{%- for tc in message['tool_calls'] %}{%- set f = tc['function'] if tc.get('function') else tc %}"
    "{{- '{\"name\": \"' + f['name'] + '\", \"arguments\": ' }}{{- f['arguments'] | tojson }}{{- '}' }}"
    "{%- if not loop.last %}{{- ', ' }}{%- endif %}{%- endfor %}{{- ']' + eos_token }}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '[TOOL_RESULTS] {\"content\": ' }}{{- message['content'] | tojson }}{{- '}[/TOOL_RESULTS]' }}"
    "{%- else %}{{- raise_exception('Only user, assistant and tool roles are supported after the system message') }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# Gemma 2 / 3 instruction-tuned: `<start_of_turn>user\n...<end_of_turn>\n`, the assistant role is `model`, the
# system message is prepended to the first user turn (Gemma 3's template does this; Gemma 2's original raises on
# a system role instead — folded in the same way here so one gateway request shape works for both).
GEMMA = (
    "{{- bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set first_prefix = messages[0]['content'] + '\\n\\n' %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set first_prefix = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + (first_prefix if loop.first else '') + message['content'] | trim }}"
    "{{- '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)

# Phi-3 mini instruct: `<|role|>\n...<|end|>\n`, generation prompt `<|assistant|>\n`, else the text ends with eos.
PHI3 = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- else %}{{- eos_token }}{%- endif %}"
)

TEMPLATES = {"llama3": LLAMA3, "qwen2": QWEN2, "qwen3": QWEN3, "mistral": MISTRAL, "gemma2": GEMMA, "gemma3": GEMMA,
             "phi3": PHI3}
