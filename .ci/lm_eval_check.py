"""lm-evaluation-harness's `local-completions` model against `bitnet serve` (CI step).

Usage: OPENAI_API_KEY=KEY lm_eval_check.py SERVER_URL BITNET MODEL.gguf TOKENIZER_DIR

Runs three small tasks from local JSONL files (no download): a multiple-choice
one and a rolling-loglikelihood one (`echo`, `logprobs`, `max_tokens: 1`,
several prompts of token ids per request) and a generation one, twice: with
the harness's remote tokenizer (the server's /tokenizer_info, /tokenize,
/detokenize) and with a Hugging Face `tokenizer.json` of the model's
vocabulary in TOKENIZER_DIR. Both runs must give the same log-likelihoods,
and those must be the log-softmax of `bitnet eval`'s logits for the same
tokens.
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import urllib.request

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

server, bitnet, model_file, tokenizer_dir = sys.argv[1:5]
key = os.environ.get("OPENAI_API_KEY", "")

CAPITALS = [
    ("France", "Paris", ["Paris", "Lyon", "Nice", "Lille"]),
    ("Italy", "Rome", ["Milan", "Rome", "Turin", "Naples"]),
    ("Spain", "Madrid", ["Seville", "Valencia", "Madrid", "Bilbao"]),
    ("Japan", "Tokyo", ["Osaka", "Kyoto", "Nagoya", "Tokyo"]),
    ("Kenya", "Nairobi", ["Nairobi", "Mombasa", "Kisumu", "Eldoret"]),
    ("Peru", "Lima", ["Cusco", "Lima", "Arequipa", "Trujillo"]),
]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ternary weights take one of three values: minus one, zero or one.",
    "Bonjour, ça va? Très bien, merci. 東京は大きい。",
]

work = tempfile.mkdtemp(prefix="bitnet-lm-eval-")


def write_jsonl(name, rows):
    path = os.path.join(work, name)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


caps = write_jsonl(
    "capitals.jsonl",
    [{"country": c, "choices": ch, "answer": ch.index(a)} for c, a, ch in CAPITALS],
)
texts = write_jsonl("texts.jsonl", [{"text": t} for t in TEXTS])
tasks = {
    "bitnet_ci_capitals": f"""
task: bitnet_ci_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {caps}
test_split: test
output_type: multiple_choice
doc_to_text: "The capital of {{{{country}}}} is"
doc_to_choice: "{{{{choices}}}}"
target_delimiter: " "
doc_to_target: answer
metric_list:
  - metric: acc
""",
    "bitnet_ci_rolling": f"""
task: bitnet_ci_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {texts}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: "{{{{text}}}}"
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
""",
    "bitnet_ci_generate": f"""
task: bitnet_ci_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {caps}
test_split: test
output_type: generate_until
doc_to_text: "The capital of {{{{country}}}} is"
doc_to_target: " {{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 6
metric_list:
  - metric: exact_match
""",
}
for name, yaml in tasks.items():
    with open(os.path.join(work, name + ".yaml"), "w") as f:
        f.write(yaml)
manager = TaskManager(include_path=work)


def run(model_args):
    out = simple_evaluate(
        model="local-completions",
        model_args=model_args,
        tasks=list(tasks),
        task_manager=manager,
        log_samples=True,
        batch_size=4,
    )
    return out


common = (
    f"base_url={server}/v1/completions,model=bitnet,num_concurrent=2,max_retries=2,"
    f"max_length=256,auth_token={key}"
)
remote = run(common + ",tokenizer_backend=remote")
hf = run(common + f",tokenizer_backend=huggingface,tokenizer={tokenizer_dir}")
for name in tasks:
    print(name, remote["results"][name])


def first(r):
    while isinstance(r, (list, tuple)):
        r = r[0]
    return float(r)


def loglikelihoods(result, task):
    """Per document, per request: the log-likelihood."""
    return [
        [first(r) for r in s["resps"]]
        for s in sorted(result["samples"][task], key=lambda s: s["doc_id"])
    ]


# The two tokenizers give the same requests, so the same numbers.
for task in ("bitnet_ci_capitals", "bitnet_ci_rolling"):
    a, b = loglikelihoods(remote, task), loglikelihoods(hf, task)
    assert len(a) == len(b) > 0, (task, a, b)
    for x, y in zip(a, b):
        assert len(x) == len(y) > 0, (task, x, y)
        for u, v in zip(x, y):
            assert u < 0 and abs(u - v) < 1e-3, (task, x, y)
gen_a = [s["resps"] for s in remote["samples"]["bitnet_ci_generate"]]
assert all(isinstance(r[0][0], str) for r in gen_a), gen_a


def tokenize(text):
    req = urllib.request.Request(
        server + "/tokenize",
        data=json.dumps({"content": text}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    return json.load(urllib.request.urlopen(req))["tokens"]


def eval_logprob_sum(tokens, ctxlen):
    """Sum of log-softmax(bitnet eval's logits) over tokens[ctxlen:]."""
    out = subprocess.run(
        [bitnet, "eval", "-m", model_file, "--tokens", ",".join(map(str, tokens)), "--top", "1000000", "-t", "2"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    total = 0.0
    for i in range(ctxlen, len(tokens)):
        logits = rows[i - 1]["top"]
        m = max(l for _, l in logits)
        lse = m + math.log(sum(math.exp(l - m) for _, l in logits))
        want = dict(logits)[tokens[i]]
        total += want - lse
    return total


# The multiple-choice log-likelihoods are bitnet eval's: the context and
# each choice tokenized as the harness does (a choice's tokens are those of
# context + choice after the context's).
sample = sorted(remote["samples"]["bitnet_ci_capitals"], key=lambda s: s["doc_id"])[0]
for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
    ctx = tokenize(context)
    whole = tokenize(context + continuation)
    got = first(resp)
    want = eval_logprob_sum(whole, len(ctx))
    assert abs(got - want) < 2e-3, (context, continuation, got, want)
    print(f"{context!r} + {continuation!r}: harness {got:.5f}, bitnet eval {want:.5f}")
print("lm_eval check: passed")
