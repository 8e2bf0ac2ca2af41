"""Drive the gateway with the official OpenAI Python SDK, sync and async, streaming and not.

Usage: python3 openai_sdk_check.py BASE_URL   (BASE_URL like http://127.0.0.1:8080/v1)

The backend behind the gateway replays fixed vLLM responses, so the expected texts are known.
Exits non-zero with a message on the first mismatch. Prints one line per check.
"""

import asyncio
import sys

import openai

CHAT_STREAM_TEXT = "The capital of France is Paris."
COMPLETION_STREAM_TEXT = " Paris. It is the capital and the"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def check(name, got, want):
    if got != want:
        print(f"FAIL {name}: got {got!r}, want {want!r}")
        sys.exit(1)
    print(f"ok   {name}")


def sync_checks(base_url):
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)

    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    check("sync chat non-stream: finish_reason", reply.choices[0].finish_reason, "stop")
    check("sync chat non-stream: has usage", reply.usage is not None and reply.usage.completion_tokens > 0, True)

    text = ""
    usage_chunks = 0
    for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        usage_chunks += chunk.usage is not None
    check("sync chat stream: text", text, CHAT_STREAM_TEXT)
    check("sync chat stream: no usage chunk unless asked", usage_chunks, 0)

    usage = None
    for chunk in client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.usage is not None:
            usage = chunk.usage
    check("sync chat stream + include_usage: usage", (usage.prompt_tokens, usage.completion_tokens), (42, 8))

    text = ""
    for chunk in client.completions.create(model=MODEL, prompt="The capital of France is", stream=True):
        if chunk.choices:
            text += chunk.choices[0].text
    check("sync completions stream: text", text, COMPLETION_STREAM_TEXT)

    models = client.models.list()
    check("sync models list: non-empty", len(models.data) > 0, True)


async def async_checks(base_url):
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)

    reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    check("async chat non-stream: finish_reason", reply.choices[0].finish_reason, "stop")

    text = ""
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    check("async chat stream: text", text, CHAT_STREAM_TEXT)

    try:
        await client.chat.completions.create(model="no-such-model", messages=MESSAGES)
        check("async unknown model raises", False, True)
    except openai.NotFoundError as e:
        check("async unknown model: 404 NotFoundError", e.status_code, 404)
    await client.close()


def main():
    base_url = sys.argv[1]
    print(f"openai {openai.__version__} against {base_url}")
    sync_checks(base_url)
    asyncio.run(async_checks(base_url))
    print("all OpenAI SDK checks passed")


if __name__ == "__main__":
    main()
