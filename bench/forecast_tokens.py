# Tokens the ForecastProbs reward model reads in one PPO step of 512 rollouts: each text alone
# against texts of one paragraph sharing rows (the rule of lincal_train::data::
# pack_shared_prefixes, restated here). CPU only; needs Python `tokenizers`.
# usage: python3 bench/forecast_tokens.py TOKENIZER.json crates/lincal-data/prompts/forecast_probs_model.j2
import random
import sys

from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file(sys.argv[1])
template = open(sys.argv[2]).read().split("-#}", 1)[1].strip()
PARAGRAPH_CHAR_LIMIT = 2000


def render(question, paragraph, candidate):
    return (template.replace("{{ question }}", question)
            .replace("{{ paragraph }}", paragraph[:PARAGRAPH_CHAR_LIMIT])
            .replace("{{ candidate }}", candidate))


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def shared_tokens(rows, max_len=1024):
    """Tokens of the rows pack_shared_prefixes makes of `rows`."""
    total, members, prefix, whole, longest = 0, [], 0, 0, 0
    for i in sorted(range(len(rows)), key=lambda i: (rows[i], i)):
        length = len(rows[i])
        if members:
            n = len(members)
            shared = min(prefix, common_prefix(rows[members[0]], rows[i]))
            apart = prefix + (whole - n * prefix) + length
            joined = shared + (whole + length - (n + 1) * shared)
            joined_longest = max(longest, length)
            if 2 * shared >= joined_longest and joined < apart and joined <= min(max_len, 2 * joined_longest):
                members.append(i)
                prefix, whole, longest = shared, whole + length, joined_longest
                continue
            total += prefix + (whole - n * prefix)
        members, prefix, whole, longest = [i], length, length, length
    return total + prefix + (whole - len(members) * prefix)


random.seed(0)
vocab = tokenizer.get_vocab_size()
words = "the a of in was born city river king war year first named after which during team won".split()
for case in ("random weights: 300-token paragraphs, the ground truth and the extraction's ';' pieces",
             "trained-like: 120-word paragraphs, three short candidates"):
    texts = []
    for r in range(512):
        question = f"Question: which city hosted the first modern games in {1800 + r}?"
        if case.startswith("random"):
            paragraph = tokenizer.decode([random.randrange(vocab) for _ in range(300)])
            extraction = tokenizer.decode([random.randrange(vocab) for _ in range(300)])
            candidates = ["Athens"] + [piece.strip() for piece in extraction.split(";")]
        else:
            paragraph = " ".join(random.choice(words) for _ in range(120))
            candidates = ["Athens", "Paris", "Rome"]
        texts += [render(question, paragraph, c) for c in dict.fromkeys(candidates)]
    rows = [e.ids for e in tokenizer.encode_batch(texts)]
    alone, shared = sum(map(len, rows)), shared_tokens(rows)
    print(f"{case}: {len(texts)} texts, {alone} tokens alone, {shared} in shared rows ({shared / alone:.2f})")
