"""Golden references from transformers for lincal's CPU tests (testdata/golden/README.md).

  python make_golden.py OUT

Writes, for every model layout lincal runs, a tiny random model (config.json as this
transformers saves it, config_v4.json: the same model in transformers 4's keys, and
model.safetensors) and golden.safetensors: f32 logits for fixed token ids. The first Llama
model also gets training.safetensors: an SFT batch's per-token log-probs and masked loss, a
reward model's scores on left-padded rows and PPO response log-probs at temperature 0.7.
Everything runs on the CPU in f32 with eager attention, so the numbers do not depend on the
machine's GPU. Fixed seeds: a rerun writes the same numbers with the same library versions."""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

VOCAB = 96
SEQ = 24
TEMPERATURE = 0.7

LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, rms_norm_eps=1e-5, max_position_embeddings=256,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)
NEOX = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, layer_norm_eps=1e-5, max_position_embeddings=256,
            hidden_act="gelu", bos_token_id=1, eos_token_id=2, pad_token_id=0)

# name -> (architecture, config arguments). Rope bases other than 10,000 show that the base
# is read from wherever the version writes it.
CASES = {
    "llama_gqa_untied": ("llama", dict(
        num_key_value_heads=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0})),
    "llama_llama3_tied": ("llama", dict(
        num_key_value_heads=2, tie_word_embeddings=True,
        # With head_dim 8 the rotary wavelengths are about 6, 63, 628 and 6283 positions:
        # below, between and above the 16 and 64 of these factors, so all three llama3
        # branches (kept, smoothed, divided) are taken.
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64})),
    "llama_linear_mha": ("llama", dict(
        num_key_value_heads=4, tie_word_embeddings=False,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
}
for rotary, rotary_name in [(0.25, "partial"), (1.0, "full")]:
    for parallel, residual_name in [(True, "parallel"), (False, "sequential")]:
        CASES[f"neox_{rotary_name}_{residual_name}"] = ("gpt_neox", dict(
            use_parallel_residual=parallel, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 5000.0,
                             "partial_rotary_factor": rotary}))


def make_model(architecture, arguments, seed):
    torch.manual_seed(seed)
    if architecture == "llama":
        config = transformers.LlamaConfig(**LLAMA, **arguments)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPTNeoXConfig(**NEOX, **arguments)
        model = transformers.GPTNeoXForCausalLM(config)
    config._attn_implementation = "eager"
    # Weights large enough that a wrong layer moves the logits by far more than rounding:
    # transformers' 0.02 initialisation leaves them all near zero.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "layernorm" in name:
                parameter.copy_((1.0 if name.endswith("weight") else 0.0)
                                + 0.1 * torch.randn_like(parameter))
            else:
                parameter.normal_(0.0, 0.3)
    return model.float().eval()


def v4_config(saved):
    """The saved config in transformers 4's keys: the rope settings at the top level."""
    config = dict(saved)
    rope = config.pop("rope_parameters", None) or {}
    config.pop("transformers_version", None)
    if config["model_type"] == "gpt_neox":
        config["rotary_pct"] = rope.get("partial_rotary_factor", config.pop("partial_rotary_factor", 0.25))
        config["rotary_emb_base"] = rope["rope_theta"]
    else:
        config["rope_theta"] = rope["rope_theta"]
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        if scaling.get("rope_type", "default") != "default":
            # transformers 4.3x writes `rope_type`, older versions `type`: one of each.
            if scaling["rope_type"] == "linear":
                scaling["type"] = scaling.pop("rope_type")
            config["rope_scaling"] = scaling
    return config


def token_ids(seed, shape):
    generator = torch.Generator().manual_seed(seed)
    # Ids 3.. : 0-2 are pad, bos and eos.
    return torch.randint(3, VOCAB, shape, generator=generator)


def left_pad(rows):
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return ids, mask


def right_pad(rows, width, value=0):
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


def positions(mask):
    # As generation and lincal number a left-padded row: its first real token is position 0.
    return (mask.cumsum(-1) - 1).clamp(min=0)


