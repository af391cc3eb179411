"""Random-weight models of the SmolLM2-135M and Llama-2-7B shapes (Llama) and of the
reference's answer extractor, RedPajama-INCITE-Base-3B (GPT-NeoX), saved as bf16 safetensors
that both transformers and lincal load (the device machine has no model hub).
  make_models.py NAME OUT [TOKENIZER_DIR]
With a tokenizer, it is saved beside the model (with a "[PAD]" token added if it has no pad
token, as `lincal sft` does) and the vocabulary is sized to it: what `lincal bench ppo` needs."""
import shutil, sys, torch, transformers

SHAPES = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
                         max_position_embeddings=8192, tie_word_embeddings=True),
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                      max_position_embeddings=4096, tie_word_embeddings=False),
    "redpajama-3b": dict(vocab_size=50432, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
                         num_attention_heads=32, rotary_pct=1.0, use_parallel_residual=False, layer_norm_eps=1e-5,
                         max_position_embeddings=2048, tie_word_embeddings=False),
}

def make(name, out, tokenizer_dir=None):
    torch.manual_seed(0)
    shape = dict(SHAPES[name])
    if tokenizer_dir:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
            tokenizer.save_pretrained(out)
        else:
            shutil.copytree(tokenizer_dir, out, dirs_exist_ok=True)
        shape["vocab_size"] = len(tokenizer)
    if name == "redpajama-3b":
        config, model_class = transformers.GPTNeoXConfig(**shape, bos_token_id=0, eos_token_id=0,
                                                         torch_dtype="bfloat16"), transformers.GPTNeoXForCausalLM
    else:
        config, model_class = transformers.LlamaConfig(**shape, bos_token_id=1, eos_token_id=2,
                                                       torch_dtype="bfloat16"), transformers.LlamaForCausalLM
    with torch.device("cuda"):
        model = model_class(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    del model
    torch.cuda.empty_cache()

if __name__ == "__main__":
    make(*sys.argv[1:])
