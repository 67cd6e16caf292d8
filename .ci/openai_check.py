"""The official `openai` Python client against `bitnet serve` (CI step).

Usage: openai_check.py BASE_URL API_KEY
Checks chat and completions, streamed and whole, stop strings, concurrent
requests (each gets what it gets alone), usage, log-probabilities through
the client's typed models (chat top_logprobs; completions logprobs with
echo, several prompts of token ids), and the error statuses a client sees
(400, 401, 404).
"""
import concurrent.futures
import json
import sys
import urllib.request

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

# Log-probabilities, read through the client's typed models.
r = client.chat.completions.create(
    model=name, messages=msgs, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
)
content = r.choices[0].logprobs.content
assert len(content) == r.usage.completion_tokens, r
for e in content:
    assert isinstance(e, openai.types.chat.ChatCompletionTokenLogprob), type(e)
    assert e.logprob <= 0 and len(e.top_logprobs) == 3, e
    assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == e.logprob, e
    assert bytes(e.bytes).decode("utf-8", "replace") == e.token, e
assert "".join(e.token for e in content) == r.choices[0].message.content
streamed = [
    e
    for ch in client.chat.completions.create(
        model=name, messages=msgs, max_tokens=6, temperature=0, logprobs=True,
        top_logprobs=3, stream=True,
    )
    if ch.choices and ch.choices[0].logprobs
    for e in ch.choices[0].logprobs.content
]
assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]
req = urllib.request.Request(
    base.removesuffix("/v1") + "/tokenize",
    data=json.dumps({"content": prompt, "add_special": True}).encode(),
    headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
)
ids = json.load(urllib.request.urlopen(req))["tokens"]
c = client.completions.create(
    model=name, prompt=[ids, ids[:3]], max_tokens=1, temperature=0, logprobs=2, echo=True
)
assert isinstance(c, openai.types.Completion) and len(c.choices) == 2, c
for ch, n in zip(sorted(c.choices, key=lambda ch: ch.index), (len(ids), 3)):
    lp = ch.logprobs
    assert isinstance(lp, openai.types.completion_choice.Logprobs), type(lp)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n + 1, lp
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp
    assert all(v <= 0 for v in lp.token_logprobs[1:]), lp
    assert all(len(t) == 2 and max(t.values()) >= v for t, v in zip(lp.top_logprobs[1:], lp.token_logprobs[1:])), lp
    assert lp.text_offset == sorted(lp.text_offset), lp
print("logprobs: ok")

# Structured output: the client's own parse() with a pydantic model (its
# schema has $defs, $ref, enum, maxItems, additionalProperties false).
from typing import List, Literal  # noqa: E402

import pydantic  # noqa: E402


class Inner(pydantic.BaseModel):
    x: int
    flag: bool


class Thing(pydantic.BaseModel):
    color: Literal["red", "green", "blue"]
    count: int
    inner: Inner
    sizes: List[int] = pydantic.Field(max_length=3)


for seed in range(3):
    r = client.chat.completions.parse(
        model=name, messages=msgs, max_tokens=200, seed=seed, temperature=0.8, response_format=Thing
    )
    assert r.choices[0].finish_reason == "stop", r
    thing = r.choices[0].message.parsed
    assert isinstance(thing, Thing) and len(thing.sizes) <= 3, r
r = client.chat.completions.create(
    model=name, messages=msgs, max_tokens=100, seed=1, response_format={"type": "json_object"}
)
if r.choices[0].finish_reason == "stop":
    assert isinstance(json.loads(r.choices[0].message.content), dict), r
print("structured output: ok,", thing)

# Errors as a client sees them.
def expect(exc, fn):
    try:
        fn()
    except exc as e:
        assert e.body is None or "message" in e.body or "error" in str(e), e
        return
    raise AssertionError(f"expected {exc.__name__}")

expect(openai.BadRequestError, lambda: client.completions.create(model=name, prompt=prompt, max_tokens=0))
expect(openai.BadRequestError, lambda: client.completions.create(model=name, prompt=prompt, logprobs=50))
expect(
    openai.BadRequestError,
    lambda: client.chat.completions.create(
        model=name, messages=msgs, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a"}}}
    ),
)
expect(
    openai.BadRequestError,
    lambda: client.chat.completions.create(model=name, messages=msgs, top_logprobs=2),
)
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
