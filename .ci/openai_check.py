"""The official `openai` Python client against `bitnet serve` (CI step).

Usage: openai_check.py BASE_URL API_KEY
Checks chat and completions, streamed and whole, stop strings, concurrent
requests (each gets what it gets alone), usage, and the error statuses a
client sees (400, 401, 404).
"""
import concurrent.futures
import sys

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)

models = client.models.list()
name = models.data[0].id
print("model:", name)

# Chat, whole and streamed: the same greedy text.
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
r = client.chat.completions.create(model=name, messages=msgs, max_tokens=8, temperature=0)
whole = r.choices[0].message.content
assert r.choices[0].finish_reason in ("stop", "length"), r
assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens <= 8, r.usage
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
parts = []
finish = None
for chunk in client.chat.completions.create(
    model=name, messages=msgs, max_tokens=8, temperature=0, stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
assert "".join(parts) == whole, (parts, whole)
assert finish == r.choices[0].finish_reason
print("chat: ok,", repr(whole))

# Completions, whole and streamed.
prompt = "The capital of France is"
c = client.completions.create(model=name, prompt=prompt, max_tokens=12, temperature=0)
text = c.choices[0].text
assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 12, c
streamed = "".join(
    ch.choices[0].text
    for ch in client.completions.create(
        model=name, prompt=prompt, max_tokens=12, temperature=0, stream=True
    )
    if ch.choices
)
assert streamed == text, (streamed, text)
print("completions: ok,", repr(text))

# A stop string cuts the text before it.
stop = text[len(text) // 2 :][:2]
if stop.strip():
    s = client.completions.create(
        model=name, prompt=prompt, max_tokens=12, temperature=0, stop=[stop]
    )
    assert s.choices[0].text == text[: text.find(stop)], (s.choices[0].text, stop)
    assert s.choices[0].finish_reason == "stop"
    print("stop strings: ok")

# Concurrent requests: each gets what it gets alone.
prompts = ["Once upon a time", "1, 2, 3,", "Hello", prompt, "The weather today"]
alone = [
    client.completions.create(model=name, prompt=p, max_tokens=10, temperature=0).choices[0].text
    for p in prompts
]
with concurrent.futures.ThreadPoolExecutor(len(prompts)) as ex:
    together = list(
        ex.map(
            lambda p: client.completions.create(
                model=name, prompt=p, max_tokens=10, temperature=0
            ).choices[0].text,
            prompts,
        )
    )
assert together == alone, (together, alone)
print("concurrent requests: ok")

# Errors as a client sees them.
def expect(exc, fn):
    try:
        fn()
    except exc as e:
        assert e.body is None or "message" in e.body or "error" in str(e), e
        return
    raise AssertionError(f"expected {exc.__name__}")

expect(openai.BadRequestError, lambda: client.completions.create(model=name, prompt=prompt, max_tokens=0))
expect(openai.BadRequestError, lambda: client.completions.create(model=name, prompt=prompt, temperature=9))
expect(
    openai.BadRequestError,
    lambda: client.completions.create(model=name, prompt="word " * 5000, max_tokens=4),
)
bad = openai.OpenAI(base_url=base, api_key="wrong-" + key, max_retries=0)
expect(openai.AuthenticationError, lambda: bad.models.list())
expect(openai.NotFoundError, lambda: client.post("/nothing", cast_to=object, body={}))
print("errors: ok")
print("openai client check: passed")
