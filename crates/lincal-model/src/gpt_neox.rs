//! GPT-NeoX (Pythia, RedPajama-INCITE: the reference's 3B answer extractor): LayerNorm,
//! fused QKV projection, partial rotary embeddings, GELU MLP, parallel residual. Parameter
//! names are those of transformers' `GPTNeoXForCausalLM`.

use crate::config::GptNeoXConfig;
use crate::layers::{KvCache, LayerContext, apply_rotary, attend, rotary_inv_freq};
use crate::lora;
use crate::model::Decoder;
use tch::{Kind, Tensor, nn, nn::Module};

struct DecoderLayer {
    input_layernorm: nn::LayerNorm,
    post_attention_layernorm: nn::LayerNorm,
    query_key_value: lora::Linear,
    dense: lora::Linear,
    dense_h_to_4h: lora::Linear,
    dense_4h_to_h: lora::Linear,
}

pub struct GptNeoX {
    config: GptNeoXConfig,
    embed_in: Tensor,
    layers: Vec<DecoderLayer>,
    final_layer_norm: nn::LayerNorm,
    /// `None` when tied to `embed_in`.
    embed_out: Option<Tensor>,
    inv_freq: Tensor,
}

impl GptNeoX {
    pub fn new(vs: &nn::Path, config: &GptNeoXConfig) -> Self {
        let hidden = config.hidden_size;
        let base = vs / "gpt_neox";
        let norm = |p: nn::Path| {
            nn::layer_norm(
                p,
                vec![hidden],
                nn::LayerNormConfig {
                    eps: config.layer_norm_eps,
                    ..Default::default()
                },
            )
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let layer = &base / "layers" / i;
                DecoderLayer {
                    input_layernorm: norm(&layer / "input_layernorm"),
                    post_attention_layernorm: norm(&layer / "post_attention_layernorm"),
                    query_key_value: lora::linear(
                        &layer / "attention" / "query_key_value",
                        hidden,
                        3 * hidden,
                        true,
                    ),
                    dense: lora::linear(&layer / "attention" / "dense", hidden, hidden, true),
                    dense_h_to_4h: lora::linear(
                        &layer / "mlp" / "dense_h_to_4h",
                        hidden,
                        config.intermediate_size,
                        true,
                    ),
                    dense_4h_to_h: lora::linear(
                        &layer / "mlp" / "dense_4h_to_h",
                        config.intermediate_size,
                        hidden,
                        true,
                    ),
                }
            })
            .collect();
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let embed_in = (&base / "embed_in").var("weight", &[config.vocab_size, hidden], init);
        let embed_out = (!config.tie_word_embeddings)
            .then(|| (vs / "embed_out").var("weight", &[config.vocab_size, hidden], init));
        let inv_freq = Tensor::from_slice(&rotary_inv_freq(
            config.rotary_dim(),
            config.rotary_emb_base,
            None,
        ))
        .to_kind(Kind::Float)
        .to_device(vs.device());
        GptNeoX {
            config: config.clone(),
            embed_in,
            layers,
            final_layer_norm: norm(&base / "final_layer_norm"),
            embed_out,
            inv_freq,
        }
    }

    pub fn config(&self) -> &GptNeoXConfig {
        &self.config
    }
}

impl Decoder for GptNeoX {
    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn embed(&self, input_ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_in, input_ids, -1, false, false)
    }

    fn layer_context(&self, positions: &Tensor, mask: Option<&Tensor>, kind: Kind) -> LayerContext {
        LayerContext::new(&self.inv_freq, positions, mask, kind)
    }

    fn layer(
        &self,
        index: usize,
        x: &Tensor,
        context: &LayerContext,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        let layer = &self.layers[index];
        let (b, t) = (x.size()[0], x.size()[1]);
        let (heads, head_dim) = (self.config.num_attention_heads, self.config.head_dim());
        // The fused projection is laid out per head as [q | k | v].
        let qkv = layer
            .query_key_value
            .forward(&layer.input_layernorm.forward(x))
            .view([b, t, heads, 3 * head_dim])
            .transpose(1, 2);
        let q = apply_rotary(
            &qkv.narrow(-1, 0, head_dim),
            &context.cos,
            &context.signed_sin,
        );
        let k = apply_rotary(
            &qkv.narrow(-1, head_dim, head_dim),
            &context.cos,
            &context.signed_sin,
        );
        let v = qkv.narrow(-1, 2 * head_dim, head_dim);
        let attn = attend(&q, &k, &v, context.bias.as_ref(), cache.map(|c| (c, index)));
        let attn = layer
            .dense
            .forward(&attn.transpose(1, 2).reshape([b, t, heads * head_dim]));
        let gelu_kind = if self.config.hidden_act == "gelu" {
            "none"
        } else {
            "tanh"
        };
        let mlp = |h: &Tensor| {
            layer
                .dense_4h_to_h
                .forward(&layer.dense_h_to_4h.forward(h).gelu(gelu_kind))
        };
        if self.config.use_parallel_residual {
            mlp(&layer.post_attention_layernorm.forward(x)) + attn + x
        } else {
            let x = x + attn;
            mlp(&layer.post_attention_layernorm.forward(&x)) + x
        }
    }

    fn final_norm(&self, x: &Tensor) -> Tensor {
        self.final_layer_norm.forward(x)
    }

    fn output_weight(&self) -> &Tensor {
        self.embed_out.as_ref().unwrap_or(&self.embed_in)
    }

    fn new_cache(&self, batch: i64, max_len: i64) -> KvCache {
        let c = &self.config;
        KvCache::new(
            c.num_hidden_layers,
            batch,
            c.num_attention_heads,
            max_len,
            c.head_dim(),
            (self.embed_in.kind(), self.embed_in.device()),
        )
    }
}
