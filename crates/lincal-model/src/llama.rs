//! The Llama decoder (Llama 2/3, SmolLM2): RMSNorm, rotary attention with grouped-query
//! heads, SwiGLU MLP, optionally tied input/output embeddings. Parameter names are those of
//! transformers' `LlamaForCausalLM`, so HF checkpoints load as they are.

use crate::config::LlamaConfig;
use crate::layers::{KvCache, LayerContext, apply_rotary, attend, rms_norm, rotary_inv_freq};
use crate::lora;
use crate::model::Decoder;
use tch::{Kind, Tensor, nn, nn::Module};

struct Attention {
    q_proj: lora::Linear,
    k_proj: lora::Linear,
    v_proj: lora::Linear,
    o_proj: lora::Linear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

struct Mlp {
    gate_proj: lora::Linear,
    up_proj: lora::Linear,
    down_proj: lora::Linear,
}

struct DecoderLayer {
    input_layernorm: Tensor,
    self_attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
}

pub struct Llama {
    config: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    /// `None` when the output projection is tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    inv_freq: Tensor,
}

/// Projections are LoRA-capable linear layers (plain ones unless built inside `lora::with_lora`).
fn linear(vs: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> lora::Linear {
    lora::linear(vs, in_dim, out_dim, bias)
}

impl Llama {
    pub fn new(vs: &nn::Path, config: &LlamaConfig) -> Self {
        let (hidden, heads, kv_heads, head_dim) = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_kv_heads(),
            config.head_dim(),
        );
        let model = vs / "model";
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let layer = &model / "layers" / i;
                let attn = &layer / "self_attn";
                let mlp = &layer / "mlp";
                DecoderLayer {
                    input_layernorm: (&layer / "input_layernorm").ones("weight", &[hidden]),
                    self_attn: Attention {
                        q_proj: linear(
                            &attn / "q_proj",
                            hidden,
                            heads * head_dim,
                            config.attention_bias,
                        ),
                        k_proj: linear(
                            &attn / "k_proj",
                            hidden,
                            kv_heads * head_dim,
                            config.attention_bias,
                        ),
                        v_proj: linear(
                            &attn / "v_proj",
                            hidden,
                            kv_heads * head_dim,
                            config.attention_bias,
                        ),
                        o_proj: linear(
                            &attn / "o_proj",
                            heads * head_dim,
                            hidden,
                            config.attention_bias,
                        ),
                        num_heads: heads,
                        num_kv_heads: kv_heads,
                        head_dim,
                    },
                    post_attention_layernorm: (&layer / "post_attention_layernorm")
                        .ones("weight", &[hidden]),
                    mlp: Mlp {
                        gate_proj: linear(
                            &mlp / "gate_proj",
                            hidden,
                            config.intermediate_size,
                            config.mlp_bias,
                        ),
                        up_proj: linear(
                            &mlp / "up_proj",
                            hidden,
                            config.intermediate_size,
                            config.mlp_bias,
                        ),
                        down_proj: linear(
                            &mlp / "down_proj",
                            config.intermediate_size,
                            hidden,
                            config.mlp_bias,
                        ),
                    },
                }
            })
            .collect();
        let embed_tokens = (&model / "embed_tokens").var(
            "weight",
            &[config.vocab_size, hidden],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        let lm_head = (!config.tie_word_embeddings).then(|| {
            (vs / "lm_head").var(
                "weight",
                &[config.vocab_size, hidden],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )
        });
        let inv_freq = Tensor::from_slice(&rotary_inv_freq(
            head_dim,
            config.rope_theta,
            config.rope_scaling.as_ref(),
        ))
        .to_kind(Kind::Float)
        .to_device(vs.device());
        Llama {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: (&model / "norm").ones("weight", &[hidden]),
            lm_head,
            inv_freq,
        }
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }
}

impl Decoder for Llama {
    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn embed(&self, input_ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false)
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
        let h = rms_norm(x, &layer.input_layernorm, self.config.rms_norm_eps);
        let h = layer.self_attn.forward(
            &h,
            &context.cos,
            &context.signed_sin,
            context.bias.as_ref(),
            cache.map(|c| (c, index)),
        );
        let x = x + h;
        let h = rms_norm(
            &x,
            &layer.post_attention_layernorm,
            self.config.rms_norm_eps,
        );
        x + layer.mlp.forward(&h)
    }

    fn final_norm(&self, x: &Tensor) -> Tensor {
        rms_norm(x, &self.norm, self.config.rms_norm_eps)
    }

    fn store_projections_joined(&self) {
        for layer in &self.layers {
            let (attn, mlp) = (&layer.self_attn, &layer.mlp);
            lora::store_joined(&[&attn.q_proj, &attn.k_proj, &attn.v_proj]);
            lora::store_joined(&[&mlp.gate_proj, &mlp.up_proj]);
        }
    }

    fn output_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    fn new_cache(&self, batch: i64, max_len: i64) -> KvCache {
        let c = &self.config;
        KvCache::new(
            c.num_hidden_layers,
            batch,
            c.num_kv_heads(),
            max_len,
            c.head_dim(),
            (self.embed_tokens.kind(), self.embed_tokens.device()),
        )
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        signed_sin: &Tensor,
        bias: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        // Rotary embeddings on the projections' own [B, T, heads, D] layout, before the heads
        // move ahead of the positions for attention: `roll` then reads contiguous rows instead
        // of copying strided ones first, and attention returns its gradients in that layout.
        let (cos, signed_sin) = (cos.transpose(1, 2), signed_sin.transpose(1, 2));
        let [q, k, v]: [Tensor; 3] =
            lora::forward_joined(&[&self.q_proj, &self.k_proj, &self.v_proj], x)
                .try_into()
                .expect("three projections give three outputs");
        let split = |proj: Tensor, count: i64| proj.view([b, t, count, self.head_dim]);
        let q = apply_rotary(&split(q, self.num_heads), &cos, &signed_sin);
        let k = apply_rotary(&split(k, self.num_kv_heads), &cos, &signed_sin);
        let v = split(v, self.num_kv_heads);
        let out = attend(
            &q.transpose(1, 2),
            &k.transpose(1, 2),
            &v.transpose(1, 2),
            bias,
            cache,
        );
        self.o_proj.forward(
            &out.transpose(1, 2)
                .reshape([b, t, self.num_heads * self.head_dim]),
        )
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        let [gate, up]: [Tensor; 2] = lora::forward_joined(&[&self.gate_proj, &self.up_proj], x)
            .try_into()
            .expect("two projections give two outputs");
        self.down_proj.forward(&(gate.silu() * up))
    }
}
