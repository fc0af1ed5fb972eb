"""Adapters that let agent frameworks keep their history in memsvc, each an optional extra of its own:

- `memsvc.integrations.agents`: the OpenAI Agents SDK's `Session` protocol (`pip install 'memsvc[agents]'`);
- `memsvc.integrations.llama_index`: LlamaIndex's `BaseChatStore` (`pip install 'memsvc[llama-index]'`).

Both write through `memsvc.client`, so their writes carry Idempotency-Keys and are retried as the client's are,
and both store native memsvc messages (roles, tool calls, tool results) that every other route reads.
"""
