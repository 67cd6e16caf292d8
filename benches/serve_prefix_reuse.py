"""Time to first token with and without a shared prompt prefix (`bitnet serve`).

Usage: serve_prefix_reuse.py BASE_URL [ROUNDS]

Per round: a chat request with a ~1,000-token system prompt and a ~20-token
question (cold: a system prompt no slot has seen), then the same system
prompt with another question (warm: the prefix is in a slot's cache), both
streamed with max_tokens 1; prints each time to first token and the ratio,
then the medians. Needs only the standard library.
"""
import json
import statistics
import sys
import time
import urllib.request

base = sys.argv[1].rstrip("/")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def ttft(system, question, cache=True):
    body = {
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 1,
        "temperature": 0,
        "stream": True,
        "cache_prompt": cache,
    }
    req = urllib.request.Request(
        base + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        for line in r:
            if line.startswith(b"data: ") and b'"content"' in line:
                return time.perf_counter() - t
    return time.perf_counter() - t


def tokens(text):
    req = urllib.request.Request(
        base + "/tokenize",
        data=json.dumps({"content": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    return len(json.load(urllib.request.urlopen(req))["tokens"])


ratios, cold_t, warm_t = [], [], []
for r in range(rounds):
    system = f"Round {r}. " + " ".join(words[(i * 7 + r) % len(words)] + str(i % 97) for i in range(480))
    q1 = f"In round {r}, which word comes after the third kappa? Answer briefly, please."
    q2 = f"In round {r}, which word comes before the last theta? Answer in one word."
    cold = ttft(system, q1)
    warm = ttft(system, q2)
    cold_t.append(cold)
    warm_t.append(warm)
    ratios.append(warm / cold)
    print(
        f"round {r}: system {tokens(system)} tokens, question {tokens(q2)} tokens: "
        f"cold {cold * 1000:.0f} ms, warm {warm * 1000:.0f} ms, {warm / cold:.3f}"
    )
print(
    f"median: cold {statistics.median(cold_t) * 1000:.0f} ms, warm {statistics.median(warm_t) * 1000:.0f} ms, "
    f"ratio {statistics.median(ratios):.3f}"
)
