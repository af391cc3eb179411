"""The official OpenAI and Anthropic Python SDKs against a running `lincal serve`.

usage: clients.py BASE_URL MODEL API_KEY EXPECTED_TEXT
EXPECTED_TEXT is `lincal generate`'s greedy answer to the chat "t5 t6" in 12 tokens. Exits
non-zero (an AssertionError) at the first difference; prints a summary line per check.
"""

import pathlib
import sys

import anthropic
import openai

base, model, key, expected = sys.argv[1:5]

# The versions cargo xtask test installs, pinned in requirements.txt beside this file.
pins = dict(
    line.split("==")
    for line in (pathlib.Path(__file__).parent / "requirements.txt").read_text().split()
)
assert openai.__version__ == pins["openai"], openai.__version__
assert anthropic.__version__ == pins["anthropic"], anthropic.__version__

chat = [{"role": "user", "content": "t5 t6"}]
oa = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)

answer = oa.chat.completions.create(
    model=model, messages=chat, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2
)
choice = answer.choices[0]
assert choice.message.content == expected, (choice.message.content, expected)
listed = choice.logprobs.content
assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob == t.logprob for t in listed)
assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
print("openai chat:", repr(choice.message.content), choice.finish_reason, answer.usage.completion_tokens)

chunks = list(
    oa.chat.completions.create(
        model=model,
        messages=chat,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == expected, (streamed, expected)
assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
print("openai chat stream: same text, usage in the last chunk")

seeded = dict(model=model, messages=chat, max_tokens=8, temperature=1.0, seed=11, n=2)
first, again = oa.chat.completions.create(**seeded), oa.chat.completions.create(**seeded)
assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
print("openai seeded n=2: reproducible")

scored = oa.completions.create(model=model, prompt="t3 t8 t13", max_tokens=0, echo=True, logprobs=1)
logprobs = scored.choices[0].logprobs
assert scored.choices[0].text == "t3 t8 t13"
assert logprobs.token_logprobs[0] is None and all(lp < 0 for lp in logprobs.token_logprobs[1:])
print("openai completions echo:", logprobs.token_logprobs)

assert [m.id for m in oa.models.list().data] == [model]
for call, error in [
    (lambda: oa.chat.completions.create(model="other", messages=chat), openai.NotFoundError),
    (lambda: oa.chat.completions.create(model=model, messages=chat, max_tokens=10**6), openai.BadRequestError),
    (
        lambda: openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list(),
        openai.AuthenticationError,
    ),
]:
    try:
        call()
        raise AssertionError(f"expected {error.__name__}")
    except error:
        pass
print("openai errors: 404, 400, 401 as the SDK's exceptions")

an = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
# This SDK version takes no temperature argument; the server takes it in the body.
greedy = {"temperature": 0}
message = an.messages.create(model=model, max_tokens=12, messages=chat, extra_body=greedy)
assert message.content[0].text == expected, (message.content[0].text, expected)
assert message.stop_reason in ("end_turn", "max_tokens")
with an.messages.stream(model=model, max_tokens=12, messages=chat, extra_body=greedy) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
assert streamed == expected, (streamed, expected)
assert final.usage.output_tokens == message.usage.output_tokens
print("anthropic messages and stream:", repr(message.content[0].text), message.stop_reason)

for call, error in [
    (lambda: an.messages.create(model="other", max_tokens=4, messages=chat), anthropic.NotFoundError),
    (lambda: an.messages.create(model=model, max_tokens=5000, messages=chat), anthropic.BadRequestError),
]:
    try:
        call()
        raise AssertionError(f"expected {error.__name__}")
    except error:
        pass
print("anthropic errors: 404, 400 as the SDK's exceptions")