def training_goldens(model):
    out = {}
    # SFT: right-padded rows; labels -100 on each prompt and on padding.
    lengths, prompts = [10, 14, 7], [4, 9, 2]
    rows = [token_ids(100 + i, (n,)) for i, n in enumerate(lengths)]
    ids, mask = right_pad(rows, max(lengths))
    labels = ids.clone()
    for i, prompt in enumerate(prompts):
        labels[i, :prompt] = -100
    labels[mask == 0] = -100
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    labelled = labels[:, 1:] != -100
    token_logprobs = logprobs * labelled
    loss_sum = -token_logprobs.sum()
    mean = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(mean * labelled.sum(), loss_sum, rtol=1e-5), (mean, loss_sum)
    out.update(sft_input_ids=ids, sft_labels=labels, sft_lengths=torch.tensor(lengths),
               sft_token_logprobs=token_logprobs, sft_loss_sum=loss_sum.reshape(1))

    # Reward model: Linear(hidden, 1) on the last position of left-padded rows.
    lengths = [9, 5, 12]
    ids, mask = left_pad([token_ids(200 + i, (n,)) for i, n in enumerate(lengths)])
    torch.manual_seed(7)
    weight = torch.randn(1, model.config.hidden_size) * 0.3
    bias = torch.randn(1)
    hidden = model.model(input_ids=ids, attention_mask=mask,
                         position_ids=positions(mask)).last_hidden_state[:, -1]
    scores = (hidden @ weight.T + bias).squeeze(-1)
    out.update(rm_input_ids=ids, rm_lengths=torch.tensor(lengths), rm_head_weight=weight,
               rm_head_bias=bias, rm_scores=scores)

    # PPO: queries left-padded, responses right-padded; log-probs of each response token at
    # temperature 0.7 from the logits of the position before it, 0 on padding.
    query_lengths, response_lengths = [6, 9], [5, 3]
    queries, query_mask = left_pad([token_ids(300 + i, (n,)) for i, n in enumerate(query_lengths)])
    responses, response_mask = right_pad(
        [token_ids(400 + i, (n,)) for i, n in enumerate(response_lengths)], max(response_lengths))
    ids = torch.cat([queries, responses], 1)
    mask = torch.cat([query_mask, response_mask], 1)
    q, w = queries.shape[1], responses.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits.float()
    logprobs = (logits[:, q - 1:q + w - 1] / TEMPERATURE).log_softmax(-1)
    chosen = logprobs.gather(-1, responses[:, :, None]).squeeze(-1) * response_mask
    out.update(ppo_queries=queries, ppo_query_lengths=torch.tensor(query_lengths),
               ppo_responses=responses, ppo_response_lengths=torch.tensor(response_lengths),
               ppo_temperature=torch.tensor([TEMPERATURE]), ppo_logprobs=chosen)
    return {k: v.contiguous() for k, v in out.items()}


def main(root):
    torch.set_grad_enabled(False)
    for seed, (name, (architecture, arguments)) in enumerate(CASES.items()):
        model = make_model(architecture, arguments, seed)
        out = os.path.join(root, name)
        model.save_pretrained(out, safe_serialization=True)
        with open(os.path.join(out, "config.json")) as f:
            saved = json.load(f)
        with open(os.path.join(out, "config_v4.json"), "w") as f:
            json.dump(v4_config(saved), f, indent=2, sort_keys=True)
        for extra in ["generation_config.json"]:
            if os.path.exists(os.path.join(out, extra)):
                os.remove(os.path.join(out, extra))
        ids = token_ids(seed, (2, SEQ))
        logits = model(input_ids=ids).logits.float()
        save_file({"input_ids": ids, "logits": logits.contiguous()},
                  os.path.join(out, "golden.safetensors"))
        if name == "llama_gqa_untied":
            save_file(training_goldens(model), os.path.join(out, "training.safetensors"))
        rotary = model.gpt_neox.rotary_emb if architecture == "gpt_neox" else model.model.rotary_emb
        print(name, json.dumps(saved.get("rope_parameters")), "inv_freq", rotary.inv_freq.tolist(),
              "logits std %.3f" % logits.std().item())
    with open(os.path.join(root, "versions.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__}, f)


if __name__ == "__main__":
    main(sys.argv[1])
